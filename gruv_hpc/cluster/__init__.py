"""The cluster subsystem: where jobs run. ``config`` (``SlurmConfig``), ``slurm`` (the Slurm
adapter: sbatch parameters, sacct/squeue parsing), ``sweep`` (grids of training runs),
``preprocess`` (dataset builds as job arrays) and ``pipeline`` (preprocess -> train -> analyze).
It stands on ``gruv_hpc.dataset`` and ``gruv_hpc.training``.
"""
