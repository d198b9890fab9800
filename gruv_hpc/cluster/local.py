"""``LocalScheduler``: jobs as processes on this machine, through submitit's local executor (or,
``inline``, its debug executor: each job inside the submitting process, for pdb).

A local job's id is the pid of its submitit controller (which starts the job's process and
passes signals on): its state is whether that process lives, read from /proc; there is no
queue, so nothing is PENDING. The controller is submitit's, extended to write down how each task's
process ended (``local_controller``: a process killed by a signal leaves no other word of it);
``ended`` reads that. Cancelling a job is what Slurm does to one: TERM (the training process
checkpoints at its next step boundary), then KILL for whatever of its process tree is left after
a grace time.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from gruv_hpc.cluster.scheduler import Dependency, JobInfo, Scheduler
from gruv_hpc.errors import ConfigError
from gruv_hpc.lock import pid_alive

STOP_GRACE_S = 120  # a checkpoint of the paper's largest model takes seconds to write
CONTROLLER = "gruv_hpc.cluster.local_controller"  # the module each local job's controller runs


class LocalScheduler(Scheduler):
    foreground = True
    allocates = False

    def __init__(self, inline: bool = False):
        self.inline = inline
        self.kind = "debug" if inline else "local"

    def submit(self, fns: Sequence[Callable], cfg, folder: Path, name: str, after: Dependency | None = None) -> list:
        """Start each of ``fns`` now (``cfg``: its time limit and requeue count). ``after``: this
        scheduler runs jobs at once, so the caller runs what they wait for first."""
        import submitit
        if after:
            raise ConfigError(f"the {self.kind} executor starts jobs at once and cannot hold them behind {after}")
        if self.inline:
            ex = submitit.DebugExecutor(folder=folder)
        else:
            ex = _recording_executor()(folder=folder, max_num_timeout=cfg.max_num_timeout)
            ex.update_parameters(timeout_min=cfg.time_min, tasks_per_node=1, gpus_per_node=0)
        return [_submit_ignoring_sigint(ex, fn) for fn in fns]

    def pid(self, job) -> int | None:
        return None if self.inline else int(job.job_id)  # a LocalJob's id is its controller's pid

    def states(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        return {j: JobInfo("RUNNING") for j in job_ids if self.state(j, {}) == "RUNNING"}

    def state(self, job_id: str, infos: dict[str, JobInfo]) -> str | None:
        """RUNNING while the job's controller lives (asked here, not in ``infos``: /proc is cheap
        and exact); an inline job runs inside its submitter and is never seen running from outside."""
        if self.inline or not str(job_id).isdigit():
            return None
        return "RUNNING" if job_alive(int(job_id)) else None

    def cancel(self, job_ids: Sequence[str], grace_s: float = STOP_GRACE_S) -> None:
        stop([int(j) for j in job_ids if self.state(j, {}) == "RUNNING"], grace_s)

    def ended(self, folder: Path, job_id: str) -> str | None:
        """What the job's controller recorded of a task that did not exit cleanly (``exit_path``)."""
        return describe_exit(exit_path(folder, job_id))


def exit_path(folder: str | Path, job_id: str) -> Path:
    """Where a local job's controller records its tasks' exit codes: beside the job's logs."""
    return Path(folder) / f"{job_id}_exit.json"


def describe_exit(path: Path) -> str | None:
    """An exit record in words, for the tasks that did not exit 0 (None when all did, or when
    there is no readable record: the job may have been started before controllers recorded)."""
    try:
        codes = json.loads(path.read_text())["exit_codes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    why = []
    for k, code in enumerate(codes if isinstance(codes, list) else []):
        if isinstance(code, int) and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = "?"
            oom = "; the kernel's OOM killer sends it when memory runs out" if -code == signal.SIGKILL else ""
            why.append(f"task {k} was killed by signal {-code} ({name}{oom})")
        elif isinstance(code, int) and code != 0:
            why.append(f"task {k} exited with status {code}")
    return "; ".join(why) or None


@functools.cache
def _recording_executor():
    """submitit's LocalExecutor, starting ``CONTROLLER`` (submitit's controller, which also records
    its tasks' exit codes) in place of ``submitit.local._local``. The environment is submitit
    1.5's ``start_controller``'s, which hard-codes its module (its ``setup`` parameter, unused
    here, is not carried over); the job id is still the controller's pid."""
    import submitit
    from submitit.local.local import LocalJob

    class RecordingLocalExecutor(submitit.LocalExecutor):
        def _submit_command(self, command: str):
            p = self.parameters
            ntasks = p.get("tasks_per_node", 1)
            gpus = p.get("visible_gpus", ()) or range(p.get("gpus_per_node", 0))
            env = dict(os.environ, SUBMITIT_LOCAL_NTASKS=str(ntasks), SUBMITIT_LOCAL_COMMAND=command,
                       SUBMITIT_LOCAL_TIMEOUT_S=str(int(60 * p.get("timeout_min", 2.0))),
                       SUBMITIT_LOCAL_SIGNAL_DELAY_S=str(int(p.get("signal_delay_s", 30))),
                       SUBMITIT_LOCAL_NODEID="0", SUBMITIT_LOCAL_JOB_NUM_NODES="1",
                       SUBMITIT_STDERR_TO_STDOUT="1" if p.get("stderr_to_stdout", False) else "",
                       SUBMITIT_EXECUTOR="local", SUBMITIT_LOCAL_WITH_SHELL="",
                       CUDA_VISIBLE_DEVICES=",".join(str(k) for k in list(gpus)[:p.get("gpus_per_node", 0)]))
            process = subprocess.Popen([sys.executable, "-m", CONTROLLER, str(self.folder)], env=env)
            return LocalJob(folder=self.folder, job_id=str(process.pid), process=process, tasks=list(range(ntasks)))

    return RecordingLocalExecutor


def _submit_ignoring_sigint(ex, fn):
    """Start a local job with SIGINT ignored, which its processes inherit: a Ctrl-C in this
    terminal then reaches the training process (it stops at a step boundary and checkpoints)
    but not submitit's controller, whose own handling would kill the training mid-checkpoint."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return ex.submit(fn)
    finally:
        signal.signal(signal.SIGINT, previous)


def job_alive(pid: int | None) -> bool:
    """Whether ``pid`` is a live local job: a process, not a zombie, and a submitit one (its
    controller, ours or submitit's own: a recycled pid is not our job). A process caught in exec has an empty cmdline for a moment: alive."""
    if not pid or not pid_alive(pid):
        return False
    proc = Path(f"/proc/{pid}")
    try:
        cmdline = (proc / "cmdline").read_bytes()
        if not cmdline:  # a zombie, or a process caught in exec (its new argv not set yet)
            return (proc / "stat").read_text().rpartition(")")[2].split()[0] != "Z"
        return b"submitit" in cmdline or CONTROLLER.encode() in cmdline
    except (OSError, IndexError):
        return True


def stop(pids: list[int], grace_s: float = STOP_GRACE_S) -> None:
    """TERM to each local job's submitit controller, which passes it on to its job's process
    (that one checkpoints and exits); after ``grace_s`` (one deadline for all of them) whatever is
    left of their process trees is killed."""
    tree = [p for pid in pids for p in process_tree(pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace_s
    while time.time() < deadline and any(pid_alive(p) and not _zombie(p) for p in tree):
        time.sleep(0.2)
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc (a killed parent must not leave orphans training on)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return True
