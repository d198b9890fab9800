"""What the batch system tells a process about its job: every ``SLURM_*`` variable is read here.

Slurm sets them in each task of a job. Training (threads, ranks), the lock (which job holds it)
and ``gruv tensorboard`` (is this a compute node) ask here, so that another scheduler's variables
would be one module's change. Each function takes the environment (default ``os.environ``),
read at call time, and answers None (or False) outside a Slurm job.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping


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


def restart_count(env: Mapping[str, str] = os.environ) -> int:
    """How often Slurm has requeued this job (SLURM_RESTART_COUNT; 0 outside a requeued job)."""
    v = env.get("SLURM_RESTART_COUNT", "")
    return int(v) if v.isdigit() else 0


def in_job(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process runs inside a job (on a compute node)."""
    return job_id(env) is not None


def cpus_per_task(env: Mapping[str, str] = os.environ) -> int | None:
    """The CPUs the job gave each task (``--cpus-per-task``), or None when it does not say."""
    v = env.get("SLURM_CPUS_PER_TASK", "")
    return int(v) if v.isdigit() and int(v) > 0 else None


@dataclass(frozen=True)
class Tasks:
    """The tasks of a job step started by srun (or submitit): this one's rank among them."""
    rank: int  # SLURM_PROCID
    world: int  # SLURM_NTASKS
    local_rank: int  # SLURM_LOCALID: the rank on this node
    nodelist: str | None  # SLURM_JOB_NODELIST, compressed (node[1-4]): scontrol show hostnames expands it
    job_id: int  # 0 outside a job


def tasks(env: Mapping[str, str] = os.environ) -> Tasks | None:
    """This process's place among its job step's tasks, or None when it is not a Slurm task."""
    if "SLURM_PROCID" not in env:
        return None
    return Tasks(int(env["SLURM_PROCID"]), int(env.get("SLURM_NTASKS", "1")), int(env.get("SLURM_LOCALID", "0")),
                 env.get("SLURM_JOB_NODELIST"), int(env.get("SLURM_JOB_ID", "0")))
