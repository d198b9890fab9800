"""The learning rate as a pure function of the optimizer step (nanoGPT's ``get_lr``).

The step is checkpointed, so a resumed run continues the schedule exactly where it was; nothing
else is. The schedule's shape is fixed by keys that are not runtime keys (``lr_horizon_epochs``,
``lr_step_epochs``, ...): raising ``epochs`` on a resubmission continues a run without bending
its schedule. ``constant`` (the paper's setting) is the default.
"""
from __future__ import annotations

import math


def _constant(cfg, epoch: float) -> float:
    return cfg.lr


def _cosine(cfg, epoch: float) -> float:
    # Half a cosine from lr down to lr * lr_min_ratio over lr_horizon_epochs, then flat.
    t = min(epoch / cfg.lr_horizon_epochs, 1.0)
    return cfg.lr * (cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _step(cfg, epoch: float) -> float:
    # lr times lr_gamma after every lr_step_epochs whole epochs.
    return cfg.lr * cfg.lr_gamma ** math.floor(epoch / cfg.lr_step_epochs)


SCHEDULES = {"constant": _constant, "cosine": _cosine, "step": _step}


def lr_at(cfg, step: int, steps_per_epoch: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of a run with ``steps_per_epoch``
    steps an epoch (fixed for a run: it follows from the dataset, batch_size and
    limit_train_batches, none of them runtime keys)."""
    return SCHEDULES[cfg.lr_schedule](cfg, step / steps_per_epoch)
