"""Grid sweeps: a sweep file expanded into runs, submitted as job arrays (or run locally) through
``gruv_hpc.cluster.scheduler``, then status, cancel and wait. No module here imports torch:
``gruv sweep status`` starts fast.

- ``spec``: the sweep file (runs and their names) and its validation before anything is queued;
- ``state``: SWEEP_DIR/sweep.json (typed records, atomic writes) and the submit lock;
- ``submit``: which runs need a job, and their submission through the executor's scheduler;
- ``status``: one row per run, cancel, preempt, wait;
- ``logs``: a run's job output, every attempt (``gruv sweep logs``).

SWEEP_DIR's layout is ``gruv_hpc.paths.SweepPaths``.
"""
from gruv_hpc.cluster.scheduler import ACTIVE
from gruv_hpc.cluster.slurm import slurm_available
from gruv_hpc.cluster.sweep.spec import Run, Sweep, load_sweep, validate
from gruv_hpc.cluster.sweep.state import JobRecord, RunRecord, SweepState, load_state
from gruv_hpc.cluster.sweep.status import analysis_listing, cancel, format_status, preempt, status, wait
from gruv_hpc.cluster.sweep.submit import plan, submit

__all__ = ["ACTIVE", "JobRecord", "analysis_listing", "Run", "RunRecord", "Sweep", "SweepState", "cancel", "format_status", "load_state",
           "load_sweep", "plan", "preempt", "slurm_available", "status", "submit", "validate", "wait"]
