"""Recurrences as CUDA graphs: what the peephole LSTM's and the GRU's graph paths share.

Per step a recurrence is a handful of small kernels (one matmul, a few pointwise ops): on a GPU
each costs more to launch from Python than to run. A CUDA graph launches the whole loop of T
steps at once. A cell's graphs run the very same code as its eager autograd Function (its
forward and its backward's chain through time, on fixed buffers), so they compute the same
kernels on the same values.

Here: the choice between graph and eager (``recurrence_mode``), one captured function
(``_Graph``; cells call it as ``graphs._Graph``, looked up at call time, so that a test can make
every capture fail), and the per-layer cache of captured shapes (``GraphCache``: captured at a
shape's second use, least recently used dropped, a failure turning graphs off for the process).
A cell supplies its entry (fixed buffers, forward and backward graphs) and its Functions.
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict

import torch

RECURRENCES = ("auto", "graph", "eager")
RECURRENCE_ENV = "GRUV_LSTM_RECURRENCE"   # overrides 'auto' for every graphed cell: eager | graph | auto
GRAPH_MIN_STEPS = 8    # shorter sequences (generation's one-block steps) stay eager
GRAPH_CACHE = 6        # captured shapes kept per layer, least recently used dropped
_graphs_failed = False  # one failed capture turns graphs off for the whole process (warned once)
_inline = 0  # > 0: an outer graph (training/step.py) warms up or captures: the eager Functions, inline


class inline:
    """Inside, every recurrence takes its cell's eager Function, as it does inside an outer
    capture: the whole-step graph's warm-up (training/step.py) then runs the very code its
    capture records, and builds no recurrence graphs that would never be replayed."""

    def __enter__(self):
        global _inline
        _inline += 1

    def __exit__(self, *exc):
        global _inline
        _inline -= 1


def check_recurrence(requested: str) -> str:
    if requested not in RECURRENCES:
        raise ValueError(f"recurrence {requested!r} is not one of {', '.join(RECURRENCES)}")
    return requested


def recurrence_mode(requested: str, device) -> str:
    """'graph' or 'eager'. ``auto`` (overridable by $GRUV_LSTM_RECURRENCE): graphs on CUDA,
    eager elsewhere. An explicit 'graph' on the CPU runs the graph path's buffers and copies
    without capturing (what the CPU tests exercise)."""
    if requested == "auto":
        requested = os.environ.get(RECURRENCE_ENV, "auto") or "auto"
    check_recurrence(requested)
    if requested == "auto":
        requested = "graph" if torch.device(device).type == "cuda" else "eager"
    return "eager" if _graphs_failed else requested


class _Graph:
    """``fn`` (no arguments; reads and writes fixed tensors) captured as a CUDA graph, or, with
    ``capture=False``, simply called: the same code path without the capture."""

    def __init__(self, fn, device, capture: bool):
        self.fn, self.graph, self.out = fn, None, None
        if not capture:
            return
        with torch.cuda.device(device), torch.no_grad():
            # Warm-up on a side stream: lazy initialisation (cuBLAS handles, workspaces) must not
            # happen inside the capture.
            side, cur = torch.cuda.Stream(device), torch.cuda.current_stream(device)
            side.wait_stream(cur)
            with torch.cuda.stream(side):
                fn()
            cur.wait_stream(side)
            g = torch.cuda.CUDAGraph()
            # thread_local: another thread's CUDA calls (a DDP/NCCL watchdog) cannot spoil the capture.
            with torch.cuda.graph(g, capture_error_mode="thread_local"):
                self.out = fn()
            self.graph = g

    def run(self):
        if self.graph is None:
            with torch.no_grad():
                return self.fn()
        self.graph.replay()
        return self.out


class GraphedFunction(torch.autograd.Function):
    """A cell's eager Function with both loops replayed from a graph entry's graphs. The entry's
    ``forward(*inputs, keep)`` returns the outputs and the tensors the backward needs (copies);
    its ``backward(*saved, *grads)`` the inputs' gradients. Should capturing the backward fail,
    the cell's eager backward runs from the same saved tensors."""

    @staticmethod
    def forward(ctx, runner, entry, *inputs):
        *outs, saved = entry.forward(*inputs, keep=True)
        ctx.runner, ctx.entry = runner, entry
        ctx.save_for_backward(*runner.weights(*inputs), *saved)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        try:
            grads = ctx.entry.backward(*saved, *grads)
        except Exception as e:  # capturing the backward failed: the eager backward, from the same saved tensors
            ctx.runner.fail(e)
            grads = ctx.runner.eager_backward(*saved, *grads)
        return None, None, *grads


class GraphCache:
    """A layer's captured graphs, one entry per (shape, dtype, device[, address of U]), and the
    call that runs a recurrence from them or from the cell's eager Function.

    A shape is captured at its second use: a shape met once (a refeed step, the last partial dev
    batch) never pays for a capture. Short sequences (< GRAPH_MIN_STEPS), nested captures and
    everything after a failed capture (warned once) take the cell's eager Function. A cell's
    subclass says what an entry is (``build``), its eager ``function`` and ``eager_backward``,
    the ``weights`` among the inputs that its backward reads, and names the cell (``what``)."""

    what = "recurrence"
    function: type[torch.autograd.Function]

    @staticmethod
    def eager_backward(*saved_and_grads):
        raise NotImplementedError

    def weights(self, *inputs) -> tuple:
        raise NotImplementedError

    def alias_key(self, *inputs):
        return None  # keyed by U's address (the first weight)

    def __call__(self, *inputs, alias_u: bool = False):
        """The recurrence's outputs; ``alias_u``: its weights are the layer's parameters (read in place)."""
        e = self.entry(*inputs, alias_u=alias_u, alias_key=self.alias_key(*inputs))
        if e is None:
            return self.function.apply(*inputs)
        if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
            return GraphedFunction.apply(self, e, *inputs)
        return e.forward(*inputs, keep=False)[:-1]

    def __init__(self, capture: bool = True, max_entries: int = GRAPH_CACHE, min_steps: int = GRAPH_MIN_STEPS):
        self.capture, self.max_entries, self.min_steps = capture, max_entries, min_steps
        self.entries: OrderedDict = OrderedDict()
        self.seen: OrderedDict = OrderedDict()
        self.captures = 0  # graphs captured (or, without capture, entries built): for tests and benchmarks

    def __deepcopy__(self, memo):  # a copied model starts without graphs (they hold CUDA state)
        return type(self)(self.capture, self.max_entries, self.min_steps)

    def __getstate__(self):
        return {"capture": self.capture, "max_entries": self.max_entries, "min_steps": self.min_steps}

    def __setstate__(self, st):
        self.__init__(**st)

    def fail(self, err: BaseException) -> None:
        global _graphs_failed
        if not _graphs_failed:
            warnings.warn(f"{self.what}: capturing the recurrence as a CUDA graph failed "
                          f"({type(err).__name__}: {err}); using the eager recurrence from now on",
                          RuntimeWarning, stacklevel=3)
        _graphs_failed = True
        self.entries.clear()

    def build(self, capture: bool, *args, alias_u: bool):
        raise NotImplementedError

    def entry(self, xp, u, *rest, alias_u: bool, alias_key=None):
        """The entry for this call's shape (built at the shape's second use), or None: eager.
        ``alias_u``: the entry reads the weights in place, so it is also keyed by their address
        (``alias_key``, by default U's)."""
        if _graphs_failed or _inline or xp.shape[0] < self.min_steps:
            return None
        capture = self.capture and xp.is_cuda
        if capture and torch.cuda.is_current_stream_capturing():
            return None
        key = (tuple(xp.shape), xp.dtype, str(xp.device),
               (u.data_ptr() if alias_key is None else alias_key) if alias_u else None)
        e = self.entries.get(key)
        if e is not None:
            self.entries.move_to_end(key)
            return e
        self.seen[key] = n = self.seen.pop(key, 0) + 1
        while len(self.seen) > 64:
            self.seen.popitem(last=False)
        if n < 2:
            return None
        try:
            with torch.no_grad():  # the fixed buffers are never part of an autograd graph
                e = self.build(capture, xp, u, *rest, alias_u=alias_u)
        except Exception as err:
            self.fail(err)
            return None
        self.captures += 1
        self.entries[key] = e
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
        return e
