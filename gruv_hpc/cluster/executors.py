"""``--executor``: the one place its values are named and turned into a ``Scheduler``.

- ``auto``: Slurm where a cluster answers (sinfo), else ``local``;
- ``slurm``: job arrays queued with sbatch (``slurm.SlurmScheduler``);
- ``local``: processes on this machine, in the foreground (``local.LocalScheduler``);
- ``debug``: as local, but a sweep runs each job inside the submitting process, one at a time
  (submitit's DebugExecutor: a breakpoint stops there). A dataset build runs as local.

sweep.json and pipeline.json record the resolved kind (never auto) of each job and submission;
``scheduler(kind)`` of a recorded kind answers for those jobs.
"""
from __future__ import annotations

from gruv_hpc.cluster import slurm
from gruv_hpc.cluster.local import LocalScheduler
from gruv_hpc.cluster.scheduler import Scheduler
from gruv_hpc.errors import ConfigError

KINDS = ("auto", "slurm", "local", "debug")
_SCHEDULERS: dict[str, Scheduler] = {}


def resolve(kind: str) -> str:
    """The kind that will run the jobs: auto becomes slurm or local (one sinfo call)."""
    if kind == "auto":
        return "slurm" if slurm.slurm_available() else "local"
    if kind not in KINDS:
        raise ConfigError(f"executor must be one of {', '.join(KINDS)}, not {kind!r}")
    return kind


def scheduler(kind: str) -> Scheduler:
    """The scheduler of ``kind`` (auto resolved first); one instance per kind (they hold no state)."""
    kind = resolve(kind)
    if kind not in _SCHEDULERS:
        _SCHEDULERS[kind] = slurm.SlurmScheduler() if kind == "slurm" else LocalScheduler(inline=kind == "debug")
    return _SCHEDULERS[kind]
