"""The GRUV model: affine (D->H), recurrent layer(s), affine (H->D).

Cells:
  lstm        the paper's LSTM with diagonal peepholes, eqs. 6-11:
                i = s(W_i x + U_i h' + V_i * c'),  f = s(W_f x + U_f h' + V_f * c')
                c = f * c' + i * tanh(W_c x + U_c h'),  o = s(W_o x + U_o h' + V_o * c),  h = o * tanh(c)
              (primes are step t-1; note the output gate peeks at c_t, the others at c_{t-1})
  gru         the paper's GRU, eqs. 2-5:
                z = s(W_z x + U_z h'),  r = s(W_r x + U_r h'),  n = tanh(W x + U (r * h')),  h = (1 - z) h' + z n
  lstm-fused  torch.nn.LSTM (no peepholes; cuDNN on GPUs), for speed comparisons.
All W terms carry a bias, as in the original (Keras) implementation.

Speed: the input projections of all timesteps are one matmul; the per-step loop does one addmm
and a few fused pointwise ops. The peephole LSTM has a hand-written backward (PeepholeLSTMFunction)
that precomputes every gate derivative in a few time-vectorized ops, leaving six small ops per step.
"""
from __future__ import annotations

import math
import os
import warnings
from collections import OrderedDict

import torch
from torch import nn

from gruv_hpc.training.config import CELLS  # noqa: F401  (re-exported)


def _lstm_forward(xp, u, v, h0, c0):
    """The peephole recurrence (see PeepholeLSTMFunction). Returns what the backward needs:
    gates (T, 4, B, H) after their nonlinearity, cs and hs (T + 1, B, H) with c_0, h_0 first,
    and tanh(c_t) (T, B, H). Every per-step op writes into a buffer allocated before the loop."""
    T, _, B, H = xp.shape
    kw = dict(dtype=xp.dtype, device=xp.device)
    ut = u.transpose(1, 2)
    vif = v[:2].unsqueeze(1)  # (2, 1, H)
    gates = torch.empty(T, 4, B, H, **kw)  # i, f, c~, o after their nonlinearity
    cs, hs = torch.empty(T + 1, B, H, **kw), torch.empty(T + 1, B, H, **kw)
    tcs = torch.empty(T, B, H, **kw)  # tanh(c_t), reused by the backward
    g = torch.empty(4, B, H, **kw)
    cs[0], hs[0] = c0, h0
    for t in range(T):
        torch.baddbmm(xp[t], hs[t].expand(4, B, H), ut, out=g)
        gt = gates[t]
        torch.addcmul(g[:2], vif, cs[t], out=gt[:2]).sigmoid_()  # i, f peek at c_{t-1}
        torch.tanh(g[2], out=gt[2])
        c = cs[t + 1]
        torch.mul(gt[1], cs[t], out=c).addcmul_(gt[0], gt[2])
        torch.addcmul(g[3], v[2], c, out=gt[3]).sigmoid_()  # o peeks at c_t
        torch.mul(gt[3], torch.tanh(c, out=tcs[t]), out=hs[t + 1])
    return gates, cs, hs, tcs


def _lstm_backward_steps(u, v, gates, cs, tc, d_hs, d_hT, d_cT):
    """The backward's chain through time: dG (T, 4, B, H), the gradient of the gate
    pre-activations (= of xp), and dh_0, dc_0. ``d_*`` may be None (no gradient flows there)."""
    T, _, B, H = gates.shape
    kw = dict(dtype=gates.dtype, device=gates.device)
    i, f, ct, o = gates.unbind(1)
    c_prev = cs[:-1]
    # Every local derivative, for all timesteps at once; the loop below only chains them.
    A = tc * o * (1 - o)                          # dL/dgo = dh * A
    E = o * (1 - tc * tc) + A * v[2]              # dc += dh * E  (through tanh(c) and o's peephole)
    K = torch.stack([ct * i * (1 - i),            # dgi = dc * K_i
                     c_prev * f * (1 - f),        # dgf = dc * K_f
                     i * (1 - ct * ct)], dim=1)   # dgc = dc * K_c
    F = f + K[:, 0] * v[0] + K[:, 1] * v[1]       # dc_prev = dc * F
    dG = torch.empty(T, 4, B, H, **kw)
    d_hs = d_hs if d_hs is not None else torch.zeros(T, B, H, **kw)
    dh_next = d_hT.clone() if d_hT is not None else torch.zeros(B, H, **kw)
    dc = d_cT.clone() if d_cT is not None else torch.zeros(B, H, **kw)
    tmp = torch.empty(4, B, H, **kw)
    for t in range(T - 1, -1, -1):
        dh = dh_next.add_(d_hs[t])
        dc.addcmul_(dh, E[t])
        torch.mul(dc, K[t], out=dG[t, :3])
        torch.mul(dh, A[t], out=dG[t, 3])
        dc.mul_(F[t])
        dh_next = torch.bmm(dG[t], u, out=tmp).sum(0)
    return dG, dh_next, dc


def _lstm_backward_weights(dG, cs, hs):
    """dU and dV from dG: a few large ops over all timesteps at once (no per-step loop)."""
    T, _, B, H = dG.shape
    c_prev, c = cs[:-1], cs[1:]
    # dU_k = sum_t dG_k(t)^T h_{t-1}: one batched matmul over all timesteps
    dGk = dG.transpose(0, 1).reshape(4, T * B, H)
    du = torch.bmm(dGk.transpose(1, 2), hs[:-1].reshape(1, T * B, H).expand(4, T * B, H))
    dv = torch.stack([(dG[:, 0] * c_prev).sum((0, 1)), (dG[:, 1] * c_prev).sum((0, 1)),
                      (dG[:, 3] * c).sum((0, 1))])
    return du, dv


def _lstm_backward(u, v, gates, cs, hs, tcs, d_hs, d_hT, d_cT):
    dG, dh0, dc0 = _lstm_backward_steps(u, v, gates, cs, tcs, d_hs, d_hT, d_cT)
    du, dv = _lstm_backward_weights(dG, cs, hs)
    return dG, du, dv, dh0, dc0


class PeepholeLSTMFunction(torch.autograd.Function):
    """Peephole LSTM recurrence over precomputed input projections, in a gate-major layout.

    xp: (T, 4, B, H), gates [i, f, c, o]; u: (4, H, H) with u[k] = U_k; v: (3, H) = [V_i, V_f, V_o];
    h0, c0: (B, H). Returns hs (T, B, H), h_T, c_T. Gate-major buffers keep every per-step
    pointwise op on contiguous (B, H) slices, which is most of the per-step cost at small B.
    """

    @staticmethod
    def forward(ctx, xp, u, v, h0, c0):
        T = xp.shape[0]
        gates, cs, hs, tcs = _lstm_forward(xp, u, v, h0, c0)
        ctx.save_for_backward(u, v, gates, cs, hs, tcs)
        return hs[1:], hs[T].clone(), cs[T].clone()

    @staticmethod
    def backward(ctx, d_hs, d_hT, d_cT):
        return _lstm_backward(*ctx.saved_tensors, d_hs, d_hT, d_cT)


# ---------------------------------------------------------------------------------------------
# The recurrence as CUDA graphs
#
# Per step the recurrence is a handful of small kernels (one baddbmm, a few pointwise ops): on a
# GPU each costs more to launch from Python than to run. A CUDA graph launches the whole loop of
# T steps at once. The graphs run the very same code as the eager Function (``_lstm_forward`` and
# ``_lstm_backward_steps`` on fixed buffers), so they compute the same kernels on the same values.

RECURRENCES = ("auto", "graph", "eager")
RECURRENCE_ENV = "GRUV_LSTM_RECURRENCE"   # overrides 'auto': eager | graph | auto
GRAPH_MIN_STEPS = 8    # shorter sequences (generation's one-block steps) stay eager
GRAPH_CACHE = 6        # captured shapes kept per layer, least recently used dropped
_graphs_failed = False  # one failed capture turns graphs off for the whole process (warned once)


def recurrence_mode(requested: str, device) -> str:
    """'graph' or 'eager'. ``auto`` (overridable by $GRUV_LSTM_RECURRENCE): graphs on CUDA,
    eager elsewhere. An explicit 'graph' on the CPU runs the graph path's buffers and copies
    without capturing (what the CPU tests exercise)."""
    if requested == "auto":
        requested = os.environ.get(RECURRENCE_ENV, "auto") or "auto"
    if requested not in RECURRENCES:
        raise ValueError(f"recurrence {requested!r} is not one of {', '.join(RECURRENCES)}")
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


class _GraphEntry:
    """One sequence shape: fixed input buffers, the forward graph, and the backward graph
    (captured at the first backward). Every call copies its inputs in and its results out, so
    a later replay never overwrites a tensor somebody still holds.

    ``alias_u``: the forward reads U straight from the caller's tensor (the layer's parameter,
    updated in place by the optimizer) instead of a copy; the entry is then keyed by its address."""

    def __init__(self, xp, u, v, h0, c0, alias_u: bool, capture: bool):
        self.device, self.capture, self.alias_u = xp.device, capture, alias_u
        self.xp, self.v, self.h0, self.c0 = (torch.empty_like(t) for t in (xp, v, h0, c0))
        self.u = u.detach() if alias_u else torch.empty_like(u)
        self._load(xp, u, v, h0, c0)
        self.fwd = _Graph(lambda: _lstm_forward(self.xp, self.u, self.v, self.h0, self.c0), self.device, capture)
        self.bwd = None

    def _load(self, xp, u, v, h0, c0):
        self.xp.copy_(xp)
        if not self.alias_u:
            self.u.copy_(u)
        self.v.copy_(v)
        self.h0.copy_(h0)
        self.c0.copy_(c0)

    def forward(self, xp, u, v, h0, c0, keep: bool):
        """hs (T, B, H), h_T, c_T, and with ``keep`` the tensors the backward needs (copies)."""
        T = xp.shape[0]
        with torch.no_grad():
            self._load(xp, u, v, h0, c0)
            gates, cs, hs, tcs = self.fwd.run()
            if not keep:
                return hs[1:].clone(), hs[T].clone(), cs[T].clone(), None
            saved = gates.clone(), cs.clone(), hs.clone(), tcs.clone()
            return saved[2][1:], hs[T].clone(), cs[T].clone(), saved

    def backward(self, u, v, gates, cs, hs, tcs, d_hs, d_hT, d_cT):
        with torch.no_grad():
            if self.bwd is None:
                self.b_in = [torch.empty_like(t) for t in (gates, cs, tcs, hs[1:], hs[0], cs[0])]
                self._load_bwd(u, v, gates, cs, tcs, d_hs, d_hT, d_cT)
                g, c, tc, dhs, dhT, dcT = self.b_in
                self.bwd = _Graph(lambda: _lstm_backward_steps(self.u, self.v, g, c, tc, dhs, dhT, dcT),
                                  self.device, self.capture)
            else:
                self._load_bwd(u, v, gates, cs, tcs, d_hs, d_hT, d_cT)
            dG, dh0, dc0 = (t.clone() for t in self.bwd.run())
            du, dv = _lstm_backward_weights(dG, cs, hs)  # large ops: eager, straight into new tensors
            return dG, du, dv, dh0, dc0

    def _load_bwd(self, u, v, gates, cs, tcs, d_hs, d_hT, d_cT):
        if not self.alias_u:
            self.u.copy_(u)
        self.v.copy_(v)
        for buf, t in zip(self.b_in, (gates, cs, tcs, d_hs, d_hT, d_cT)):
            buf.zero_() if t is None else buf.copy_(t)


class _GraphedLSTMFunction(torch.autograd.Function):
    """PeepholeLSTMFunction with both loops replayed from a _GraphEntry's graphs."""

    @staticmethod
    def forward(ctx, runner, entry, xp, u, v, h0, c0):
        hs, h, c, saved = entry.forward(xp, u, v, h0, c0, keep=True)
        ctx.runner, ctx.entry = runner, entry
        ctx.save_for_backward(u, v, *saved)
        return hs, h, c

    @staticmethod
    def backward(ctx, d_hs, d_hT, d_cT):
        saved = ctx.saved_tensors
        try:
            grads = ctx.entry.backward(*saved, d_hs, d_hT, d_cT)
        except Exception as e:  # capturing the backward failed: the eager backward, from the same saved tensors
            ctx.runner.fail(e)
            grads = _lstm_backward(*saved, d_hs, d_hT, d_cT)
        return None, None, *grads


class GraphedRecurrence:
    """A layer's captured graphs, one entry per (shape, dtype, device[, address of U]).

    A shape is captured at its second use: a shape met once (a refeed step, the last partial dev
    batch) never pays for a capture. Short sequences (< GRAPH_MIN_STEPS), nested captures and
    everything after a failed capture (warned once) take the eager PeepholeLSTMFunction."""

    def __init__(self, capture: bool = True, max_entries: int = GRAPH_CACHE, min_steps: int = GRAPH_MIN_STEPS):
        self.capture, self.max_entries, self.min_steps = capture, max_entries, min_steps
        self.entries: OrderedDict = OrderedDict()
        self.seen: OrderedDict = OrderedDict()
        self.captures = 0  # graphs captured (or, without capture, entries built): for tests and benchmarks

    def __deepcopy__(self, memo):  # a copied model starts without graphs (they hold CUDA state)
        return GraphedRecurrence(self.capture, self.max_entries, self.min_steps)

    def __getstate__(self):
        return {"capture": self.capture, "max_entries": self.max_entries, "min_steps": self.min_steps}

    def __setstate__(self, st):
        self.__init__(**st)

    def fail(self, err: BaseException) -> None:
        global _graphs_failed
        if not _graphs_failed:
            warnings.warn(f"peephole LSTM: capturing the recurrence as a CUDA graph failed "
                          f"({type(err).__name__}: {err}); using the eager recurrence from now on",
                          RuntimeWarning, stacklevel=3)
        _graphs_failed = True
        self.entries.clear()

    def entry(self, xp, u, v, h0, c0, alias_u: bool) -> _GraphEntry | None:
        if _graphs_failed or xp.shape[0] < self.min_steps:
            return None
        capture = self.capture and xp.is_cuda
        if capture and torch.cuda.is_current_stream_capturing():
            return None
        key = (tuple(xp.shape), xp.dtype, str(xp.device), u.data_ptr() if alias_u else None)
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
                e = _GraphEntry(xp, u, v, h0, c0, alias_u, capture)
        except Exception as err:
            self.fail(err)
            return None
        self.captures += 1
        self.entries[key] = e
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
        return e

    def __call__(self, xp, u, v, h0, c0, alias_u: bool = False):
        e = self.entry(xp, u, v, h0, c0, alias_u)
        if e is None:
            return PeepholeLSTMFunction.apply(xp, u, v, h0, c0)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (xp, u, v, h0, c0)):
            return _GraphedLSTMFunction.apply(self, e, xp, u, v, h0, c0)
        return e.forward(xp, u, v, h0, c0, keep=False)[:3]


class PeepholeLSTM(nn.Module):
    def __init__(self, input_size: int, hidden: int, fused_backward: bool = True, recurrence: str = "auto"):
        super().__init__()
        if recurrence not in RECURRENCES:
            raise ValueError(f"recurrence {recurrence!r} is not one of {', '.join(RECURRENCES)}")
        self.hidden = hidden
        self.recurrence = recurrence  # auto | graph | eager: see recurrence_mode
        self.graphs = GraphedRecurrence()
        self.w = nn.Linear(input_size, 4 * hidden)            # W_i, W_f, W_c, W_o and biases
        self.u = nn.Parameter(torch.empty(4 * hidden, hidden))  # U_i, U_f, U_c, U_o
        self.v = nn.Parameter(torch.empty(3, hidden))           # diagonal V_i, V_f, V_o
        self.fused_backward = fused_backward
        k = 1 / math.sqrt(hidden)
        nn.init.uniform_(self.u, -k, k)
        nn.init.uniform_(self.v, -k, k)
        with torch.no_grad():  # forget-gate bias 1: remember by default (Gers et al.)
            self.w.bias[hidden:2 * hidden].fill_(1.0)

    def forward(self, x, state=None):
        """x: (B, T, I) -> (B, T, H), (h, c)."""
        B = x.shape[0]
        if state is None:
            z = x.new_zeros(B, self.hidden)
            state = (z, z)
        xp = self.w(x)  # (B, T, 4H): one matmul for every timestep
        if self.fused_backward:
            B, T, H = x.shape[0], x.shape[1], self.hidden
            dtype = torch.float32 if xp.dtype == torch.bfloat16 else xp.dtype  # the recurrence stays fp32
            xp = xp.view(B, T, 4, H).permute(1, 2, 0, 3).to(dtype).contiguous()  # (T, 4, B, H)
            u = self.u.view(4, H, H).to(dtype)
            args = (xp, u, self.v.to(dtype), state[0].to(dtype), state[1].to(dtype))
            with torch.autocast(x.device.type, enabled=False):
                if recurrence_mode(self.recurrence, x.device) == "graph":
                    # alias: U is the parameter itself (no dtype cast), read in place by the graph
                    hs, h, c = self.graphs(*args, alias_u=u.data_ptr() == self.u.data_ptr())
                else:
                    hs, h, c = PeepholeLSTMFunction.apply(*args)
            return hs.transpose(0, 1), (h, c)
        return self._eager(xp.transpose(0, 1), state)

    def _eager(self, xp, state):
        """Plain autograd fallback (and the reference the fused version is tested against)."""
        h, c = state
        H = self.hidden
        out = []
        for t in range(xp.shape[0]):
            g = xp[t] + h @ self.u.t()
            i = torch.sigmoid(g[:, :H] + self.v[0] * c)
            f = torch.sigmoid(g[:, H:2 * H] + self.v[1] * c)
            c = f * c + i * torch.tanh(g[:, 2 * H:3 * H])
            o = torch.sigmoid(g[:, 3 * H:] + self.v[2] * c)
            h = o * torch.tanh(c)
            out.append(h)
        return torch.stack(out, 1), (h, c)


class GRU(nn.Module):
    def __init__(self, input_size: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.w = nn.Linear(input_size, 3 * hidden)              # W_z, W_r, W and biases
        self.u_zr = nn.Parameter(torch.empty(2 * hidden, hidden))  # U_z, U_r
        self.u_n = nn.Parameter(torch.empty(hidden, hidden))       # U
        k = 1 / math.sqrt(hidden)
        nn.init.uniform_(self.u_zr, -k, k)
        nn.init.uniform_(self.u_n, -k, k)

    def forward(self, x, state=None):
        B, H = x.shape[0], self.hidden
        h = x.new_zeros(B, H) if state is None else state
        xp = self.w(x).transpose(0, 1)
        out = []
        for t in range(xp.shape[0]):
            zr = torch.sigmoid(torch.addmm(xp[t, :, :2 * H], h, self.u_zr.t()))
            z, r = zr[:, :H], zr[:, H:]
            n = torch.tanh(torch.addmm(xp[t, :, 2 * H:], r * h, self.u_n.t()))
            h = torch.lerp(h, n, z)  # (1 - z) h + z n
            out.append(h)
        return torch.stack(out, 1), h


class FusedLSTM(nn.Module):
    def __init__(self, input_size: int, hidden: int):
        super().__init__()
        self.rnn = nn.LSTM(input_size, hidden, batch_first=True)

    def forward(self, x, state=None):
        if state is not None:
            state = (state[0].unsqueeze(0), state[1].unsqueeze(0))
        y, (h, c) = self.rnn(x, state)
        return y, (h[0], c[0])


def make_cell(cell: str, input_size: int, hidden: int, recurrence: str = "auto") -> nn.Module:
    if cell == "lstm":
        return PeepholeLSTM(input_size, hidden, recurrence=recurrence)
    if cell == "gru":
        return GRU(input_size, hidden)
    if cell == "lstm-fused":
        return FusedLSTM(input_size, hidden)
    raise ValueError(f"unknown cell {cell!r}; valid: {', '.join(CELLS)}")


class GRUVModel(nn.Module):
    """affine (D->H), ``layers`` recurrent layers, affine (H->D). Causal: step t sees steps <= t."""

    def __init__(self, dim: int, hidden: int, cell: str = "lstm", layers: int = 1, recurrence: str = "auto"):
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
