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

import torch
from torch import nn

from .config import CELLS  # noqa: F401  (re-exported)


class PeepholeLSTMFunction(torch.autograd.Function):
    """Peephole LSTM recurrence over precomputed input projections, in a gate-major layout.

    xp: (T, 4, B, H), gates [i, f, c, o]; u: (4, H, H) with u[k] = U_k; v: (3, H) = [V_i, V_f, V_o];
    h0, c0: (B, H). Returns hs (T, B, H), h_T, c_T. Gate-major buffers keep every per-step
    pointwise op on contiguous (B, H) slices, which is most of the per-step cost at small B.
    """

    @staticmethod
    def forward(ctx, xp, u, v, h0, c0):
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
        ctx.save_for_backward(u, v, gates, cs, hs, tcs)
        return hs[1:], hs[T].clone(), cs[T].clone()

    @staticmethod
    def backward(ctx, d_hs, d_hT, d_cT):
        u, v, gates, cs, hs, tc = ctx.saved_tensors
        T, _, B, H = gates.shape
        kw = dict(dtype=gates.dtype, device=gates.device)
        i, f, ct, o = gates.unbind(1)
        c_prev, c = cs[:-1], cs[1:]
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
        # dU_k = sum_t dG_k(t)^T h_{t-1}: one batched matmul over all timesteps
        dGk = dG.transpose(0, 1).reshape(4, T * B, H)
        du = torch.bmm(dGk.transpose(1, 2), hs[:-1].reshape(1, T * B, H).expand(4, T * B, H))
        dv = torch.stack([(dG[:, 0] * c_prev).sum((0, 1)), (dG[:, 1] * c_prev).sum((0, 1)),
                          (dG[:, 3] * c).sum((0, 1))])
        return dG, du, dv, dh_next, dc


class PeepholeLSTM(nn.Module):
    def __init__(self, input_size: int, hidden: int, fused_backward: bool = True):
        super().__init__()
        self.hidden = hidden
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
            with torch.autocast(x.device.type, enabled=False):
                hs, h, c = PeepholeLSTMFunction.apply(xp, self.u.view(4, H, H).to(dtype), self.v.to(dtype),
                                                      state[0].to(dtype), state[1].to(dtype))
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


def make_cell(cell: str, input_size: int, hidden: int) -> nn.Module:
    if cell == "lstm":
        return PeepholeLSTM(input_size, hidden)
    if cell == "gru":
        return GRU(input_size, hidden)
    if cell == "lstm-fused":
        return FusedLSTM(input_size, hidden)
    raise ValueError(f"unknown cell {cell!r}; valid: {', '.join(CELLS)}")


class GRUVModel(nn.Module):
    """affine (D->H), ``layers`` recurrent layers, affine (H->D). Causal: step t sees steps <= t."""

    def __init__(self, dim: int, hidden: int, cell: str = "lstm", layers: int = 1):
        super().__init__()
        self.dim, self.hidden, self.cell, self.layers = dim, hidden, cell, layers
        self.inp = nn.Linear(dim, hidden)
        self.rnns = nn.ModuleList(make_cell(cell, hidden, hidden) for _ in range(layers))
        self.out = nn.Linear(hidden, dim)

    def forward(self, x, state=None):
        """x: (B, T, D) -> predictions (B, T, D) of the next block, and the final recurrent state."""
        h, state = self.recur(self.inp(x), state)
        return self.out(h), state

    def recur(self, z, state=None):
        """The recurrent layers alone: (B, T, H) -> top layer's hidden sequence, new state."""
        new_state = []
        for k, rnn in enumerate(self.rnns):
            z, s = rnn(z, None if state is None else state[k])
            new_state.append(s)
        return z, new_state
