"""The run directory's bookkeeping, outside the training loop: whether a directory may hold this
run (``check_run_dir``, ``check_orphan_checkpoints``), config.json's record of each start
(``record_start``), error.txt even on a full disk (``reserve_error_space``, ``record_error``) and
the one-writer lock (``lock_run_dir``). The layout itself is ``gruv_hpc.paths.RunPaths``."""
from __future__ import annotations

import os
import time
import warnings

import torch

from gruv_hpc import jobenv
from gruv_hpc.config import ConfigError, diff, to_dict
from gruv_hpc.dataset.manifest import DatasetError
from gruv_hpc.fsio import atomic_write_json
from gruv_hpc.lock import Lock, LockedError
from gruv_hpc.paths import RunPaths, read_run_config
from gruv_hpc.training.config import RUNTIME_KEYS, TrainConfig, with_defaults
from gruv_hpc.training.distributed import Dist


def check_run_dir(paths: RunPaths, cfg: TrainConfig, dataset: dict) -> dict | None:
    """A run directory belongs to one config and one dataset; never silently mix two runs.
    Returns what config.json holds (None for a new run)."""
    if not paths.config.exists():
        return None
    old = read_run_config(paths.config)
    d = diff(with_defaults(old["config"]), to_dict(cfg), ignore=RUNTIME_KEYS)
    if d:
        raise ConfigError(f"{paths.root} holds a run with another config ({'; '.join(d)}); "
                          "use a new run directory")
    was = old.get("dataset") or {}
    if was.get("id") and was["id"] != dataset["id"]:
        raise DatasetError(f"{paths.root} was trained on dataset {was['id']} ({was.get('path')}), but {cfg.data} "
                           f"is dataset {dataset['id']} (other songs, split or storage); resuming on it would mix "
                           "two datasets in one run. Use a new run directory, or the dataset it was trained on")
    return old


def record_start(paths: RunPaths, cfg: TrainConfig, dataset: dict, old: dict | None, d: Dist, git: dict) -> None:
    """config.json: the resolved config, the dataset's identity and where the code came from, plus
    one line per start (a requeue, a resume with more epochs or a moved dataset)."""
    start = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "git": git, "world_size": d.world,
             "device": d.device.type, "torch": torch.__version__, "host": os.uname().nodename,
             "slurm_job_id": jobenv.job_id()}
    rec = {"config": to_dict(cfg), "dataset": dataset, "git": (old or start)["git"], "world_size": d.world,
           "device": d.device.type, "torch": torch.__version__, "starts": [*(old or {}).get("starts", []), start]}
    atomic_write_json(paths.config, rec)


def record_error(paths: RunPaths, text: str) -> None:
    """error.txt, even on a full disk: the text goes into blocks reserved while there was space,
    which are then renamed into place (see reserve_error_space)."""
    data = text.encode()[-60_000:]
    try:
        fd = os.open(paths.error_reserve, os.O_WRONLY)
    except OSError:
        fd = None
    try:
        if fd is not None:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
            os.fsync(fd)
            os.close(fd)
            fd = None
            os.replace(paths.error_reserve, paths.error)
        else:
            paths.error.write_bytes(data)
    except OSError:
        pass  # nothing more can be done; the exception itself still reaches the caller
    finally:
        if fd is not None:
            os.close(fd)


def reserve_error_space(paths: RunPaths, size: int = 64 * 1024) -> None:
    if paths.error_reserve.exists():
        return
    try:
        fd = os.open(paths.error_reserve, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
    except OSError:
        paths.error_reserve.unlink(missing_ok=True)


def lock_run_dir(paths: RunPaths, d: Dist) -> Lock | None:
    """Rank 0 takes the run directory's lock; if it is held (an old copy of a requeued job is
    still running, or someone started the run twice) every rank stops before writing anything."""
    lock, err = (Lock(paths.lock, f"run directory {paths.root}"), None) if d.is_main else (None, None)
    if lock:
        try:
            lock.acquire()
        except LockedError as e:
            err = e
    if d.any(err is not None)[0]:
        raise err or LockedError(f"run directory {paths.root} is in use (rank 0 could not lock it)")
    return lock


def check_orphan_checkpoints(paths: RunPaths, cfg: TrainConfig) -> None:
    """A run directory with checkpoints but no config.json (deleted): the newest checkpoint's own
    config must be this one, or resuming would fail on the weights' shapes (and config.json,
    rewritten first, would then refuse the right command)."""
    from gruv_hpc.training.checkpoint import load_latest
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unreadable one is reported by the resume itself
        sd, path = load_latest(paths)
    if sd and isinstance(sd.get("config"), dict):
        d = diff(with_defaults(sd["config"]), to_dict(cfg), ignore=RUNTIME_KEYS)
        if d:
            raise ConfigError(f"{paths.root} has no config.json, and its checkpoint {path.name} was trained with "
                              f"another config ({'; '.join(d)}); pass those values, or use a new run directory")
