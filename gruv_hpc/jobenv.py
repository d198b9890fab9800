"""What the batch system or launcher tells a process about its job: every ``SLURM_*`` variable is read here.

One small class per backend (after Lightning's ``SLURMEnvironment`` and submitit's
``JobEnvironment``): ``Slurm`` (a task started by srun or submitit), ``Torchrun`` (torchrun's
variables, or the ones ``distributed.export_env`` derived from Slurm's) and ``Local`` (one plain
process). Each detects itself from the environment and gives the ranks, the node rank, the tasks
on this node (LOCAL_WORLD_SIZE), the main address and port, and the restart count; ``detect``
picks the first that matches. Slurm's compressed node lists (``node[01-04,07],gpu-a[1-2]``) are
expanded here in Python (``expand_nodelist``): training never calls ``scontrol``.

Training (threads, ranks), the lock (which job holds it) and ``gruv tensorboard`` (is this a
compute node) ask here, so that another scheduler's variables would be one module's change. Each
function takes the environment (default ``os.environ``), read at call time.
"""
from __future__ import annotations

import itertools
import os
import re
import socket
from dataclasses import dataclass
from typing import ClassVar, Mapping

from gruv_hpc.errors import ConfigError


def job_id(env: Mapping[str, str] = os.environ) -> str | None:
    """The job's id (an array task has one of its own), or None outside a job."""
    return env.get("SLURM_JOB_ID") or None


def task_job_id(env: Mapping[str, str] = os.environ) -> str | None:
    """The id squeue and sacct show: ``ARRAY_TASK`` for an array task (what a sweep records),
    else the job id."""
    job = job_id(env)
    if job and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env.get('SLURM_ARRAY_JOB_ID', job)}_{env['SLURM_ARRAY_TASK_ID']}"
    return job


def in_job(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process runs inside a job (on a compute node)."""
    return job_id(env) is not None


def cpus_per_task(env: Mapping[str, str] = os.environ) -> int | None:
    """The CPUs the job gave each task (``--cpus-per-task``), or None when it does not say."""
    v = env.get("SLURM_CPUS_PER_TASK", "")
    return int(v) if v.isdigit() and int(v) > 0 else None


def restart_count(env: Mapping[str, str] = os.environ) -> int:
    """How often this run was restarted by its launcher (0 for a first start): see each backend."""
    return detect(env).restart_count


def rendezvous_port(job: int) -> int:
    """The rendezvous port of a Slurm job: the same on every node of the job and across its
    requeues, different for neighbouring jobs (array tasks have job ids of their own)."""
    return 20000 + job % 20000


# ---------------------------------------------------------------------------------------------
# Slurm's host lists

_RANGE = re.compile(r"(\d+)(?:-(\d+))?$")


def _expand_brackets(body: str, whole: str) -> list[str]:
    """``01-04,07`` -> ['01', '02', '03', '04', '07']: a range keeps its first number's width."""
    out = []
    for part in body.split(","):
        m = _RANGE.match(part)
        if not m or (m[2] is not None and int(m[2]) < int(m[1])):
            raise ConfigError(f"Slurm node list {whole!r}: bad range {part!r} in [{body}]")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        out += [str(i).zfill(len(m[1])) for i in range(lo, hi + 1)]
    return out


def _expand_one(name: str, whole: str) -> list[str]:
    """One host expression, brackets anywhere and several of them (``r[1-2]-n[1-3]``: every
    combination, the last bracket varying fastest, as Slurm orders them)."""
    pieces = re.split(r"\[([^\[\]]*)\]", name)  # text, bracket, text, bracket, ..., text
    if any(c in p for p in pieces[::2] for c in "[]"):
        raise ConfigError(f"Slurm node list {whole!r}: unbalanced brackets in {name!r}")
    choices = [[p] if i % 2 == 0 else _expand_brackets(p, whole) for i, p in enumerate(pieces)]
    return ["".join(c) for c in itertools.product(*choices)]


def expand_nodelist(nodelist: str) -> list[str]:
    """Slurm's compressed host list (SLURM_JOB_NODELIST) as names, in Slurm's order:
    ``node[01-04,07],gpu-a[1-2]`` -> node01 ... node04, node07, gpu-a1, gpu-a2. What
    ``scontrol show hostnames`` prints, without running it. A malformed list is a ConfigError."""
    names, depth, start = [], 0, 0
    for i, c in enumerate(nodelist + ","):
        depth += {"[": 1, "]": -1}.get(c, 0)
        if depth < 0 or depth > 1:
            raise ConfigError(f"Slurm node list {nodelist!r}: unbalanced brackets")
        if c == "," and depth == 0:
            item = nodelist[start:i].strip()
            if not item:
                raise ConfigError(f"Slurm node list {nodelist!r}: an empty name")
            names += _expand_one(item, nodelist)
            start = i + 1
    if depth:
        raise ConfigError(f"Slurm node list {nodelist!r}: unbalanced brackets")
    return names


def expand_tasks_per_node(spec: str) -> list[int]:
    """SLURM_TASKS_PER_NODE's form, ``2(x3),1`` -> [2, 2, 2, 1]: tasks on each node in order."""
    out = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            raise ConfigError(f"Slurm tasks per node {spec!r}: expected a form like 2(x3),1")
        out += [int(m[1])] * int(m[2] or 1)
    return out


# ---------------------------------------------------------------------------------------------
# One class per backend

def _int(env: Mapping[str, str], key: str, default: int) -> int:
    v = env.get(key, "")
    try:
        return int(v) if v != "" else default
    except ValueError:
        raise ConfigError(f"environment variable {key}={v!r}: expected an integer") from None


@dataclass(frozen=True)
class JobEnv:
    """One process's place in its run."""
    name: ClassVar[str] = ""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  # LOCAL_WORLD_SIZE: the processes on this node (one GPU each)
    node_rank: int = 0
    nodes: int = 1
    main_address: str = "127.0.0.1"  # where rank 0 listens (MASTER_ADDR)
    main_port: int = 29500  # MASTER_PORT
    restart_count: int = 0
    node_name: str = ""  # this node, for messages

    @classmethod
    def detect(cls, env: Mapping[str, str]) -> "JobEnv | None":
        raise NotImplementedError


@dataclass(frozen=True)
class Torchrun(JobEnv):
    """torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK,
    MASTER_ADDR, MASTER_PORT), set by torchrun or by ``distributed.export_env``. Its restart
    count adds torchrun's own restarts and a surrounding Slurm job's requeues: either way the run
    starts again from its run directory."""
    name: ClassVar[str] = "torchrun"

    @classmethod
    def detect(cls, env):
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return None
        world = _int(env, "WORLD_SIZE", 1)
        local_world = _int(env, "LOCAL_WORLD_SIZE", world)  # by hand without it: one node
        return cls(rank=_int(env, "RANK", 0), world=world, local_rank=_int(env, "LOCAL_RANK", 0),
                   local_world=local_world, node_rank=_int(env, "GROUP_RANK", _int(env, "NODE_RANK", 0)),
                   nodes=max(1, world // max(1, local_world)), main_address=env.get("MASTER_ADDR", "127.0.0.1"),
                   main_port=_int(env, "MASTER_PORT", 29500),
                   restart_count=_int(env, "TORCHELASTIC_RESTART_COUNT", 0) + _slurm_restarts(env),
                   node_name=env.get("SLURMD_NODENAME") or socket.gethostname())


def _slurm_restarts(env) -> int:
    v = env.get("SLURM_RESTART_COUNT", "")
    return int(v) if v.isdigit() else 0


@dataclass(frozen=True)
class Slurm(JobEnv):
    """A task of a Slurm job step (srun, or submitit's srun): SLURM_PROCID, SLURM_NTASKS,
    SLURM_LOCALID, SLURM_NODEID, the step's tasks per node and node list. The main address is the
    node list's first name, the port ``rendezvous_port(job id)``; the restart count is
    SLURM_RESTART_COUNT (requeues)."""
    name: ClassVar[str] = "slurm"

    @classmethod
    def detect(cls, env):
        if "SLURM_PROCID" not in env:
            return None
        node_rank = _int(env, "SLURM_NODEID", 0)
        per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
        counts = expand_tasks_per_node(per_node) if per_node else [_int(env, "SLURM_NTASKS", 1)]
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
        return cls(rank=_int(env, "SLURM_PROCID", 0), world=_int(env, "SLURM_NTASKS", 1),
                   local_rank=_int(env, "SLURM_LOCALID", 0),
                   local_world=counts[node_rank] if node_rank < len(counts) else counts[-1],
                   node_rank=node_rank, nodes=len(counts),
                   main_address=expand_nodelist(nodelist)[0] if nodelist else "127.0.0.1",
                   main_port=rendezvous_port(_int(env, "SLURM_JOB_ID", 0)), restart_count=_slurm_restarts(env),
                   node_name=env.get("SLURMD_NODENAME") or socket.gethostname())


@dataclass(frozen=True)
class Local(JobEnv):
    """One process on its own: rank 0 of 1. Its restart count is SLURM_RESTART_COUNT all the
    same: a lone process in a batch script (no srun) of a requeued job is restarted too."""
    name: ClassVar[str] = "local"

    @classmethod
    def detect(cls, env):
        return cls(restart_count=_slurm_restarts(env), node_name=socket.gethostname())


BACKENDS: tuple[type[JobEnv], ...] = (Torchrun, Slurm, Local)  # the first that detects itself wins


def detect(env: Mapping[str, str] = os.environ) -> JobEnv:
    """This process's backend: torchrun's variables first (torchrun under srun is torchrun's
    run), then a Slurm task, else a process on its own."""
    for backend in BACKENDS:
        found = backend.detect(env)
        if found is not None:
            return found
    raise AssertionError("Local always detects itself")
