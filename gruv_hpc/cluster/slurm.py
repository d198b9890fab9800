"""Talking to Slurm: pure parsers of its commands' output, the thin calls that produce it, the
sbatch parameters of a job, and ``SlurmScheduler``, the ``scheduler.Scheduler`` they make up.

The parsers take the text and return data; tests feed them recorded output
(tests/test_slurm_parsers.py). The calls are one per question, whatever the size of the sweep,
and answer "nothing known" rather than fail where Slurm is missing or slow.
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

from gruv_hpc.cluster.config import SlurmConfig
from gruv_hpc.cluster.scheduler import ACTIVE, Dependency, JobInfo, Scheduler

__all__ = ["ACTIVE", "JobInfo", "SlurmScheduler", "expand_array_id", "job_states", "max_array_size", "parse_max_array_size",
           "merge_states", "parse_sacct", "parse_squeue", "sbatch_parameters", "sbatch_script", "scancel", "slurm_available"]


# ---------------------------------------------------------------------------------------------
# Parsers

def expand_array_id(jid: str) -> list[str]:
    """'123_[0-3,7%2]' -> ['123_0', ..., '123_3', '123_7'] (the pending tasks of an array, as sacct
    and squeue show them); any other id is returned as is."""
    if "_[" not in jid:
        return [jid]
    base, rng = jid.split("_[", 1)
    rng = rng.rstrip("]").split("%")[0]
    out = []
    for part in rng.split(","):
        a, _, b = part.partition("-")
        out.extend(f"{base}_{i}" for i in range(int(a), int(b or a) + 1))
    return out


def parse_sacct(stdout: str) -> dict[str, JobInfo]:
    """``sacct -n -P -X --duplicates -o JobID,State,ExitCode`` -> {job_id: JobInfo}.

    With --duplicates a requeued job has one row per start, oldest first, each but the last in
    state REQUEUED: the last row is the current state, the others count the requeues."""
    res: dict[str, JobInfo] = {}
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3 or not parts[0]:
            continue
        state = (parts[1].split() or ["UNKNOWN"])[0]
        for j in expand_array_id(parts[0]):
            before = res[j].requeues if j in res else 0
            res[j] = JobInfo(state, before + (state == "REQUEUED"), parts[2])
    return res


def parse_squeue(stdout: str) -> dict[str, JobInfo]:
    """``squeue -h -o '%i|%T|%r'`` -> {job_id: JobInfo(state, reason=...)}. The reason is why a
    pending job waits (Resources, Priority, Dependency, BeginTime, JobHeldUser, PartitionConfig
    ...); squeue says "None" for a job that does not wait, which is ""."""
    res = {}
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0] or not parts[1].strip():
            continue
        reason = parts[2].strip() if len(parts) > 2 else ""
        for j in expand_array_id(parts[0]):
            res[j] = JobInfo(parts[1].strip(), reason="" if reason == "None" else reason)
    return res


def merge_states(sacct: dict[str, JobInfo], squeue: dict[str, JobInfo]) -> dict[str, JobInfo]:
    """One JobInfo per job from both answers. squeue, where it lists a job, is the live truth:
    the controller's own state and pending reason. sacct's record can be stale for seconds or
    longer (it still holds an array's pending row "123_[1-3]" while squeue runs task 1, or a
    requeued job's old row), so it gives only the ended jobs squeue no longer lists, and the
    requeue count and exit code, which squeue does not know."""
    res = dict(sacct)
    for j, live in squeue.items():
        acct = sacct.get(j)
        res[j] = JobInfo(live.state, acct.requeues if acct else 0, acct.exit_code if acct else "", live.reason)
    return res


def parse_max_array_size(config_text: str) -> int | None:
    """MaxArraySize from ``scontrol show config`` (None if it is not there)."""
    for line in config_text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "MaxArraySize":
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


# ---------------------------------------------------------------------------------------------
# Calls

def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def slurm_available() -> bool:
    if not shutil.which("sbatch"):
        return False
    r = _run(["sinfo", "-h", "-o", "%P"], timeout=10)
    return r is not None and r.returncode == 0


def max_array_size() -> int:
    r = _run(["scontrol", "show", "config"], timeout=10)
    n = parse_max_array_size(r.stdout) if r else None
    return 1001 if n is None else n  # Slurm's default


def job_states(job_ids: list[str]) -> dict[str, JobInfo]:
    """{job_id: JobInfo} from one sacct call and one squeue call, whatever the number of jobs
    (an array's tasks are asked for by the array's id), merged by ``merge_states``. sacct is
    asked first, so that squeue's answer is the newer one. Either may be missing or fail: a job
    squeue has forgotten (or every id ended long ago: squeue then fails with "Invalid job id")
    is what sacct says; without accounting, what squeue still lists."""
    if not job_ids:
        return {}
    ids = ",".join(sorted({j.split("_")[0] for j in job_ids}))
    r = _run(["sacct", "-n", "-P", "-X", "--duplicates", "-j", ids, "-o", "JobID,State,ExitCode"], timeout=30)
    q = _run(["squeue", "-h", "-j", ids, "-o", "%i|%T|%r"], timeout=30)
    acct = parse_sacct(r.stdout) if r is not None and r.returncode == 0 else {}
    live = parse_squeue(q.stdout) if q is not None and q.returncode == 0 else {}
    return merge_states(acct, live)


def scancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], check=False)


# ---------------------------------------------------------------------------------------------
# sbatch parameters: the real submission and --dry-run both take them from here

def sbatch_parameters(cfg: SlurmConfig, job_name: str) -> dict:
    """A SlurmConfig as submitit.SlurmExecutor parameters (sbatch options, by submitit's names)."""
    params = dict(job_name=job_name, time=cfg.time_min, nodes=cfg.nodes, ntasks_per_node=cfg.tasks_per_node,
                  cpus_per_task=cfg.cpus_per_task, mem=f"{int(cfg.mem_gb * 1024)}MB",
                  array_parallelism=cfg.array_parallelism, signal_delay_s=cfg.signal_delay_s, setup=list(cfg.setup),
                  # A job whose dependency can never be met (the stage before it failed) is cancelled
                  # by Slurm, not left PENDING (DependencyNeverSatisfied) forever.
                  additional_parameters={"kill-on-invalid-dep": "yes", **({"requeue": True} if cfg.requeue else {}),
                                         **cfg.additional})
    if cfg.gpus_per_node:
        params["gpus_per_node"] = cfg.gpus_per_node
    for k in ("partition", "account", "qos", "constraint"):
        if getattr(cfg, k):
            params[k] = getattr(cfg, k)
    return params


def executor(cfg: SlurmConfig, folder, job_name: str, dependency: str | None = None):
    """submitit's SlurmExecutor with ``cfg``'s sbatch_parameters (those --dry-run prints) and an
    optional ``--dependency``: every submission (a sweep's arrays, a build's tasks and merge, the
    pipeline's analysis job) is configured here."""
    import submitit
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=cfg.max_num_timeout)
    ex.update_parameters(**sbatch_parameters(cfg, job_name), **({"dependency": dependency} if dependency else {}))
    return ex


def sbatch_script(params: dict, folder: Path, n_jobs: int) -> str:
    """The script submitit's SlurmExecutor(folder) with ``params`` sends to sbatch for ``n_jobs``
    jobs submitted in one ``executor.batch()``: a job array, or a plain job when n_jobs is 1.

    submitit has no public way to render it without submitting, and its SlurmExecutor cannot
    even be built where srun is missing (a dry run on a laptop). So this calls its private
    _make_sbatch_string with what SlurmExecutor passes it (its _submitit_command_str, and
    map_count for an array); tests/test_sweep.py checks the result against the file a real
    submission saved."""
    from submitit.slurm.slurm import _make_sbatch_string
    folder = Path(folder).expanduser().absolute()
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    array = {"map_count": n_jobs} if n_jobs > 1 else {}
    return _make_sbatch_string(command=command, folder=folder, **params, **array)


# ---------------------------------------------------------------------------------------------
# The scheduler

class SlurmScheduler(Scheduler):
    """Jobs queued with sbatch (one call per array), their states from one sacct call and one
    squeue call (``job_states``), scancel. The calls above, looked up when called (a
    test may replace one)."""
    kind = "slurm"
    foreground = False
    allocates = True

    def available(self) -> bool:
        return slurm_available()

    def submit(self, fns: Sequence[Callable], cfg: SlurmConfig, folder: Path, name: str,
               after: Dependency | None = None) -> list:
        ex = executor(cfg, folder, name, str(after) if after else None)
        with ex.batch():  # one sbatch call: a job array, or a plain job for one
            jobs = [ex.submit(fn) for fn in fns]
        return jobs

    def states(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        return job_states(list(job_ids))

    def cancel(self, job_ids: Sequence[str]) -> None:
        scancel(list(job_ids))  # scancel of an ended job does nothing: they are not asked about first

    def max_array_size(self) -> int:
        return max(1, max_array_size())

    def script(self, cfg: SlurmConfig, folder: Path, name: str, n_jobs: int, after: Dependency | None = None) -> str:
        return sbatch_script({**sbatch_parameters(cfg, name), **({"dependency": str(after)} if after else {})}, folder,
                             n_jobs)
