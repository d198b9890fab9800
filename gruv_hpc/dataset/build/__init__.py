"""Corpus folders -> sharded HDF5 spectral dataset (``gruv preprocess``), in three steps:

``plan`` (``gruv_hpc.dataset.corpus``)
    List each artist folder, probe every file's header (no decoding), decide the split. Cheap:
    everything that can be refused is refused here, before any heavy work. ``gruv preprocess
    --print-split`` prints the plan's split and stops.
``run_task(plan, i, n, staging)``
    Decode, transform and write task ``i`` of ``n``'s share of the songs (a contiguous run of the
    plan) into shards of its own, and its own per-artist train moments, in the staging directory.
    Tasks write disjoint files, so N of them can run at once (processes, a Slurm job array).
``merge(staging, out)``
    Check every task's output, pool the moments exactly, write the stats and the manifest last,
    then swap the staging directory into place.

Serial ``preprocess`` = plan + one task + merge, in this process, under a lock on ``out``;
``gruv_hpc.cluster.preprocess`` runs the tasks as processes or a Slurm job array.

The dataset is built in ``.<name>.staging`` beside ``out`` (same filesystem; ``paths.BuildPaths``)
and swapped in by two renames (``out`` -> ``.<name>.old``, staging -> ``out``) before the old one
is removed, so a failed or interrupted build never touches a finished dataset. A crash between the
two renames leaves ``out`` missing and the old dataset in ``.<name>.old``: the next run (which
holds the lock) puts it back first; ``load_manifest`` points at it meanwhile. The staging
directory's name does not depend on who builds it, so a build that stopped (killed, a task failed)
is resumed by the next build of the same plan: finished tasks are kept (``prepare_staging``). A
build of another plan starts it afresh.

Songs are decoded and written one at a time, in batches of blocks, so peak memory depends on the
longest song, never on the corpus.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

from gruv_hpc.dataset.build.merge import merge
from gruv_hpc.dataset.build.staging import (PLAN, SUBMISSION, TASK_DIR, prepare_staging, read_plan, read_staging_plan,
                                            same_plan, task_finished, task_lock, write_plan)
from gruv_hpc.dataset.build.swap import recover
from gruv_hpc.dataset.build.task import run_task
from gruv_hpc.dataset.config import PreprocessConfig
from gruv_hpc.dataset.corpus import Plan, assign_splits, format_split, parse_sources, plan, read_split_file, task_songs
from gruv_hpc.dataset.manifest import FORMAT, MANIFEST, SHARD_DIR, VERSION, DatasetError, RunningStats
from gruv_hpc.lock import Lock
from gruv_hpc.paths import BuildPaths

# The builder's public surface (the CLI, the cluster's job arrays, tests): the plan comes from
# gruv_hpc.dataset.corpus, and each step from its own module.
__all__ = ["PreprocessConfig", "RunningStats", "Plan", "plan", "parse_sources", "format_split", "read_split_file",
           "assign_splits", "task_songs", "run_task", "merge", "recover", "preprocess", "prepare_staging",
           "read_plan", "read_staging_plan", "same_plan", "task_finished", "task_lock", "write_plan", "PLAN",
           "SUBMISSION", "TASK_DIR", "check_out", "dataset_diffs", "lock_dataset", "start_build", "disk_error"]

def check_out(out: str | Path) -> Path:
    out = Path(os.path.abspath(out))
    if out.is_symlink() and out.is_dir():
        out = out.resolve()  # the swap renames directories, never a link
    for p in (out, *out.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                raise DatasetError(f"--out {out}: {p} is a file" if p == out else
                                   f"--out {out}: {p} is a file, so nothing can be made under it")
            break
    return out


def dataset_diffs(out: Path, p: Plan) -> list[str] | None:
    """How ``p`` differs from the dataset in ``out`` ([]: the same songs and parameters), or None
    when ``out`` holds no complete dataset of this format version."""
    try:
        old = json.loads((out / MANIFEST).read_text())
        assert old.get("format") == FORMAT and old.get("version") == VERSION
    except (OSError, ValueError, AssertionError):
        return None
    diffs = [f"{k}: {old['params'].get(k)!r} -> {p.params.get(k)!r}" for k in p.params if old["params"].get(k) != p.params[k]]
    if old.get("artists") != p.artists:
        diffs.append(f"artists: {old.get('artists')} -> {p.artists}")
    before, after = ({(s["artist"], s["relpath"]): (s["bytes"], s["split"], s["holdout"]) for s in songs}
                     for songs in (old["songs"], p.songs))
    if before != after:
        changed = sum(before[k] != after[k] for k in before.keys() & after.keys())
        diffs.append(f"songs: {len(before.keys() - after.keys())} gone, {len(after.keys() - before.keys())} new, "
                     f"{changed} changed in size or split")
    return diffs


def _check_own(out: Path, old: dict) -> None:
    """Nothing of the user's is lost by rebuilding ``out``: the files beside the dataset's own are
    carried over (``build.swap.foreign``: a split file kept there, notes), but a file in ``shards/``
    that the manifest does not list would be replaced with the folder: refused by name. (A split
    file given to the build is one of the two, or outside ``out``.)"""
    listed = {Path(sh.get("file", "")).name for sh in old.get("shards", []) if isinstance(sh, dict)}
    shards = out / SHARD_DIR
    extra = sorted(f.name for f in shards.iterdir() if f.name not in listed) if shards.is_dir() else []
    if extra:
        more = f" (nor {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise DatasetError(f"{shards / extra[0]}: not a shard of the dataset's manifest{more}; a rebuild replaces "
                           f"{shards} whole: move it out of {shards} first")


def _check_replace(out: Path, p: Plan, overwrite: bool) -> None:
    """What ``out`` holds may be replaced: nothing, or a dataset of the same songs and parameters,
    or any dataset with ``overwrite``. A folder of other files is never written into; the user's
    files beside a dataset are kept (carried over by the swap)."""
    if not out.is_dir() or not any(out.iterdir()):
        return
    mpath = out / MANIFEST
    try:
        old = json.loads(mpath.read_text())
        assert old.get("format") == FORMAT
    except (OSError, ValueError, AssertionError):
        raise DatasetError(f"{out} is not empty and holds no gruv dataset ({mpath} is missing or not one); gruv "
                           "preprocess never deletes files it did not write: choose another --out") from None
    _check_own(out, old)
    if overwrite:
        return
    if old.get("version") != VERSION:
        raise DatasetError(f"{out} holds a dataset of format version {old.get('version')!r}; pass --overwrite to "
                           f"rebuild it in version {VERSION}")
    diffs = dataset_diffs(out, p)
    if diffs:
        raise DatasetError(f"{out} already holds a dataset with other parameters or songs ({'; '.join(diffs)}); "
                           "pass --overwrite to replace it")


def lock_path(out: Path) -> Path:
    return BuildPaths(out).lock


def lock_dataset(out: Path) -> Lock:
    lock = Lock(lock_path(out), f"dataset {out}")
    try:
        lock.acquire()
    except OSError as e:
        raise DatasetError(f"cannot lock {lock.path}: {e.strerror}") from None
    return lock


def start_build(sources: dict[str, Path], out: Path, cfg: PreprocessConfig, jobs: int, overwrite: bool = False,
                split_file: str | Path | None = None, planned: Plan | None = None) -> tuple[Plan, Path, int, list[int]]:
    """Everything before the tasks, with the dataset lock held: recover from a crash, plan, check
    that ``out`` may be replaced, prepare the staging directory. Returns (plan, staging, number of
    tasks, the tasks still to run); no more tasks than songs."""
    recover(out)
    p = planned or plan(sources, cfg, split_file)
    _check_replace(out, p, overwrite)
    n_tasks = max(1, min(jobs, len(p.songs)))
    staging = BuildPaths(out).staging
    return p, staging, n_tasks, prepare_staging(p, staging, n_tasks)


def disk_error(e: OSError, out: Path, staging: Path) -> DatasetError:
    """A build's OSError as one line. A full disk also removes the staging directory, to give
    the space back (its finished tasks go with it)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        shutil.rmtree(staging, ignore_errors=True)
        return DatasetError(f"{e.filename or staging}: {e.strerror}; nothing was written (the staging directory "
                            f"is removed{', the dataset in ' + str(out) + ' is as it was' if out.exists() else ''})")
    return DatasetError(f"{e.filename or staging}: {e.strerror or e}; the dataset in {out} is as it was; finished "
                        f"tasks are kept in {staging} for the next run")


def preprocess(sources: dict[str, Path], out: str | Path, cfg: PreprocessConfig, overwrite: bool = False,
               progress: bool = True, split_file: str | Path | None = None, planned: Plan | None = None,
               before=None) -> dict:
    """Build the dataset in ``out`` in this process; returns the manifest. Raises DatasetError when
    nothing usable was found, or when ``out`` holds something that may not be replaced; ``out`` is
    then untouched. Rebuilding with the same songs and parameters simply rebuilds it.

    ``before(out)``, if given, runs under the dataset lock before anything else: the cluster layer
    passes its check that no Slurm build of ``out`` is still live (the dataset layer knows no
    scheduler)."""
    cfg.validate()
    out = check_out(out)
    lock = lock_dataset(out)
    try:
        if before is not None:
            before(out)
        p, staging, n_tasks, todo = start_build(sources, out, cfg, 1, overwrite, split_file, planned)
        try:
            for t in todo:
                run_task(p, t, n_tasks, staging, progress)
            return merge(staging, out)
        except BaseException as e:
            recover(out)
            if isinstance(e, OSError):
                raise disk_error(e, out, staging) from None
            raise
    finally:
        lock.release()
