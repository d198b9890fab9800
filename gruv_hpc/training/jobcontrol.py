"""Job control: how a training run is told to stop, and what it says when it does.

A stop signal (TERM, INT, HUP, or the preemption signal, USR2 unless submitit's
``SUBMITIT_PREEMPT_SIGNAL`` names another) only sets a ``StopFlag``; the loop sees it between
two optimizer steps, writes a checkpoint and returns "stopped". The entry points (``gruv train``,
``training.job.TrainJob``) install the flag and restore the handlers before it when the run
returns, and print ``stop_line``; ``EXIT_STOPPED`` is the exit status of such a stop.
"""
from __future__ import annotations

import os
import signal

from gruv_hpc.errors import ConfigError


# Exit status of a run stopped by a signal after writing its checkpoint: sysexits' EX_TEMPFAIL,
# "temporary failure, try again" (running the same command again resumes).
EXIT_STOPPED = 75


def stop_line(res: dict, requeue: bool) -> str:
    """What a stopped run says in its own log (stdout: the job's log file), from ``main``'s
    "stopped" result: which signal, where in training, the checkpoint written, and whether a
    requeue follows (the preemption signal under submitit) or the process just exits."""
    sig = res.get("signal") or "request"
    sig = sig[3:] if sig.startswith("SIG") else sig
    return (f"stop signal {sig} at epoch {res['epoch'] + 1} batch {res['pos']}: checkpoint step {res['step']} written, "
            + ("exiting for requeue" if requeue else "exiting"))


def preempt_signal() -> signal.Signals:
    """The preemption signal: USR2, or what SUBMITIT_PREEMPT_SIGNAL names (as submitit reads it)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    sig = getattr(signal, "SIG" + name, None)
    if sig is None:
        raise ConfigError(f"SUBMITIT_PREEMPT_SIGNAL={name!r} is not a signal name (e.g. USR2)")
    return sig


def stop_signals() -> list[signal.Signals]:
    """What a job is told to stop with: TERM (scancel, srun, torchrun, kill), INT (Ctrl-C), HUP
    (a closed terminal) and the preemption signal (Slurm's --signal, submitit's requeue)."""
    return list(dict.fromkeys([signal.SIGTERM, signal.SIGINT, signal.SIGHUP, preempt_signal()]))


class StopFlag:
    """Set from a signal handler; the loop checks it between optimizer steps, never inside one,
    so the checkpoint it then writes is always a consistent (model, optimizer, position) state.
    A second signal of the same kind is passed on to the handler that was there before (a second
    Ctrl-C aborts at once), or to the default action when that was "ignore"."""

    def __init__(self):
        self.requested = False
        self.signal: str | None = None
        self._previous: dict = {}

    def request(self, signum=None, frame=None):
        if signum is not None and self.signal == signal.Signals(signum).name:
            previous = self._previous.get(signum)
            if previous in (None, signal.SIG_IGN):
                # None: not set from Python. SIG_IGN: inherited, as a shell's background job (`cmd &`)
                # starts with INT ignored. Either way the abort the first message promised happens.
                previous = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
            signal.signal(signum, previous)
            if callable(previous):
                previous(signum, frame)
            else:
                os.kill(os.getpid(), signum)
            return
        self.requested = True
        self.signal = signal.Signals(signum).name if signum is not None else "request"
        if signum is not None:  # said at once (a Ctrl-C is seen); os.write: safe inside a handler
            os.write(2, f"{self.signal} received: stopping at the next step boundary with a checkpoint "
                        f"(send it again to abort at once)\n".encode())

    def install(self, signals=None) -> "StopFlag":
        for sig in signals or stop_signals():
            self._previous.setdefault(sig, signal.signal(sig, self.request))
        return self

    def restore(self) -> None:
        """Put back the handlers that were there before ``install`` (a later Ctrl-C, after the
        run has returned, is then the caller's again, not a flag nobody reads)."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def __enter__(self) -> "StopFlag":
        return self if self._previous else self.install()

    def __exit__(self, *exc) -> None:
        self.restore()
