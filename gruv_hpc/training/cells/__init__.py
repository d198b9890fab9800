"""The recurrent cells, as a registry: one entry per cell holds its factory, how figures show it
(label, colour, order) and its FLOPs per frame for the benchmarks.

Nothing outside this package names a cell: the config validates against ``names()``, the model
builds with ``get(name).make(...)``, the figures, claims and benchmarks ask ``get(name)``.

Adding a cell is one file plus one entry: a module ``cells/<name>.py`` with an ``nn.Module``
whose ``__init__(input_size, hidden, recurrence="auto")`` builds it and whose
``forward(x (B, T, I), state=None)`` returns ``(y (B, T, H), state)``, and one ``register(...)``
below (or, from code outside the package, a ``register`` call of its own: the tests do that).

This module imports no torch: a factory is a lazy ``"module:attr"`` string (or a callable), so
the login node validates configs and the report orders its figures without loading torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from gruv_hpc.errors import ConfigError


@dataclass(frozen=True)
class CellSpec:
    name: str                    # the config's ``cell`` value
    factory: str | Callable      # "module:attr" (imported at first use) or a callable: (input_size, hidden, recurrence)
    label: str                   # how figures, tables and claims name it
    color: str                   # its matplotlib colour in every figure
    order: int                   # its place in figures and tables (low first)
    matmuls: int                 # H x H blocks of each of its input and recurrent matmuls (LSTM 4, GRU 3)
    help: str = ""               # one line for `--help` and the docs

    def make(self, input_size: int, hidden: int, recurrence: str = "auto"):
        """A new layer of this cell (torch is imported here, not before)."""
        f = self.factory
        if isinstance(f, str):
            mod, _, attr = f.partition(":")
            f = getattr(importlib.import_module(mod), attr)
        return f(input_size, hidden, recurrence=recurrence)

    def recurrent_macs(self, hidden: int) -> int:
        """Multiply-adds per frame of the layer's input and recurrent matmuls (H -> kH each)."""
        return 2 * self.matmuls * hidden * hidden

    def flops_per_frame(self, dim: int, hidden: int) -> float:
        """Training FLOPs per frame of the one-layer model: the affine layers, and the recurrent
        layer's matmuls forward and backward (both gradients: 3x the forward)."""
        return affine_flops_per_frame(dim, hidden) + 2 * 3 * self.recurrent_macs(hidden)


def affine_flops_per_frame(dim: int, hidden: int) -> float:
    """The model's affine layers: D->H forward + weight gradient (its input is data); H->D forward
    + both gradients."""
    return 2 * dim * hidden * (2 + 3)


_REGISTRY: dict[str, CellSpec] = {}


def register(spec: CellSpec, replace: bool = False) -> CellSpec:
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"cell {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered cell, in figure order."""
    return tuple(s.name for s in sorted(_REGISTRY.values(), key=lambda s: (s.order, s.name)))


def get(name: str, key: str = "cell") -> CellSpec:
    """The cell called ``name``; an unknown one is a ConfigError naming ``key`` and the valid names."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"{key}: {name!r} is not one of {', '.join(names())}") from None


def order_key(name: str) -> tuple:
    """Sort key for cell names in figures and tables: registry order; a name no longer registered
    (an old run's) goes last, by name, rather than breaking a report."""
    s = _REGISTRY.get(name)
    return (0, s.order, name) if s else (1, 0, name)


def label(name: str) -> str:
    s = _REGISTRY.get(name)
    return s.label if s else str(name).upper()


def color(name: str) -> str | None:
    s = _REGISTRY.get(name)
    return s.color if s else None


def describe() -> str:
    return ", ".join(f"{s.name} ({s.help})" if s.help else s.name for s in map(get, names()))


# The two cells the paper compares: its claims (gruv_hpc/analysis/claims.py) are about these.
PAPER_LSTM = "lstm"
PAPER_GRU = "gru"
DEFAULT = PAPER_LSTM

register(CellSpec("lstm", "gruv_hpc.training.cells.lstm:PeepholeLSTM", label="LSTM", color="tab:blue", order=0,
                  matmuls=4, help="the paper's peephole LSTM"))
register(CellSpec("gru", "gruv_hpc.training.cells.gru:GRU", label="GRU", color="tab:red", order=1,
                  matmuls=3, help="the paper's GRU"))
register(CellSpec("lstm-fused", "gruv_hpc.training.cells.lstm_fused:FusedLSTM", label="LSTM-FUSED",
                  color="tab:green", order=2, matmuls=4, help="torch.nn.LSTM, no peepholes: cuDNN on GPUs"))
