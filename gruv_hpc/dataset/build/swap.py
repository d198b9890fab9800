"""Putting a built dataset in place by two renames, and undoing what a crash left between them."""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

from gruv_hpc.dataset.build.staging import PLAN, SUBMISSION, TASK_DIR
from gruv_hpc.dataset.manifest import MANIFEST, aside_path
from gruv_hpc.fsio import fsync_dir
from gruv_hpc.paths import BuildPaths


def swap_in(staging: Path, out: Path) -> None:
    """Two renames: a crash between them leaves out missing and the old dataset aside (see recover)."""
    old = aside_path(out)
    if out.exists():
        os.rename(out, old)
    os.rename(staging, out)
    fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover(out: Path) -> None:
    """Undo what a crashed run left beside ``out``. Only called with the lock held. (The staging
    directory stays: the next build of the same plan resumes it.)"""
    old = aside_path(out)
    if old.is_dir():
        if out.exists():
            shutil.rmtree(old)  # the crash came after the new dataset was in place
        else:
            os.rename(old, out)  # ... or before: put the previous dataset back
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
