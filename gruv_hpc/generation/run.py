"""A trained run as generation sees it: its model, config and dataset, loaded once."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gruv_hpc.config import build
from gruv_hpc.dataset.clips import DatasetHandle
from gruv_hpc.dataset.transforms import Transform
from gruv_hpc.errors import GenerationError
from gruv_hpc.training.checkpoint import RunPaths, load_best, load_checkpoint, load_latest, upgrade
from gruv_hpc.training.config import TrainConfig, run_config
from gruv_hpc.training.model import GRUVModel


@dataclass
class LoadedRun:
    model: GRUVModel
    cfg: TrainConfig
    ckpt_path: Path
    epoch: int
    data: DatasetHandle  # the run's dataset, opened once: its statistics, transform and splits
    cache: dict = field(default_factory=dict, repr=False)  # what diagnostics reuse across clips (nearest_train's pool)

    @property
    def mean(self) -> np.ndarray:
        return self.data.mean

    @property
    def std(self) -> np.ndarray:
        return self.data.std

    @property
    def transform(self) -> Transform:
        return self.data.transform


def load_run(run_dir, checkpoint: str = "best", device="cpu", datasets=None, meta: dict | None = None) -> LoadedRun:
    """A run's model and statistics. ``checkpoint``: best (best.pt, or the newest readable one
    with a warning when it is missing or unreadable), last (the newest readable), or a PATH.
    ``datasets``: a callable (path, artists, std_floor) -> DatasetHandle that shares open datasets
    between runs (the analysis' cache); ``meta``: config.json's content, when already read."""
    paths = RunPaths(run_dir)
    if not paths.config.exists():
        raise GenerationError(f"{run_dir}: not a run directory (no config.json)")
    device = check_device(device)
    if checkpoint == "last":
        state, path = load_latest(paths, map_location=device)
    elif checkpoint == "best":
        state, path = load_best(paths, map_location=device)
    else:
        path = Path(checkpoint)
        if not path.is_file():
            raise GenerationError(f"checkpoint {path} does not exist")
        try:
            state = load_checkpoint(path, device)
        except Exception as e:
            raise GenerationError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from None
    if state is None:
        raise GenerationError(f"{run_dir}: no readable checkpoint to generate from (has training saved one yet?)")
    # The dataset's newest known place: config.json follows a moved dataset, the checkpoint does not.
    meta = meta if meta is not None else json.loads(paths.config.read_text())
    data = meta.get("config", {}).get("data") or state["config"]["data"]
    cfg = build(TrainConfig, {**run_config(state["config"]), "data": data})
    model = GRUVModel.from_config(cfg).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return LoadedRun(model, cfg, path, _epoch(state), open_dataset(cfg, datasets))


def check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise GenerationError(f"--device {device!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GenerationError(f"--device {device}: no GPU is visible")
    return dev


def _epoch(state: dict) -> int:
    return upgrade(state)["train"]["epoch"]


def open_dataset(cfg: TrainConfig, datasets=None) -> DatasetHandle:
    """The run's dataset, with the normalization statistics the run trained with (float64 mean
    and std): those of the train split of the run's artists (all when it names none); from
    ``datasets`` (path, artists, std_floor) -> handle when given."""
    data = (datasets or DatasetHandle)(cfg.data, cfg.artists, std_floor=cfg.std_floor)
    if data.params["feature_dim"] != cfg.feature_dim:
        raise GenerationError(f"dataset {cfg.data} has feature_dim {data.params['feature_dim']}, "
                              f"the run was trained with {cfg.feature_dim}")
    return data
