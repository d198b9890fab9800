"""Talking to Slurm: pure parsers of its commands' output, the thin calls that produce it, the
sbatch parameters of a job, and ``SlurmScheduler``, the ``scheduler.Scheduler`` they make up.

The parsers take the text and return data; tests feed them recorded output
(tests/test_slurm_parsers.py). The calls are one per question, whatever the size of the sweep,
and answer "nothing known" rather than fail where Slurm is missing or slow.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from gruv_hpc.cluster.config import SlurmConfig
from gruv_hpc.cluster.scheduler import ACTIVE, Dependency, JobInfo, Scheduler

__all__ = ["ACTIVE", "JobInfo", "NodeInfo", "PartitionInfo", "SlurmScheduler", "check_request", "cluster_info",
           "expand_array_id", "job_states", "max_array_size", "merge_states", "parse_gres_gpus", "parse_max_array_size", "parse_nodes",
           "parse_partitions", "parse_sacct", "parse_squeue", "parse_time_min", "sbatch_parameters", "sbatch_script",
           "scancel", "slurm_available"]

SKIP_CHECK_ENV = "GRUV_SKIP_RESOURCE_CHECK"  # =1: SlurmScheduler.check asks nothing


def skip_check() -> bool:
    """Whether ``GRUV_SKIP_RESOURCE_CHECK`` asks to skip the check: 1/true/yes/on; unset, empty,
    0/false/no/off do not (=0 skipped it before); anything else is refused by name."""
    from gruv_hpc.errors import ConfigError
    v = os.environ.get(SKIP_CHECK_ENV, "").strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{SKIP_CHECK_ENV}={os.environ[SKIP_CHECK_ENV]!r}: set it to 1 to skip the resource check, "
                      "or unset it")


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


# What a partition's nodes offer, for checking requests before anything is queued (check_request).

@dataclass(frozen=True)
class PartitionInfo:
    name: str
    default: bool = False
    state: str = "UP"
    max_time_min: int | None = None  # None: UNLIMITED
    max_nodes: int | None = None
    max_cpus_per_node: int | None = None
    max_mem_per_node_mb: int | None = None
    total_nodes: int = 0


@dataclass(frozen=True)
class NodeInfo:
    name: str
    cpus: int
    mem_mb: int  # RealMemory: what a job may ask for on it
    gpus: int
    partitions: tuple[str, ...]
    features: tuple[str, ...] = ()
    state: str = ""


def _fields(line: str) -> dict[str, str]:
    """One ``scontrol show ... -o`` line as {Key: value}. Values hold no spaces, except OS=
    (``OS=Linux 6.1 #1 SMP ...``): a word without '=' belongs to the value before it."""
    out: dict[str, str] = {}
    key = None
    for word in line.split():
        k, sep, v = word.partition("=")
        if sep and k and re.fullmatch(r"[A-Za-z_:.]+", k):
            key = k
            out[key] = v
        elif key is not None:
            out[key] += " " + word
    return out


def parse_time_min(text: str) -> int | None:
    """A Slurm time (``MaxTime``, sinfo's ``%l``) in minutes, rounded up: ``UNLIMITED``/``infinite``
    -> None; ``D-HH:MM:SS``, ``D-HH``, ``HH:MM:SS``, ``MM:SS``, ``MM``."""
    t = text.strip()
    if t.upper() in ("UNLIMITED", "INFINITE", "NONE", ""):
        return None
    days, _, rest = t.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    if days:
        h, m, s = (parts + [0, 0, 0])[:3]
    else:
        h, m, s = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return int(days or 0) * 1440 + h * 60 + m + (1 if s else 0)


def parse_gres_gpus(gres: str) -> int:
    """GPUs in a node's ``Gres=`` (``gpu:2``, ``gpu:a100:4(S:0-1)``, ``gpu:a100:2,gpu:v100:1``,
    ``(null)``): the sum of its gpu entries."""
    n = 0
    for item in re.split(r",(?![^(]*\))", gres):
        item = item.split("(")[0].strip()
        parts = item.split(":")
        if parts[0] == "gpu":
            try:
                n += int(parts[-1]) if len(parts) > 1 else 1
            except ValueError:  # gpu:a100 without a count: one
                n += 1
    return n


def _limit(value: str | None) -> int | None:
    if value is None or value.upper() in ("UNLIMITED", "N/A", "NONE", "INFINITE"):
        return None
    try:
        return int(value)
    except ValueError:
        return None


def parse_partitions(text: str) -> dict[str, PartitionInfo]:
    """``scontrol show partition -o`` -> {name: PartitionInfo}."""
    out = {}
    for line in text.splitlines():
        f = _fields(line)
        if "PartitionName" not in f:
            continue
        name = f["PartitionName"]
        out[name] = PartitionInfo(name, f.get("Default") == "YES", f.get("State", "UP"),
                                  parse_time_min(f.get("MaxTime", "UNLIMITED")), _limit(f.get("MaxNodes")),
                                  _limit(f.get("MaxCPUsPerNode")), _limit(f.get("MaxMemPerNode")),
                                  _limit(f.get("TotalNodes")) or 0)
    return out


def parse_nodes(text: str) -> dict[str, NodeInfo]:
    """``scontrol show node -o`` -> {name: NodeInfo}. CPUs are CPUEfctv where Slurm gives it (the
    CPUs jobs may use: CPUTot less the specialized ones), else CPUTot."""
    out = {}
    for line in text.splitlines():
        f = _fields(line)
        if "NodeName" not in f:
            continue
        feats = f.get("AvailableFeatures", "(null)")
        out[f["NodeName"]] = NodeInfo(
            f["NodeName"], _limit(f.get("CPUEfctv")) or _limit(f.get("CPUTot")) or 0, _limit(f.get("RealMemory")) or 0,
            parse_gres_gpus(f.get("Gres", "(null)")), tuple(p for p in f.get("Partitions", "").split(",") if p),
            tuple(x for x in feats.split(",") if x and feats != "(null)"), f.get("State", ""))
    return out


def check_request(cfg: SlurmConfig, partitions: dict[str, PartitionInfo], nodes: dict[str, NodeInfo],
                  where: str = "slurm") -> str | None:
    """Why the job ``cfg`` asks for could never start in its partition (one line, naming the
    resource and the limit), or None when some node of it offers everything at once: CPUs
    (cpus_per_task x tasks_per_node), memory, GPUs, the time limit and the node count."""
    if not partitions:
        return None
    name = cfg.partition or next((p.name for p in partitions.values() if p.default), None)
    if name is None:
        return f"{where}: no partition given and the cluster has no default one; set partition to one of: " \
               f"{', '.join(sorted(partitions))}"
    part = partitions.get(name)
    if part is None:
        return f"{where}: partition={name} does not exist; partitions: {', '.join(sorted(partitions))}"
    members = [n for n in nodes.values() if name in n.partitions]
    if cfg.constraint and re.fullmatch(r"[\w.-]+", cfg.constraint):  # a plain feature (not an expression)
        with_feature = [n for n in members if cfg.constraint in n.features]
        if not with_feature:
            return f"{where}: constraint={cfg.constraint} but no node of partition {name} has that feature"
        members = with_feature
    if not members:
        return f"{where}: partition {name} has no nodes"
    cpus = cfg.cpus_per_task * cfg.tasks_per_node
    mem = int(cfg.mem_gb * 1024)  # MB, as sbatch_parameters asks
    ask_cpus = f"cpus_per_task={cfg.cpus_per_task}" + (f" x tasks_per_node={cfg.tasks_per_node} = {cpus} CPUs"
                                                        if cfg.tasks_per_node > 1 else "")
    for ok, why in (  # GPUs first: asking for more GPUs also asks for more tasks, hence CPUs
        (cfg.gpus_per_node <= max(n.gpus for n in members),
         f"gpus_per_node={cfg.gpus_per_node} but partition {name}'s largest node has {max(n.gpus for n in members)} "
         f"GPUs"),
        (cpus <= max(n.cpus for n in members), f"{ask_cpus} but partition {name}'s largest node has "
                                                f"{max(n.cpus for n in members)} CPUs"),
        (part.max_cpus_per_node is None or cpus <= part.max_cpus_per_node,
         f"{ask_cpus} but partition {name} allows {part.max_cpus_per_node} CPUs per node (MaxCPUsPerNode)"),
        (mem <= max(n.mem_mb for n in members), f"mem_gb={cfg.mem_gb:g} ({mem} MB) but partition {name}'s largest "
                                                f"node has {max(n.mem_mb for n in members)} MB"),
        (part.max_mem_per_node_mb is None or mem <= part.max_mem_per_node_mb,
         f"mem_gb={cfg.mem_gb:g} ({mem} MB) but partition {name} allows {part.max_mem_per_node_mb} MB per node "
         f"(MaxMemPerNode)"),
        (part.max_time_min is None or cfg.time_min <= part.max_time_min,
         f"time_min={cfg.time_min} but partition {name}'s time limit is {part.max_time_min} min (MaxTime)"),
        (part.max_nodes is None or cfg.nodes <= part.max_nodes,
         f"nodes={cfg.nodes} but partition {name} allows {part.max_nodes} per job (MaxNodes)"),
    ):
        if not ok:
            return f"{where}: {why}"
    fit = [n for n in members if n.cpus >= cpus and n.mem_mb >= mem and n.gpus >= cfg.gpus_per_node]
    if len(fit) < cfg.nodes:
        return (f"{where}: nodes={cfg.nodes} of {cpus} CPUs, {mem} MB and {cfg.gpus_per_node} GPUs each, but partition "
                f"{name} has {len(fit)} node(s) with all of that at once")
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


def cluster_info() -> tuple[dict[str, PartitionInfo], dict[str, NodeInfo]] | None:
    """The partitions and nodes (two scontrol calls), or None where Slurm does not answer."""
    rp = _run(["scontrol", "show", "partition", "-o"], timeout=15)
    rn = _run(["scontrol", "show", "node", "-o"], timeout=15)
    if rp is None or rn is None or rp.returncode or rn.returncode:
        return None
    return parse_partitions(rp.stdout), parse_nodes(rn.stdout)


def scancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], check=False)


# The preemption signal submitit's jobs take (SUBMITIT_PREEMPT_SIGNAL in the job's environment
# may name another; the sweeps' jobs never set it).
PREEMPT_SIGNAL = "USR2"
# scancel --signal to a job in a transitional state (completing, just requeued) does not fail: it
# retries, 5 s, 6 s, 7 s ..., for about 95 s, and delivers the signal once the job runs again: a
# second preemption (docs/cluster.md). A job checked RUNNING takes it at once; one that does not
# within this time is given up on, and scancel is killed before it could deliver anything.
SIGNAL_WAIT_S = 4.0


def signal_once(job_id: str, sig: str) -> str:
    """``scancel --signal=SIG JOB``, killed unless it returns within SIGNAL_WAIT_S: at most one
    delivery, and never a late one. Returns what happened, as one line; raises GruvError when
    nothing was delivered."""
    from gruv_hpc.errors import GruvError
    r = _run(["scancel", f"--signal={sig}", job_id], timeout=SIGNAL_WAIT_S)
    if r is None:
        raise GruvError(f"scancel --signal={sig} {job_id} did not return within {SIGNAL_WAIT_S:g} s (Slurm retries a "
                        "job in a transitional state, such as one being requeued) and was stopped: nothing was sent; "
                        "try again when the run shows RUNNING")
    if r.returncode:
        why = (r.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise GruvError(f"scancel --signal={sig} {job_id} failed: {why}")
    return f"sent {sig} to job {job_id}"


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

    def preempt(self, job_id: str) -> str:
        """USR2 to a RUNNING job's steps, once (``signal_once``)."""
        from gruv_hpc.errors import GruvError
        info = job_states([job_id]).get(job_id)
        if info is None or info.state != "RUNNING":
            state = info.state if info else "unknown to Slurm"
            then = ("; try again when gruv sweep status shows it RUNNING" if info and info.state in ACTIVE
                    else "; it has ended" if info else "")
            raise GruvError(f"job {job_id} is {state}, not RUNNING: only a running job takes the preemption signal{then}")
        return signal_once(job_id, PREEMPT_SIGNAL)

    def check(self, requests: dict) -> str:
        """Each of ``requests`` ({where: SlurmConfig}) against its partition's nodes (one scontrol
        question for all); raises ConfigError naming the first that could never start."""
        from gruv_hpc.errors import ConfigError
        if skip_check():  # nodes this cluster starts on demand, unknown to scontrol yet
            return f"resource check skipped: {SKIP_CHECK_ENV} is set"
        info = cluster_info()
        if info is None:
            return "resource check skipped: Slurm does not answer here (scontrol)"
        parts, nodes = info
        for where, cfg in requests.items():
            why = check_request(cfg, parts, nodes, where)
            if why:
                raise ConfigError(why)
        names = sorted({cfg.partition or next((p.name for p in parts.values() if p.default), "?")
                        for cfg in requests.values()})
        return f"resources checked against partition(s) {', '.join(names)}: {len(requests)} request(s) fit"

    def max_array_size(self) -> int:
        return max(1, max_array_size())

    def script(self, cfg: SlurmConfig, folder: Path, name: str, n_jobs: int, after: Dependency | None = None) -> str:
        return sbatch_script({**sbatch_parameters(cfg, name), **({"dependency": str(after)} if after else {})}, folder,
                             n_jobs)
