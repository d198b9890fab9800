"""What the trainer calls at the end of an epoch, handed in by whoever starts the run.

The training loop knows nothing of generation or analysis: an entry point (``gruv train``, the
sweep's ``TrainJob``) builds the hooks it wants and passes them to ``trainer.main``, as torchtitan
hands its trainer a validator. A hook is any callable with a ``name`` that takes an ``EpochEnd``
and returns None or a flat dict of numbers. Those numbers go into the epoch's metrics.jsonl line
under the hook's name (so they survive a resume: the line is in the checkpoint's history) and to
TensorBoard as ``<name>/<key>``; a hook writes anything else (audio, images) through ``writer``.

Hooks run on rank 0 only, after the epoch is evaluated and before its checkpoint is written. They
must draw no random numbers from the global generators (the run's streams are in the
checkpoint): a hook that needs randomness makes its own generator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class EpochEnd:
    """The state of a run at the end of one epoch, as a hook sees it (read only)."""
    epoch: int         # 1-based: the epoch just finished
    epochs: int        # the run's target
    model: Any         # the unwrapped GRUVModel, in train mode: a hook that evaluates sets eval and back
    cfg: Any           # the run's TrainConfig
    device: Any
    dev_set: Any       # the run's dev ClipDataset (raw features; the handle has the statistics)
    writer: Any        # the run's TensorBoard SummaryWriter

    @property
    def final(self) -> bool:
        return self.epoch >= self.epochs


class EpochHook(Protocol):
    name: str

    def __call__(self, end: EpochEnd) -> dict[str, float | None] | None: ...


def run_hooks(hooks, end: EpochEnd, line: dict) -> None:
    """Call each hook; put its numbers in the epoch's line (``line[hook.name]``) and to TensorBoard."""
    for hook in hooks:
        numbers = hook(end)
        if not numbers:
            continue
        clean = {k: (float(v) if v is not None and math.isfinite(float(v)) else None) for k, v in numbers.items()}
        line[hook.name] = clean
        if end.writer is not None:
            for k, v in clean.items():
                if v is not None:
                    end.writer.add_scalar(f"{hook.name}/{k}", v, end.epoch)
