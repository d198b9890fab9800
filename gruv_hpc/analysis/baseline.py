"""The floor every run must beat: the dev loss of always predicting the train mean.

Features are normalized by the train split's mean and std, so the train mean is 0 in the model's
units and its loss is the mean square of the normalized dev targets. It is computed the way
training's evaluate() computes a dev loss (the mean over dev clips of each clip's MSE), with the
statistics of the run's own artists, so a run's dev loss and its artists' floor compare directly.
About 1.0 when dev resembles train; a run at or above it has learned nothing that carries to dev.
"""
from __future__ import annotations

import numpy as np

from gruv_hpc.analysis.common import RunInfo
from gruv_hpc.dataset.manifest import STD_FLOOR


# When fewer than this share of the stored values carry half of the floor, the report names them.
FEW = 0.01


def dominant_values(per_value: np.ndarray, transform, sample_rate: int, top: int = 10) -> dict | None:
    """The smallest set of stored values that holds half of the floor's loss, when it is a few
    (at most FEW of them): {"n", "of", "share", "values": [{"part", "hz", "share"}] (the ``top``
    largest)}; None when the loss is spread out. ``transform``: the dataset's, which says what
    each stored value is (``Transform.stored_value_name``: Re or Im of a bin, its log-magnitude...)."""
    total = float(per_value.sum())
    if total <= 0:
        return None
    order = np.argsort(per_value)[::-1]
    n = int(np.searchsorted(np.cumsum(per_value[order]) / total, 0.5)) + 1
    if n > max(1, FEW * len(per_value)):
        return None
    vals = []
    for j in order[:min(n, top)]:
        part, hz = transform.stored_value_name(int(j), sample_rate)
        vals.append({"part": part, "hz": hz, "share": float(per_value[j] / total)})
    return {"n": n, "of": len(per_value), "share": float(per_value[order[:n]].sum() / total), "values": vals}


def mean_prediction_loss(data, artists: list[str] | None, split: str = "dev", std_floor: float = STD_FLOOR,
                         detail: dict | None = None) -> tuple[float | None, int]:
    """(loss of predicting the train mean on ``split``, clips): (None, 0) when it has no clips.
    ``std_floor``: the runs' normalization (TrainConfig.std_floor). ``detail``, when given, gets
    "dominant": the few stored values (frequency bins) that carry half of it, if a few do."""
    import torch

    from gruv_hpc.dataset.clips import ClipDataset
    ds = ClipDataset(data, split, artists or None, std_floor=std_floor)  # data: a path, or an open handle
    total = torch.zeros((), dtype=torch.float64)
    per_feature = np.zeros(ds.mean.shape)
    for i in range(len(ds)):
        _, y = ds[i]
        total += y.double().square().mean()
        per_feature += y.double().square().mean(0).numpy()
    if detail is not None and len(ds):
        per_value = np.bincount(ds.expand_index, weights=per_feature * (ds.sign != 0), minlength=ds.params["storage_dim"])
        detail["dominant"] = dominant_values(per_value, ds.transform, ds.params["sample_rate"])
    return (float(total) / len(ds), len(ds)) if len(ds) else (None, 0)


def baselines(runs: list[RunInfo], datasets=None) -> dict:
    """{artist label: {"dev_loss", "dev_clips", "dominant"} or {"error"}}, from the first run of
    each artist (the runs of one artist share its data and statistics; their normalization is
    the first run's std_floor). A dataset that cannot be read gives its error, not an exception:
    the rest of the report is still drawn. ``datasets``: the analysis' open datasets
    (``common.Datasets``)."""
    from gruv_hpc.errors import GruvError
    from gruv_hpc.training.config import run_config
    out: dict = {}
    for r in runs:
        if r.artist in out:
            continue
        try:
            detail: dict = {}
            floor = float(run_config(r.config)["std_floor"])
            data = datasets(r.config["data"], r.config.get("artists"), floor) if datasets else r.config["data"]
            loss, n = mean_prediction_loss(data, r.config.get("artists"), std_floor=floor, detail=detail)
            out[r.artist] = {"dev_loss": loss, "dev_clips": n, "std_floor": floor, "dominant": detail.get("dominant")}
        except (GruvError, OSError) as e:
            out[r.artist] = {"error": str(e)}
    return out
