"""The optimizers, as a registry: ``optimizer=NAME`` picks a builder here, and a new optimizer is one
more ``@register`` function (``TrainConfig.validate`` names the registered ones).

Each builder gets the parameters, the lr (a number, or a 0-dim device tensor in the capturable
form), whether every parameter is on CUDA, and whether the capturable form is wanted. It builds
the optimizer with the fewest kernel launches its device allows. On CUDA: the multi-tensor
(foreach) update, one launch per op for all parameters instead of one per parameter (torch's
RMSprop has no fused kernel; Adam's fused one is one launch in all). On the CPU the
per-parameter loop, as it always was (foreach is a GPU optimization there; the CPU runs the
bit-for-bit same arithmetic it always did, which the bitwise-resume tests pin).

This module imports torch only when an optimizer is built: the config's validation reads the
names without it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    build: Callable  # (params, lr, cuda, capturable) -> torch.optim.Optimizer
    capturable: bool  # has a form a CUDA graph can replay with a device lr


OPTIMIZERS: dict[str, OptimizerSpec] = {}


def register(name: str, capturable: bool = True):
    def add(build):
        OPTIMIZERS[name] = OptimizerSpec(name, build, capturable)
        return build
    return add


@register("rmsprop")
def _rmsprop(params, lr, cuda: bool, capturable: bool):
    import torch
    # Keras' RMSprop (the original code's): rho 0.9, eps 1e-7. torch's alpha is rho.
    return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7, foreach=cuda or capturable, capturable=capturable)


@register("adam")
def _adam(params, lr, cuda: bool, capturable: bool):
    import torch
    return torch.optim.Adam(params, lr=lr, capturable=capturable, **({"fused": True} if cuda else {"foreach": False}))


@register("sgd", capturable=False)
def _sgd(params, lr, cuda: bool, capturable: bool):
    import torch
    return torch.optim.SGD(params, lr=lr, momentum=0.9, foreach=cuda)


def make_optimizer(cfg, params, capturable: bool = False):
    """The optimizer ``cfg.optimizer`` names, over ``params``, at ``cfg.lr``.

    ``capturable``: the form a step replayed from a CUDA graph needs (training/step.py): the step
    counter and the lr (a 0-dim tensor, which ``step.set_lr`` writes) on the device. The same
    update; torch's capturable RMSprop divides by -lr where the other multiplies by it, so the
    weights agree to float32 rounding, not bitwise, with the other form. SGD has no capturable
    form: its lr stays a number (a graph bakes it in, so only a constant lr: config.graph_unsupported)."""
    import torch
    spec = OPTIMIZERS[cfg.optimizer]
    params = list(params)
    cuda = bool(params) and all(p.is_cuda for p in params)
    capturable = capturable and spec.capturable
    lr = torch.tensor(float(cfg.lr), dtype=torch.float32, device=params[0].device) if capturable else cfg.lr
    opt = spec.build(params, lr, cuda, capturable)
    if capturable:  # its steps outside a capture (the warm-up, a partial batch) are meant: not worth torch's warning
        opt._warned_capturable_if_run_uncaptured = True
    return opt
