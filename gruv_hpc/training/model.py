"""The GRUV model: affine (D->H), recurrent layer(s), affine (H->D).

The recurrent cells (the paper's peephole LSTM and GRU, torch.nn.LSTM for comparison) and their
registry are in gruv_hpc.training.cells: the model asks the registry for the layer of its cell.
"""
from __future__ import annotations

from torch import nn

from gruv_hpc.training import cells


def make_cell(cell: str, input_size: int, hidden: int, recurrence: str = "auto") -> nn.Module:
    return cells.get(cell).make(input_size, hidden, recurrence)


class GRUVModel(nn.Module):
    """affine (D->H), ``layers`` recurrent layers, affine (H->D). Causal: step t sees steps <= t."""

    def __init__(self, dim: int, hidden: int, cell: str = cells.DEFAULT, layers: int = 1, recurrence: str = "auto"):
        super().__init__()
        self.dim, self.hidden, self.cell, self.layers = dim, hidden, cell, layers
        self.inp = nn.Linear(dim, hidden)
        self.rnns = nn.ModuleList(make_cell(cell, hidden, hidden, recurrence) for _ in range(layers))
        self.out = nn.Linear(hidden, dim)

    def forward(self, x, state=None, drop_last: bool = False):
        """x: (B, T, D) -> predictions (B, T, D) of the next block, and the final recurrent state.

        ``drop_last``: x is a whole (B, T + 1, D) window and its last step is dropped after the
        input affine. Training passes its contiguous batch so: x = window[:, :-1] is a strided
        view that the input GEMM would first copy (a batch-sized buffer), while one more row per
        clip in that GEMM costs 1/T of it."""
        z = self.inp(x)
        h, state = self.recur(z[:, :-1] if drop_last else z, state)
        return self.out(h), state

    def recur(self, z, state=None):
        """The recurrent layers alone: (B, T, H) -> top layer's hidden sequence, new state."""
        new_state = []
        for k, rnn in enumerate(self.rnns):
            z, s = rnn(z, None if state is None else state[k])
            new_state.append(s)
        return z, new_state
