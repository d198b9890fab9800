"""``gruv preprocess --jobs N --executor local|slurm|auto``: the tasks of ``preprocess`` (plan ->
run_task x N -> merge) as N local processes, or, through a queueing scheduler (Slurm), as one job
array plus a merge job that starts when every task succeeded (``--dependency=afterok:<array>``).

Resuming. The staging directory (``paths.BuildPaths``) is the state: the plan, and one record per
finished task. A build of the same plan and task count keeps the finished tasks and runs only the
others (``preprocess.prepare_staging``); a task preempted on Slurm is requeued alone and starts
by removing what its killed copy left (``preprocess.run_task``).

One build at a time. The dataset lock (flock) is held by a local build from start to end, by a
Slurm submission while it plans and submits, and by the merge job; it cannot be held across
Slurm jobs, so a submission also writes its job ids into the staging directory
(``submission.json``), and every build first asks Slurm (one sacct call) whether those jobs still
live: if so it is refused (``refuse_live_build``). A merge job left waiting on a task that failed
can never start; it is cancelled there, and the next build resubmits the failed tasks only.
"""
from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from submitit.helpers import Checkpointable

from gruv_hpc.dataset.config import PreprocessConfig
from gruv_hpc.cluster.config import SlurmConfig
from gruv_hpc.cluster.executors import scheduler
from gruv_hpc.cluster.scheduler import ACTIVE, Dependency, Scheduler, log_path
from gruv_hpc.config import build as build_config, read_file
from gruv_hpc.errors import ConfigError, DatasetError, GruvError, plain_warnings
from gruv_hpc.fsio import atomic_write_json
from gruv_hpc.lock import Lock, LockedError, pid_alive
from gruv_hpc.dataset.manifest import MANIFEST, load_manifest
from gruv_hpc.paths import BuildPaths
from gruv_hpc.dataset.build import (PLAN, SUBMISSION, Plan, check_out, recover, disk_error, lock_dataset, merge, preprocess, read_plan, read_staging_plan, run_task, start_build, task_finished)

# A preprocessing task decodes and transforms one song at a time, in one thread: one CPU, and
# memory for the longest song (a 10-minute song takes about 1 GB).
SLURM_DEFAULTS = {"time_min": 240, "cpus_per_task": 1, "mem_gb": 4.0, "signal_delay_s": 60}
MERGE_LOCK_WAIT_S = 600  # the merge waits this long for a submission that holds the lock for seconds


def slurm_config(values: dict | None = None, overrides: dict | None = None, source: str = "[slurm]") -> SlurmConfig:
    """The resources of the preprocessing jobs: SLURM_DEFAULTS <- values (a [slurm] table) <- overrides."""
    return build_config(SlurmConfig, {**SLURM_DEFAULTS, **(values or {})}, overrides, source=source)


def read_slurm_file(path: str | Path) -> dict:
    """A file's ``[slurm]`` table (a sweep or pipeline file), or the whole file when it has none."""
    raw = read_file(path)
    table = raw.get("slurm", raw)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: slurm: expected a table of Slurm keys")
    return dict(table)


# ---------------------------------------------------------------------------------------------
# The build: local processes, or a Slurm array + merge

def build(sources: dict[str, Path], out: str | Path, cfg: PreprocessConfig, jobs: int = 1, executor: str = "local",
          slurm: SlurmConfig | None = None, overwrite: bool = False, split_file: str | Path | None = None,
          progress: bool = True, wait: bool = True, logs: str | Path | None = None, say=print,
          planned: Plan | None = None, after: Dependency | None = None, check: bool = True) -> dict:
    """Build ``out`` in ``jobs`` tasks. Returns {"executor", "tasks" (how many), "ran" (the tasks run
    now), "manifest" (once built: locally, or on Slurm with ``wait``), "submission" (Slurm)}.
    ``planned``: the plan of these sources and options when the caller made it already.
    ``after``: what the queued jobs wait for. ``check``: the resources against the cluster (False:
    the caller checked them)."""
    cfg.validate()
    if jobs < 1:
        raise ConfigError(f"--jobs: must be >= 1, got {jobs}")
    sched = scheduler(executor)
    checked = sched.check({"preprocess [slurm]": slurm or slurm_config()}) if check and not sched.foreground else None
    if checked:  # before anything is queued
        say(checked)
    out = check_out(out)
    if sched.foreground and jobs == 1:
        return {"executor": sched.kind, "tasks": 1, "ran": [0],
                "manifest": preprocess(sources, out, cfg, overwrite=overwrite, progress=progress, split_file=split_file,
                                       planned=planned, before=refuse_live_build)}
    lock = lock_dataset(out)
    try:
        refuse_live_build(out)
        p, staging, n_tasks, todo = start_build(sources, out, cfg, jobs, overwrite, split_file, planned)
        if sched.foreground:  # (debug too: the tasks' processes are forks, with nothing to step into)
            try:
                _run_local(p, staging, n_tasks, todo, progress, say)
                return {"executor": sched.kind, "tasks": n_tasks, "ran": todo, "manifest": merge(staging, out)}
            except BaseException as e:
                recover(out)
                if isinstance(e, OSError):
                    raise disk_error(e, out, staging) from None
                raise
        sub = _submit_queued(sched, out, staging, n_tasks, todo, slurm or slurm_config(), Path(logs or BuildPaths(out).jobs),
                             after)
    finally:
        lock.release()
    done = n_tasks - len(todo)
    say(f"preprocess {out}: {len(todo)} task(s) of {n_tasks} submitted" + (f" ({done} finished before)" if done else "")
        + (f" as job array {sub['array']}" if sub["array"] else "") + f", merge job {sub['merge']} after them; "
        f"job logs in {sub['logs']}")
    res = {"executor": sched.kind, "tasks": n_tasks, "ran": todo, "submission": sub}
    if wait:
        res["manifest"] = wait_build(out, sub)
    return res


def _run_local(p, staging: Path, n_tasks: int, todo: list[int], progress: bool, say) -> None:
    """Each task in a process of its own, all at once; returns when all ended, raises if one failed
    (the others finish first: their work is kept for the next run)."""
    if not todo:
        return
    # fork: the children start with this process's modules imported (a fresh interpreter would
    # take ~0.5 s to import numpy, scipy and h5py again).
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    t0 = time.time()
    if progress:
        say(f"preprocess: {len(todo)} task(s) of {n_tasks} in {len(todo)} processes here"
            + (f" ({n_tasks - len(todo)} finished before)" if len(todo) < n_tasks else ""))
    procs = {}
    try:
        for t in todo:
            procs[t] = ctx.Process(target=_task_process, args=(p, str(staging), t, n_tasks, os.getpid()),
                                   name=f"gruv-preprocess-{t}")
            procs[t].start()
        pending = dict(procs)
        while pending:
            multiprocessing.connection.wait([pr.sentinel for pr in pending.values()])
            for t, pr in list(pending.items()):
                if pr.exitcode is not None:
                    del pending[t]
                    if progress and pr.exitcode == 0:
                        say(f"preprocess: task {t} done ({len(procs) - len(pending)}/{len(procs)}, {time.time() - t0:.1f} s)")
    except BaseException:
        for pr in procs.values():
            if pr.is_alive():
                pr.terminate()
        for pr in procs.values():
            pr.join()
        raise
    failed = {t: pr.exitcode for t, pr in procs.items() if pr.exitcode != 0}
    if failed:
        raise DatasetError(f"preprocess task(s) {', '.join(map(str, failed))} of {n_tasks} failed (the reason is above); "
                           f"the finished tasks are kept in {staging}: run the same command again to run the others")


def _task_process(p, staging: str, task: int, n_tasks: int, parent: int) -> None:
    _die_with_parent(parent)
    try:
        run_task(p, task, n_tasks, Path(staging))
    except KeyboardInterrupt:
        sys.exit(130)
    except (GruvError, OSError) as e:
        print(f"gruv: error: preprocess task {task}: {e}", file=sys.stderr)
        sys.exit(2)


def _die_with_parent(parent: int) -> None:
    """A killed build must not leave tasks writing on: ask the kernel for TERM when the parent dies."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request
        os._exit(1)


# ---------------------------------------------------------------------------------------------
# Queued jobs (Slurm). Each is a frozen dataclass of its arguments on submitit's Checkpointable:
# requeued after a preemption, it is resubmitted as it was submitted, and the staging directory
# says what is left to do.

@dataclass(frozen=True)
class TaskJob(Checkpointable):
    """One preprocessing task. Requeued, it starts the task over; a task that had finished is not redone."""
    staging: str
    task: int

    def __call__(self) -> dict:
        plain_warnings()  # side effect, stated: the job's log holds the same one-line warnings as a terminal
        p, n_tasks = read_plan(Path(self.staging))
        rec = run_task(p, self.task, n_tasks, Path(self.staging))
        return {"task": self.task, "songs": len(rec["songs"]), "shards": len(rec["shards"])}


@dataclass(frozen=True)
class MergeJob(Checkpointable):
    """The merge, under the dataset lock (waiting for it a while: a submission holds it for
    seconds). Requeued, it finishes what its killed copy began."""
    out: str

    def __call__(self) -> dict:
        plain_warnings()  # side effect, stated: the job's log holds the same one-line warnings as a terminal
        out = Path(self.out)
        lock = Lock(BuildPaths(out).lock, f"dataset {out}")
        deadline = time.time() + MERGE_LOCK_WAIT_S
        while True:
            try:
                lock.acquire()
                break
            except LockedError:
                if time.time() > deadline:
                    raise
                time.sleep(2)
        try:
            recover(out)  # (a killed copy's finished merge is swapped in here)
            staging = BuildPaths(out).staging
            m = merge(staging, out) if (staging / PLAN).exists() else load_manifest(out)
        finally:
            lock.release()
        return {"dataset": str(out), **m["summary"]}


def _submit_queued(sched: Scheduler, out: Path, staging: Path, n_tasks: int, todo: list[int], scfg: SlurmConfig,
                   logs: Path, after: Dependency | None = None) -> dict:
    """One array of the unfinished tasks (a plain job for one), one merge job after them; the job
    ids go to the staging directory's submission.json."""
    tasks = {}
    if todo:
        jobs = sched.submit([TaskJob(str(staging), t) for t in todo], scfg, logs, f"gruv-preprocess-{out.name}", after)
        tasks = {str(t): j.job_id for t, j in zip(todo, jobs)}
    array = jobs[0].job_id.split("_")[0] if todo else None
    [merge_job] = sched.submit([MergeJob(str(out))], scfg, logs, f"gruv-merge-{out.name}",
                               Dependency(after_ok=(array,)) if array else after)
    sub = {"executor": sched.kind, "time": time.time(), "host": socket.gethostname(), "pid": os.getpid(),
           "n_tasks": n_tasks, "tasks": tasks, "array": array, "merge": merge_job.job_id, "logs": str(logs)}
    atomic_write_json(staging / SUBMISSION, sub)
    return sub


def read_submission(staging: Path) -> dict | None:
    try:
        return json.loads((staging / SUBMISSION).read_text())
    except (OSError, ValueError):
        return None


def job_log(sub: dict, job_id: str) -> Path:
    """A job's stderr file (an array task's id is ARRAY_TASK)."""
    return log_path(sub["logs"], job_id, err=True)


def _scheduler(sub: dict) -> Scheduler:
    return scheduler(sub.get("executor", "slurm"))


def live_build(out: Path, cancel_dead: bool = True) -> dict | None:
    """The queued submission (Slurm) building ``out``'s staging directory, when one of its jobs may
    still run: the submission with "live" = "tasks" or "merge". One sacct call. A merge job waiting
    on a task that ended otherwise than COMPLETED can never start: it is cancelled (unless not
    ``cancel_dead``: a dry run changes nothing), and None returned."""
    sub = read_submission(BuildPaths(out).staging)
    if not sub:
        return None
    ids = [*sub["tasks"].values(), sub["merge"]]
    sched = _scheduler(sub)
    if not sched.available():
        raise DatasetError(f"{BuildPaths(out).staging / SUBMISSION} records Slurm jobs ({', '.join(ids)}) building {out}, "
                           "and Slurm does not answer here; run this where it does (or remove that file if those "
                           "jobs are gone)")
    infos = sched.states(ids)
    state = {j: infos[j].state if j in infos else None for j in ids}
    if any(state[j] in ACTIVE for j in sub["tasks"].values()):
        return {**sub, "live": "tasks", "states": state}
    if state[sub["merge"]] in ACTIVE:
        failed = [t for t, j in sub["tasks"].items() if state[j] != "COMPLETED"]
        if not failed:
            return {**sub, "live": "merge", "states": state}
        if not cancel_dead:
            return None
        sched.cancel_and_wait([sub["merge"]])
        warnings.warn(f"{out}: cancelled merge job {sub['merge']}: task(s) {', '.join(failed)} ended "
                      f"({', '.join(str(state[sub['tasks'][t]]) for t in failed)}), so it could never start", stacklevel=2)
    return None


def refuse_live_build(out: Path) -> None:
    live = live_build(out)
    if live:
        ids = [*live["tasks"].values(), live["merge"]]
        raise DatasetError(f"{out} is being built by Slurm job(s) {', '.join(ids)} (submitted "
                           f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(live['time']))} from {live['host']}); "
                           f"wait for them to end, or scancel them")


def wait_build(out: Path, sub: dict, poll_s: float = 2.0) -> dict:
    """Wait for a queued build to end; returns the manifest, or raises naming the failed jobs' logs."""
    sched = _scheduler(sub)
    ids = [*sub["tasks"].values(), sub["merge"]]
    while True:
        infos = sched.states(ids)
        state = {j: infos[j].state if j in infos else None for j in ids}
        m = state[sub["merge"]]
        if m is not None and m not in ACTIVE:
            if m == "COMPLETED":
                return load_manifest(out)
            raise DatasetError(f"merge job {sub['merge']} of {out} ended {m}: see {job_log(sub, sub['merge'])}")
        failed = {t: j for t, j in sub["tasks"].items() if state[j] is not None and state[j] not in ACTIVE
                  and state[j] != "COMPLETED"}
        if failed and not any(state[j] in ACTIVE for j in sub["tasks"].values()):
            sched.cancel([sub["merge"]])
            raise DatasetError(f"preprocess task(s) {', '.join(failed)} of {out} ended otherwise than COMPLETED ("
                               + "; ".join(f"job {j}: {state[j]}, see {job_log(sub, j)}" for j in failed.values())
                               + "); run the same command again: only those tasks are submitted again")
        time.sleep(poll_s)


def build_status(out: str | Path) -> dict:
    """Where a build of ``out`` stands: state, tasks done/total, the merge job and its state."""
    out = Path(out)
    staging = BuildPaths(out).staging
    planned = read_staging_plan(staging) if staging.is_dir() else None
    sub = read_submission(staging) if planned else None
    res = {"dataset": str(out), "complete": (out / MANIFEST).is_file(), "tasks_done": 0, "tasks_total": 0,
           "merge_job": None, "merge_state": None, "task_jobs": {}}
    if planned:
        n = planned[1]
        res["tasks_total"], res["tasks_done"] = n, sum(task_finished(staging, t, n) for t in range(n))
    elif res["complete"]:
        try:
            m = json.loads((out / MANIFEST).read_text())
            n = int(m["summary"].get("tasks", 1))
            res["warnings"] = list(m.get("warnings", []))  # the merge job's, which went to its log
        except (OSError, ValueError, KeyError, TypeError):
            n = 1
        res["tasks_total"] = res["tasks_done"] = n
    if sub:
        infos = _scheduler(sub).states([*sub["tasks"].values(), sub["merge"]])
        res["merge_job"] = sub["merge"]
        res["merge_state"] = infos[sub["merge"]].state if sub["merge"] in infos else None
        res["task_jobs"] = {t: {"job_id": j, "state": infos[j].state if j in infos else None} for t, j in sub["tasks"].items()}
    tasks = [j["state"] for j in res["task_jobs"].values()]
    states = tasks + [res["merge_state"]]
    if not planned:
        res["state"] = "COMPLETED" if res["complete"] else "NOT_STARTED"
    elif "RUNNING" in states or (not sub and _held(BuildPaths(out).lock)):
        res["state"] = "RUNNING"
    elif any(s in ACTIVE for s in tasks) or (res["merge_state"] in ACTIVE and all(s == "COMPLETED" for s in tasks)):
        res["state"] = "PENDING"
    elif any(s and s not in ACTIVE and s != "COMPLETED" for s in states):
        res["state"] = "FAILED"
    else:
        res["state"] = "INCOMPLETE"  # stopped; the next build of the same plan resumes it
    return res


def _held(lock_file: Path) -> bool:
    """Whether a live process on this host holds the dataset lock, going by the holder it wrote (a
    status must not take the lock itself: a build starting that moment would be refused)."""
    h = Lock(lock_file, "").holder()
    if not h or h.get("host") != socket.gethostname():
        return bool(h) and h.get("host") != socket.gethostname()
    return pid_alive(h.get("pid"))
