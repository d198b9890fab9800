"""The staging directory a build writes into, across builds: its plan, its tasks' records and
locks; the same plan is resumed (finished tasks kept), another one started afresh."""
from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np

from gruv_hpc.dataset.corpus import Plan
from gruv_hpc.dataset.manifest import SHARD_DIR, DatasetError, RunningStats
from gruv_hpc.fsio import atomic_write, atomic_write_text
from gruv_hpc.lock import Lock, LockedError

# The staging directory's layout, beside shards/: the plan, each task's record, moments and lock,
# and the Slurm jobs of a build submitted to Slurm (gruv_hpc.cluster.preprocess).
TASK_DIR = "tasks"
PLAN = "plan.json"
SUBMISSION = "submission.json"


def task_name(task: int, n_tasks: int) -> str:
    return f"task-{task:04d}-of-{n_tasks:04d}"


def write_moments(path: Path, artists: list[str], moments: dict[str, RunningStats]) -> None:
    def write(f):
        np.savez(f, artists=np.array(artists), count=np.array([moments[a].n for a in artists], np.int64),
                 mean=np.stack([moments[a].mean for a in artists]), m2=np.stack([moments[a].m2 for a in artists]))
    atomic_write(path, write, mode="wb")


def write_plan(p: Plan, staging: Path, n_tasks: int) -> None:
    staging.mkdir(parents=True, exist_ok=True)
    atomic_write_text(staging / PLAN, json.dumps({**asdict(p), "n_tasks": n_tasks}, indent=1))


def read_plan(staging: Path) -> tuple[Plan, int]:
    d = json.loads((staging / PLAN).read_text())
    n_tasks = d.pop("n_tasks")
    return Plan(**d), n_tasks


def task_lock(staging: Path, task: int, n_tasks: int) -> Lock:
    return Lock(staging / TASK_DIR / f"{task_name(task, n_tasks)}.lock", f"preprocess task {task} of {n_tasks} in {staging}")


def _task_of_shard(name: str) -> int | None:
    """The task that wrote ``<artist>-<split>-<task>-<k>.h5[.partial]`` (an artist may contain '-')."""
    parts = name.removesuffix(".partial").removesuffix(".h5").rsplit("-", 3)
    return int(parts[2]) if len(parts) == 4 and parts[2].isdigit() else None


def task_finished(staging: Path, task: int, n_tasks: int) -> bool:
    """The task's record exists, and so do its moments and its shards, at the sizes it recorded."""
    name = task_name(task, n_tasks)
    try:
        rec = json.loads((staging / TASK_DIR / f"{name}.json").read_text())
        files = [(staging / sh["file"], sh["bytes"]) for sh in rec["shards"]]
        return (staging / rec["moments"]).is_file() and all(f.is_file() and f.stat().st_size == n for f, n in files)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def clean_task(staging: Path, task: int, n_tasks: int) -> None:
    """Remove whatever an unfinished task left: shards (finished or partial), moments, record, temp files."""
    name = task_name(task, n_tasks)
    for f in (staging / SHARD_DIR).glob("*.h5*") if (staging / SHARD_DIR).is_dir() else ():
        if _task_of_shard(f.name) == task:
            f.unlink()
    for f in (staging / TASK_DIR).glob(f"*{name}.*") if (staging / TASK_DIR).is_dir() else ():
        if not f.name.endswith(".lock"):
            f.unlink()


def _refuse_live_tasks(staging: Path, tasks) -> None:
    """A task whose lock is held is being written by a live process (see run_task): leave it alone."""
    for lock in tasks:
        try:
            lock.acquire()
        except LockedError as e:
            raise DatasetError(f"{e}; wait for it, or stop it") from None
        lock.release()


def same_plan(a: Plan, b: Plan) -> bool:
    def key(p):
        return json.loads(json.dumps({k: v for k, v in asdict(p).items() if k != "started"}))
    return key(a) == key(b)


def read_staging_plan(staging: Path) -> tuple[Plan, int] | None:
    try:
        return read_plan(staging)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def prepare_staging(p: Plan, staging: Path, n_tasks: int) -> list[int]:
    """Make ``staging`` the build of ``p`` in ``n_tasks`` tasks; returns the tasks still to run.
    A staging directory of the same plan and task count keeps its finished tasks (each task
    writes its files alone, and a task is finished when its record and what it lists exist);
    what unfinished tasks left is removed. Any other staging directory is removed: it holds no
    finished dataset. Either way a task some live process still writes is refused. Called with
    the dataset lock held."""
    old = read_staging_plan(staging) if staging.is_dir() else None
    if old is not None and old[1] == n_tasks and same_plan(old[0], p):
        todo = [t for t in range(n_tasks) if not task_finished(staging, t, n_tasks)]
        _refuse_live_tasks(staging, [task_lock(staging, t, n_tasks) for t in todo])
        for t in todo:
            clean_task(staging, t, n_tasks)
        return todo
    if staging.is_dir():
        locks = sorted((staging / TASK_DIR).glob("*.lock")) if (staging / TASK_DIR).is_dir() else []
        _refuse_live_tasks(staging, [Lock(f, f"preprocess {f.stem} in {staging}") for f in locks])
        if old is not None:
            warnings.warn(f"{staging}: discarding the unfinished build of another plan"
                          + (f" (in {old[1]} tasks)" if old[1] != n_tasks else ""), stacklevel=2)
        shutil.rmtree(staging)
    write_plan(p, staging, n_tasks)
    return list(range(n_tasks))
