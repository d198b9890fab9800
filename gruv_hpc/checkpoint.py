"""Checkpoints: atomic saves, rotation, loading the newest readable one.

A checkpoint counts once ``os.replace`` has put it in place: it is written to a temp file in the
same directory and fsynced first, so a kill at any moment leaves the previous one intact.
"""
from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path

import torch

from .paths import RunPaths, read_jsonl  # noqa: F401  (re-exported)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_checkpoint(paths: RunPaths, state: dict, step: int, keep_last: int, is_best: bool) -> Path:
    """Write step_<step>.pt atomically, point best.pt at it if it is the best, drop old ones."""
    path = paths.step_ckpt(step)
    atomic_torch_save(state, path)
    if is_best:
        # A hard link: no second copy of a multi-GB file, and rotation cannot delete the best.
        tmp = paths.best.with_name(f".best.pt.tmp{os.getpid()}")
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)
        except OSError:  # filesystems without hard links
            atomic_torch_save(state, tmp)
        os.replace(tmp, paths.best)
    for old in paths.step_ckpts()[keep_last:]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    # weights_only: a checkpoint is data; unpickling it must not be able to run code.
    return torch.load(path, map_location=map_location, weights_only=True)


def load_latest(paths: RunPaths, map_location="cpu") -> tuple[dict | None, Path | None]:
    """The newest checkpoint that loads; a corrupt one is reported and skipped."""
    for p in paths.step_ckpts():
        try:
            state = load_checkpoint(p, map_location)
            if not isinstance(state, dict) or "model" not in state:
                raise ValueError("not a gruv checkpoint")
            return state, p
        except Exception as e:  # truncated zip, bad pickle, ...: fall back to the previous one
            warnings.warn(f"checkpoint {p} is unreadable ({type(e).__name__}: {e}); trying the previous one", stacklevel=2)
    return None, None


def clean_temp(paths: RunPaths) -> None:
    """Remove temp files left by a save that was killed."""
    if paths.ckpt_dir.is_dir():
        for p in paths.ckpt_dir.glob(".*.tmp*"):
            p.unlink(missing_ok=True)


def git_info() -> dict:
    """The SHA and dirty flag of the source tree this package runs from (None outside git)."""
    src = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return {"sha": None, "dirty": None}
        st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                            capture_output=True, text=True, timeout=10)
        return {"sha": sha.stdout.strip(), "dirty": bool(st.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"sha": None, "dirty": None}
