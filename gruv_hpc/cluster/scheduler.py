"""The scheduler interface: where the cluster layer's jobs run (submitit-style, and small).

A ``Scheduler`` submits an array of callables (one job each), holds them behind a
``Dependency``, answers their states in one call, cancels them, and names their log files.
Two implement it: ``slurm.SlurmScheduler`` (sbatch through submitit; sacct and squeue) and
``local.LocalScheduler`` (submitit's local executor: processes on this machine, while the
submitting command waits). ``executors.scheduler(kind)`` picks one; the sweep, the preprocessing
arrays and the pipeline ask it, never a scheduler by name.

The states are Slurm's words (PENDING, RUNNING, COMPLETED, CANCELLED ...): the richest
vocabulary of the two, and the one sweep.json, pipeline.json and ``gruv ... status`` show.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

# Job states in which a job may still run (or run again): its run must not be resubmitted.
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD",
          "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED"}


@dataclass(frozen=True)
class JobInfo:
    state: str  # COMPLETED, CANCELLED, RUNNING ... ("CANCELLED by 0" is CANCELLED)
    requeues: int = 0  # REQUEUED rows before the current one
    exit_code: str = ""  # "0:0", "1:0", "0:15" ...
    # Why a queued job waits, in Slurm's words (squeue's %r): Resources, Priority, Dependency,
    # BeginTime (a requeued job's short hold), JobHeldUser, PartitionConfig (it asks for more than
    # the partition has) ...; "" when it does not wait or nothing says.
    reason: str = ""


@dataclass(frozen=True)
class Dependency:
    """What must end before a job may start: every ``after_ok`` job COMPLETED, every
    ``after_any`` job ended, however. An array's id stands for all of its tasks."""
    after_ok: tuple[str, ...] = ()
    after_any: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.after_ok or self.after_any)

    def __str__(self) -> str:
        """Slurm's ``--dependency`` spelling, which pipeline.json records: afterany:1:2,afterok:3."""
        parts = [f"{word}:{':'.join(ids)}" for word, ids in (("afterany", self.after_any), ("afterok", self.after_ok)) if ids]
        return ",".join(parts)


def log_path(folder: str | Path, job_id: str, task: int = 0, err: bool = False) -> Path:
    """Where submitit writes a job's task stdout (``err``: stderr): ``<job_id>_<task>_log.out`` in
    its folder, under both schedulers (an array task's job id is ``<array>_<index>``). Task 0 is
    the rank that reports. tests/test_scheduler.py holds it to submitit's own JobPaths."""
    return Path(folder) / f"{job_id}_{task}_log.{'err' if err else 'out'}"


def task_logs(folder: str | Path, job_id: str, err: bool = False) -> list[Path]:
    """Every task's ``log_path`` of a job that exists, task 0 first."""
    folder = Path(folder)
    pat = re.compile(rf"^{re.escape(job_id)}_(\d+)_log\.{'err' if err else 'out'}$")
    found = [(int(m.group(1)), p) for p in (folder.glob(f"{job_id}_*_log.*") if folder.is_dir() else [])
             if (m := pat.match(p.name))]
    return [p for _, p in sorted(found)]


class Scheduler(ABC):
    kind: str  # what sweep.json and pipeline.json record as a job's executor
    # Its jobs run on this machine while the submitting command waits, and end with it: there is
    # no queue to leave them in (a "submission" returns when they end).
    foreground: bool
    # A job gets the resources its SlurmConfig asks for (nodes x tasks_per_node processes, GPUs);
    # otherwise one process on whatever this machine has.
    allocates: bool
    # Its jobs run inside the submitting process, one at a time, when their result is asked for.
    inline: bool = False

    def available(self) -> bool:
        """Whether jobs can be submitted from here."""
        return True

    @abstractmethod
    def submit(self, fns: Sequence[Callable], cfg, folder: Path, name: str, after: Dependency | None = None) -> list:
        """Submit ``fns`` (picklable callables) as one array, one job each, with ``cfg``'s
        resources (a SlurmConfig), job name ``name`` and logs in ``folder``; ``after`` holds them
        back. Returns submitit jobs (``job_id``, ``done()``, ``result()``), in order."""

    @abstractmethod
    def states(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        """What is known of these jobs, in one question; a job missing from the answer is one
        nothing is known of (never started, or forgotten)."""

    def state(self, job_id: str, infos: dict[str, JobInfo]) -> str | None:
        """One job's state, from ``infos`` (a ``states`` answer for many jobs at once) where this
        scheduler needs one; None when nothing is known."""
        info = infos.get(job_id)
        return info.state if info else None

    @abstractmethod
    def cancel(self, job_ids: Sequence[str]) -> None:
        """Stop these jobs: a queued one never starts; a running one is told to stop (TERM: it
        checkpoints at its next step boundary) and killed if it does not. Ended ones are left be."""

    def preempt(self, job_id: str) -> str:
        """Send a running job the preemption signal once, as the scheduler would before
        preempting it (the run checkpoints and is requeued); return at once with what was done.
        Raises GruvError where this scheduler has no preemption or the job is not running."""
        from gruv_hpc.errors import GruvError
        raise GruvError(f"the {self.kind} executor does not preempt (nothing requeues its jobs); gruv sweep cancel "
                        "stops a run with a checkpoint, and resubmitting resumes it")

    def cancel_and_wait(self, job_ids: Sequence[str], timeout_s: float = 30.0, poll_s: float = 0.5) -> None:
        """``cancel``, then wait until ``states`` no longer shows them active: what reads their
        state next (a sweep's plan, a status) must see them ended."""
        import time
        if not job_ids:
            return
        self.cancel(job_ids)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            infos = self.states(job_ids)
            if not any(infos[j].state in ACTIVE for j in job_ids if j in infos):
                return
            time.sleep(poll_s)

    def check(self, requests: dict) -> str | None:
        """Whether each of ``requests`` ({where: SlurmConfig}, ``where`` naming it in errors: "sweep
        [slurm]") could ever start here, before anything is queued: raises ConfigError naming the
        resource and the limit where not, else returns one line saying what was checked (or why
        nothing could be). A scheduler that ignores the requests (one process here) has nothing to
        check: None."""
        return None

    def max_array_size(self) -> int:
        """The most jobs one array may hold (Slurm's MaxArraySize); larger ones are split."""
        return 1 << 30

    def script(self, cfg, folder: Path, name: str, n_jobs: int, after: Dependency | None = None) -> str | None:
        """What ``submit`` would send to the batch system for ``n_jobs`` jobs held back by ``after``
        (a dry run shows it, its job ids maybe placeholders); None when there is no such thing."""
        return None

    def ended(self, folder: Path, job_id: str) -> str | None:
        """How a job that no longer runs ended, in words, where only the scheduler saw it and it
        was not a clean exit (a process killed by a signal leaves no result and no traceback);
        None when it recorded nothing to add. ``folder``: the job's log folder."""
        return None

    def pid(self, job) -> int | None:
        """The process of a submitted job on this machine, when it has one to check for liveness."""
        return None
