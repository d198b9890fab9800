"""The Slurm job: a thin submitit Checkpointable around ``trainer.main`` (DINO/MAE style).

On the timeout/preemption signal (USR2 by default, ``signal_delay_s`` before the end; submitit's
``SUBMITIT_PREEMPT_SIGNAL`` names another) the handler only sets a flag. The training loop sees it
between two optimizer steps, writes a consistent checkpoint, and returns; then submitit's own
handler requeues the job. The requeued job calls ``trainer.main`` again, which resumes from the
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
from typing import Callable, NoReturn

import submitit

# How long a rank other than 0 waits, after the preemption stop, for rank 0's requeue to end its
# task: the requeue takes a second or two (scontrol requeue, then Slurm ends every task).
REQUEUE_WAIT_S = 120.0


def after_stop(result: dict, rank: int, sig: signal.Signals, requeue: Callable | None,
               wait_s: float = REQUEUE_WAIT_S) -> NoReturn:
    """What a task does once the run stopped with its checkpoint written. On the preemption
    signal rank 0 calls submitit's handler (``checkpoint()`` -> ``scontrol requeue`` -> exit),
    which ends every task of the job; the other ranks wait for that, at most ``wait_s``, and then
    fail naming rank 0: neither a 'success' result for an unfinished run nor a task left waiting
    until the time limit. A cancel (TERM, INT, HUP) ends every rank at once: resubmitting resumes."""
    from gruv_hpc.errors import TrainingError
    from gruv_hpc.training.jobcontrol import stop_line
    requeues = result["signal"] == sig.name and callable(requeue)
    if rank == 0:
        print(stop_line(result, requeue=requeues), flush=True)  # the run's own log says why it ends here
        if requeues:
            requeue(sig, None)  # checkpoint() -> requeue -> exit; it returns only if it could not
    elif requeues:
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 1.0))
        raise TrainingError(f"rank {rank}: stopped by {result['signal']} at step {result['step']} with a checkpoint, "
                            f"but rank 0 did not requeue the job within {wait_s:.0f} s (its log says why); resubmit "
                            "to resume")
    raise TrainingError(f"stopped by {result['signal']} at step {result['step']} with a checkpoint; resubmit to resume")


@dataclass(frozen=True)
class TrainJob(submitit.helpers.Checkpointable):
    run_dir: str
    config: dict
    threads: int = 0  # 0: the CPUs Slurm gave the task
    hooks: tuple = ()  # epoch-end hooks (training/hooks.py), built by whoever submits the job

    def __call__(self) -> dict:
        import torch

        from gruv_hpc import jobenv
        from gruv_hpc.training import distributed
        from gruv_hpc.training.config import TrainConfig
        from gruv_hpc.config import build
        from gruv_hpc.errors import plain_warnings
        from gruv_hpc.training.jobcontrol import StopFlag, preempt_signal, stop_signals
        from gruv_hpc.training.trainer import main

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
        cfg = build(TrainConfig, self.config)
        with StopFlag().install(stop_signals()) as stop:  # every stop signal, the preemption one included
            result = main(cfg, self.run_dir, stop=stop, hooks=self.hooks)
        if result["status"] == "stopped":  # the handlers before the flag (submitit's) are back
            after_stop(result, env.global_rank, sig, requeue)
        return result

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        # The checkpoint itself was written by the training loop; resuming needs only the run dir,
        # and a resume policy that resumes: resume=never was meant for the first start only.
        if self.config.get("resume") != "never":
            return super().checkpoint(*args, **kwargs)
        return submitit.helpers.DelayedSubmission(dataclasses.replace(self, config={**self.config, "resume": "auto"}))
