"""``SlurmConfig``: the resources of a job (training, preprocessing, analysis)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from gruv_hpc.config import opt
from gruv_hpc.errors import ConfigError

@dataclass
class SlurmConfig:
    partition: str | None = opt(None, "Slurm partition")
    account: str | None = opt(None, "Slurm account to charge")
    qos: str | None = opt(None, "quality of service")
    constraint: str | None = opt(None, "node feature constraint (e.g. a100)")
    time_min: int = opt(1440, "time limit per job, in minutes; longer runs requeue and resume")
    nodes: int = opt(1, "nodes per run")
    gpus_per_node: int = opt(0, "GPUs per node (one task per GPU)")
    tasks_per_node: int = opt(1, "tasks (training processes) per node")
    cpus_per_task: int = opt(2, "CPUs per task (DataLoader workers + 1)")
    mem_gb: float = opt(4.0, "memory per node, GB")
    array_parallelism: int = opt(64, "at most this many runs of one array at a time")
    signal_delay_s: int = opt(120, "USR2 this many seconds before the time limit: time to checkpoint")
    max_num_timeout: int = opt(1000, "requeues allowed on time limit/preemption (long runs cross many limits)")
    requeue: bool = opt(True, "let Slurm requeue the job on node failure or preemption")
    setup: list[str] = opt([], "shell lines run before training (module load, conda activate ...); on the command "
                           "line one line, or a TOML array of lines", split=False)
    additional: dict = opt({}, "extra sbatch parameters, e.g. {exclude = 'node7'}")

    def validate(self) -> None:
        for k in ("nodes", "tasks_per_node", "cpus_per_task", "array_parallelism", "time_min"):
            if getattr(self, k) < 1:
                raise ConfigError(f"slurm.{k}: must be >= 1, got {getattr(self, k)}")
        if self.gpus_per_node < 0:
            raise ConfigError(f"slurm.gpus_per_node: must be >= 0, got {self.gpus_per_node}")
        if not (math.isfinite(self.mem_gb) and self.mem_gb > 0):
            raise ConfigError(f"slurm.mem_gb: must be a number of GB above 0, got {self.mem_gb}")
        if self.gpus_per_node and self.tasks_per_node != self.gpus_per_node:
            raise ConfigError(f"slurm.tasks_per_node ({self.tasks_per_node}) must equal slurm.gpus_per_node "
                              f"({self.gpus_per_node}): one training process per GPU")
        for k in ("signal_delay_s", "max_num_timeout"):
            if getattr(self, k) < 0:
                raise ConfigError(f"slurm.{k}: must be >= 0, got {getattr(self, k)}")
        if self.signal_delay_s >= self.time_min * 60:
            raise ConfigError(f"slurm.signal_delay_s ({self.signal_delay_s}) must be shorter than the time limit")

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node

