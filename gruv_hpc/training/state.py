"""``TrainState``: what a resumed run needs, besides the model and the optimizer, to go on as if
it had never stopped (one part of the checkpoint: ``Trainer.parts``)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields


@dataclass
class TrainState:
    """Everything but the model and the optimizer that a resumed run needs to go on exactly as if
    it had never stopped. The one definition of the checkpoint's training state: ``state_dict``
    and ``load_state_dict`` follow the fields, so a new field is saved and restored by itself."""
    epoch: int = 0                 # epochs finished
    step: int = 0                  # optimizer steps taken
    pos: int = 0                   # batches of the current epoch taken
    best_dev: float = math.inf
    history: list = field(default_factory=list)  # one metrics line per finished epoch
    train_time: float = 0.0        # seconds of training steps (evaluation and checkpoint writes excluded)
    # This rank's own: every rank saves and restores its own values.
    loss_sum: float = 0.0          # train loss summed over this epoch's steps so far
    loss_n: int = 0

    PER_RANK = ("loss_sum", "loss_n")

    def state_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.PER_RANK}

    def rank_state_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.PER_RANK}

    def load_state_dict(self, shared: dict) -> None:
        for f in fields(self):
            if f.name not in self.PER_RANK:
                setattr(self, f.name, shared[f.name])

    def load_rank_state_dict(self, mine: dict) -> None:
        for k in self.PER_RANK:
            setattr(self, k, mine[k])
