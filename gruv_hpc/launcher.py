"""The Slurm job: a thin submitit Checkpointable around ``train.main`` (DINO/MAE style).

On the timeout/preemption signal (USR2, ``signal_delay_s`` before the end) the handler only sets
a flag. The training loop sees it between two optimizer steps, writes a consistent checkpoint, and
returns; then submitit's own handler requeues the job. The requeued job calls ``train.main``
again, which resumes from the newest checkpoint in the run directory: the run directory is the
only state, so ``checkpoint()`` needs nothing but the same arguments.
"""
from __future__ import annotations

import os
import signal
import time

import submitit


class TrainJob(submitit.helpers.Checkpointable):
    def __init__(self, run_dir: str, config: dict, threads: int = 0):
        self.run_dir = run_dir
        self.config = config
        self.threads = threads

    def __call__(self) -> dict:
        import torch

        from .config import TrainConfig, build
        from .train import StopFlag, main

        env = submitit.JobEnvironment()
        if env.num_tasks > 1 and "RANK" not in os.environ:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        threads = self.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0"))
        if threads:
            torch.set_num_threads(threads)

        stop = StopFlag()
        requeue = signal.getsignal(signal.SIGUSR2)  # submitit's checkpoint-and-requeue handler
        signal.signal(signal.SIGUSR2, lambda signum, frame: stop.request())
        cfg = build(TrainConfig, self.config)
        result = main(cfg, self.run_dir, stop=stop)
        if result["status"] == "stopped":
            if env.global_rank != 0:
                # Rank 0 requeues the whole job, which ends this task too; returning here would
                # write a 'success' result for a run that is not finished.
                while True:
                    time.sleep(60)
            if callable(requeue):
                requeue(signal.SIGUSR2, None)  # checkpoint() -> requeue -> exit
            raise RuntimeError("training stopped on request but no requeue handler was installed")
        return result

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        # The checkpoint itself was written by the training loop; resuming needs only the run dir.
        return submitit.helpers.DelayedSubmission(type(self)(self.run_dir, self.config, self.threads))
