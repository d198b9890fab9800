"""The cluster subsystem: where jobs run. ``scheduler`` (the interface: submit an array, its
dependency, states, cancel, log paths), its two implementations ``slurm`` (sbatch parameters,
sacct/squeue parsing, ``SlurmScheduler``) and ``local`` (``LocalScheduler``), ``executors``
(``--executor`` -> a scheduler), ``config`` (``SlurmConfig``); and what stands on them:
``sweep`` (grids of training runs), ``preprocess`` (dataset builds as job arrays) and
``pipeline`` (preprocess -> train -> analyze; its state in ``pipeline_state``).
It stands on ``gruv_hpc.dataset`` and ``gruv_hpc.training``.
"""
