"""Putting a built dataset in place (``gruv_hpc.swap``: two renames, the user's files carried over),
and undoing what a crash left between them."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from gruv_hpc import swap
from gruv_hpc.dataset.build.staging import PLAN, SUBMISSION, TASK_DIR
from gruv_hpc.dataset.manifest import MANIFEST, SHARD_DIR, STATS
from gruv_hpc.paths import BuildPaths

OWN = (MANIFEST, STATS, SHARD_DIR)  # a dataset's own entries; anything else in its folder is the user's


def foreign(d: Path) -> list:
    """The entries of a dataset folder gruv did not write (a split file, notes): carried over."""
    return sorted(p.name for p in d.iterdir() if p.name not in OWN) if d.is_dir() else []


def swap_in(staging: Path, out: Path) -> None:
    swap.swap_in(staging, out, foreign)


def recover(out: Path) -> None:
    """Undo what a crashed run left beside ``out``. Only called with the lock held. (The staging
    directory stays: the next build of the same plan resumes it.)"""
    if swap.recover(out, foreign) == "put back":
        warnings.warn(f"{out}: put back the dataset an interrupted run had moved aside", stacklevel=3)
    for d in out.parent.glob(f".{out.name}.staging-*"):  # named after their pid by earlier versions
        shutil.rmtree(d, ignore_errors=True)
    staging = BuildPaths(out).staging
    if (staging / MANIFEST).is_file() and not (staging / TASK_DIR).exists():
        # merge wrote the manifest, then removed the task records: only its swap was left to do
        (staging / PLAN).unlink(missing_ok=True)
        (staging / SUBMISSION).unlink(missing_ok=True)
        swap_in(staging, out)
        warnings.warn(f"{out}: put in place the dataset an interrupted merge had finished", stacklevel=3)
