"""A run's job logs: every attempt's stdout or stderr from submitit's folder (SWEEP_DIR/logs), and
``--follow`` on the newest until its job ends.

submitit names a job's files ``<job_id>_<task>_log.out`` and ``.err`` (a Slurm array task's job id
is ``<array>_<task>``). A requeued Slurm job appends its next start to the same files; a run
resubmitted by ``gruv sweep submit`` gets a new job id, and so new files: its JobRecord list in
sweep.json is the run's list of attempts.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from gruv_hpc.errors import GruvError
from gruv_hpc.cluster.scheduler import ACTIVE, task_logs
from gruv_hpc.cluster.sweep.state import JobRecord, SweepState, load_state
from gruv_hpc.cluster.sweep.status import job_infos, job_state, local_queue, log_path


def log_files(logs: Path, job: JobRecord, err: bool = False) -> list[Path]:
    """The job's log files, one per task (task 0 first: the rank that reports)."""
    return task_logs(logs, job.job_id, err)


def _header(i: int, n: int, job: JobRecord, path: Path | None, requeues: int) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.submitted)) if job.submitted else "?"
    again = f"; requeued {requeues}x, each start appended below" if requeues else ""
    return f"==> attempt {i} of {n}: job {job.job_id} ({job.executor}), submitted {when}{again}: {path or 'no log file yet'} <=="


def _state(sweep_dir, name: str) -> SweepState:
    state = load_state(sweep_dir, must_exist=True)
    if name not in state.runs:
        raise GruvError(f"no run {name!r} in {sweep_dir}; runs: {', '.join(state.runs)}")
    return state


def show_logs(sweep_dir, name: str, err: bool = False, follow: bool = False, poll_s: float = 1.0,
              out=sys.stdout) -> int:
    """Print every attempt's log of run ``name``, oldest first, each under a header line; with
    ``follow``, keep printing what the newest attempt writes until its job ends. Returns the exit
    status: 1 when the run has no job (nothing to show)."""
    state = _state(sweep_dir, name)
    jobs = state.runs[name].jobs
    if not jobs:
        queued = name in local_queue(state)
        print(f"run {name} has no job yet" + (" (queued by a running local submission; its log appears when it "
              "starts)" if queued else " (not submitted)"), file=sys.stderr)
        if not (follow and queued):
            return 1
    infos = job_infos(jobs)
    for i, job in enumerate(jobs, 1):
        requeues = infos[job.job_id].requeues if job.job_id in infos else 0
        if follow and i == len(jobs):  # followed below: task 0's file, the rank that reports
            print(_header(i, len(jobs), job, Path(log_path(state.paths.logs, job, err)), requeues), file=out, flush=True)
            break
        for f in log_files(state.paths.logs, job, err) or [None]:
            print(_header(i, len(jobs), job, f, requeues), file=out, flush=True)
            if f is not None:
                _copy(f, 0, out)
    if follow:
        _follow(sweep_dir, name, jobs[-1].job_id if jobs else None, err, poll_s, out)
    return 0


def _copy(path: Path, offset: int, out) -> int:
    """Write ``path`` from byte ``offset`` on to ``out``; returns the new offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset
    if data:
        out.write(data.decode(errors="replace"))
        out.flush()
    return offset + len(data)


def _follow(sweep_dir, name: str, job_id: str | None, err: bool, poll_s: float, out) -> None:
    """Tail the newest attempt's task-0 file until its job has ended; ``job_id``: the attempt whose
    header is printed already. An attempt that starts while following (a queued local run, a
    resubmission) gets its header and is followed in turn. Ctrl-C ends it quietly."""
    offset = 0
    try:
        while True:
            state = _state(sweep_dir, name)
            jobs = state.runs[name].jobs
            job = jobs[-1] if jobs else None
            path = Path(log_path(state.paths.logs, job, err)) if job else None
            if job is not None and job.job_id != job_id:
                print(_header(len(jobs), len(jobs), job, path, 0), file=out, flush=True)
                job_id, offset = job.job_id, 0
            if path:
                offset = _copy(path, offset, out)
            if job is None:
                ended = name not in local_queue(state)
            else:
                ended = job_state(job, job_infos([job])) not in ACTIVE
            if ended:
                if path:
                    _copy(path, offset, out)  # what it wrote while ending
                return
            time.sleep(poll_s)
    except KeyboardInterrupt:
        out.write("\n")
