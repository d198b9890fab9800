"""The paper's LSTM with diagonal peepholes, eqs. 6-11:

    i = s(W_i x + U_i h' + V_i * c'),  f = s(W_f x + U_f h' + V_f * c')
    c = f * c' + i * tanh(W_c x + U_c h'),  o = s(W_o x + U_o h' + V_o * c),  h = o * tanh(c)

(primes are step t-1; note the output gate peeks at c_t, the others at c_{t-1}). All W terms carry
a bias, as in the original (Keras) implementation.

Speed: the input projections of all timesteps are one matmul; the per-step loop does one baddbmm
and a few fused pointwise ops. The hand-written backward (PeepholeLSTMFunction) precomputes every
gate derivative in a few time-vectorized ops, leaving six small ops per step. On CUDA both loops
are replayed from CUDA graphs (GraphedRecurrence; the machinery is graphs.py).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from gruv_hpc.training.cells import graphs as G


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
# The recurrence as CUDA graphs (the shared machinery: cells/graphs.py)

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
        self.fwd = G._Graph(lambda: _lstm_forward(self.xp, self.u, self.v, self.h0, self.c0), self.device, capture)
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
                self.bwd = G._Graph(lambda: _lstm_backward_steps(self.u, self.v, g, c, tc, dhs, dhT, dcT),
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


class GraphedRecurrence(G.GraphCache):
    """The peephole LSTM layer's captured graphs (graphs.GraphCache): the graphed or the eager
    PeepholeLSTMFunction, called as it is: (xp, u, v, h0, c0) -> hs, h_T, c_T."""

    what = "peephole LSTM"
    function = PeepholeLSTMFunction
    eager_backward = staticmethod(_lstm_backward)

    def weights(self, xp, u, v, h0, c0):
        return u, v

    def build(self, capture, xp, u, v, h0, c0, alias_u):
        return _GraphEntry(xp, u, v, h0, c0, alias_u, capture)


class PeepholeLSTM(nn.Module):
    def __init__(self, input_size: int, hidden: int, fused_backward: bool = True, recurrence: str = "auto"):
        super().__init__()
        G.check_recurrence(recurrence)
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
                if G.recurrence_mode(self.recurrence, x.device) == "graph":
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
