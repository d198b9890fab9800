"""The Slurm job: a thin submitit Checkpointable around ``train.main`` (DINO/MAE style).

On the timeout/preemption signal (USR2 by default, ``signal_delay_s`` before the end; submitit's
``SUBMITIT_PREEMPT_SIGNAL`` names another) the handler only sets a flag. The training loop sees it
between two optimizer steps, writes a consistent checkpoint, and returns; then submitit's own
handler requeues the job. The requeued job calls ``train.main`` again, which resumes from the
newest checkpoint in the run directory: the run directory is the only state. So the job is a
frozen dataclass of its arguments, and submitit's ``Checkpointable.checkpoint`` (resubmit this
object) resubmits exactly them: nothing a run learns can ride along in the pickle.
The one exception: ``resume=never`` is the first start's policy, so ``checkpoint`` resubmits the
job with ``resume=auto``. A job requeued without the signal (``scontrol requeue``, a node
failure) restarts from its original pickle; ``trainer.Trainer.resume`` sees
``SLURM_RESTART_COUNT`` and resumes then too.
"""
from __future__ import annotations

import dataclasses
import signal
import time
from dataclasses import dataclass

import submitit


@dataclass(frozen=True)
class TrainJob(submitit.helpers.Checkpointable):
    run_dir: str
    config: dict
    threads: int = 0  # 0: the CPUs Slurm gave the task

    def __call__(self) -> dict:
        import torch

        from gruv_hpc import jobenv
        from gruv_hpc.training import distributed
        from gruv_hpc.training.config import TrainConfig
        from gruv_hpc.config import build
        from gruv_hpc.errors import TrainingError, plain_warnings
        from gruv_hpc.training.trainer import StopFlag, main, preempt_signal, stop_line, stop_signals

        plain_warnings()  # side effect, stated: the job's log holds the same one-line warnings as a terminal

        env = submitit.JobEnvironment()
        distributed.export_env()  # side effect, stated: torchrun's variables from Slurm's, for every task
        distributed.prefer_huge_pages()  # side effect, stated: before torch's first large allocation
        distributed.flush_denormals()  # side effect, stated: before torch's intra-op threads start
        threads = self.threads or jobenv.cpus_per_task()
        if threads:
            torch.set_num_threads(threads)

        sig = preempt_signal()
        requeue = signal.getsignal(sig)  # submitit's checkpoint-and-requeue handler
        stop = StopFlag().install(stop_signals())  # every stop signal, the preemption one included
        cfg = build(TrainConfig, self.config)
        result = main(cfg, self.run_dir, stop=stop)
        if result["status"] == "stopped":
            if env.global_rank != 0:
                # Rank 0 requeues the whole job, which ends this task too; returning here would
                # write a 'success' result for a run that is not finished.
                while True:
                    time.sleep(60)
            requeues = result["signal"] == sig.name and callable(requeue)
            print(stop_line(result, requeue=requeues), flush=True)  # the run's own log says why it ends here
            if requeues:
                requeue(sig, None)  # checkpoint() -> requeue -> exit
            # Cancelled (TERM, INT, HUP): the checkpoint is written; resubmitting resumes.
            raise TrainingError(f"stopped by {result['signal']} at step {result['step']} with a checkpoint; "
                                "resubmit to resume")
        return result

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        # The checkpoint itself was written by the training loop; resuming needs only the run dir,
        # and a resume policy that resumes: resume=never was meant for the first start only.
        if self.config.get("resume") != "never":
            return super().checkpoint(*args, **kwargs)
        return submitit.helpers.DelayedSubmission(dataclasses.replace(self, config={**self.config, "resume": "auto"}))
