"""The paper's GRU, eqs. 2-5:

    z = s(W_z x + U_z h'),  r = s(W_r x + U_r h'),  n = tanh(W x + U (r * h')),  h = (1 - z) h' + z n

All W terms carry a bias, as in the original (Keras) implementation.

Two implementations of the same equations:
- the plain autograd loop (``GRU._autograd``): what the CPU runs by default, bit for bit what it
  always computed;
- ``GRUFunction``: the recurrence over precomputed input projections in a gate-major layout with
  a hand-written backward (every local derivative in a few time-vectorized ops, five small ops
  per step left). On CUDA its two loops (forward, and the backward's chain through time) are
  replayed from CUDA graphs (``GraphedGRURecurrence``, the machinery in graphs.py), as the
  peephole LSTM's are: without them each of the ~40 steps' kernels is launched from Python, and
  the GRU ran at a fifth of the LSTM's speed on an H200.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from gruv_hpc.training.cells import graphs as G


def _gru_forward(xp, uzr, un, h0):
    """The recurrence (see GRUFunction). Returns what the backward needs: gates (T, 3, B, H)
    [z, r, n] after their nonlinearity, hs (T + 1, B, H) with h_0 first, and r * h' (T, B, H).
    Every per-step op writes into a buffer allocated before the loop."""
    T, _, B, H = xp.shape
    kw = dict(dtype=xp.dtype, device=xp.device)
    uzr_t, un_t = uzr.transpose(1, 2), un.t()
    gates = torch.empty(T, 3, B, H, **kw)
    hs = torch.empty(T + 1, B, H, **kw)
    rhs = torch.empty(T, B, H, **kw)
    g = torch.empty(2, B, H, **kw)
    a = torch.empty(B, H, **kw)
    hs[0] = h0
    for t in range(T):
        torch.baddbmm(xp[t, :2], hs[t].expand(2, B, H), uzr_t, out=g)
        gt = gates[t]
        torch.sigmoid(g, out=gt[:2])                        # z, r
        torch.mul(gt[1], hs[t], out=rhs[t])                 # r * h'
        torch.addmm(xp[t, 2], rhs[t], un_t, out=a)
        torch.tanh(a, out=gt[2])                            # n
        torch.lerp(hs[t], gt[2], gt[0], out=hs[t + 1])      # h' + z (n - h') = (1 - z) h' + z n
    return gates, hs, rhs


def _gru_backward_steps(uzr, un, gates, hs, d_hs, d_hT):
    """The backward's chain through time: dG (T, 3, B, H), the gradient of the gate
    pre-activations (= of xp), and dh_0. ``d_*`` may be None (no gradient flows there)."""
    T, _, B, H = gates.shape
    kw = dict(dtype=gates.dtype, device=gates.device)
    z, r, n = gates.unbind(1)
    h_prev = hs[:-1]
    # Every local derivative, for all timesteps at once; the loop below only chains them.
    Kz = (n - h_prev) * z * (1 - z)   # dgz = dh * Kz
    Kn = z * (1 - n * n)              # dgn = dh * Kn
    Kr = h_prev * r * (1 - r)         # dgr = d(r h') * Kr
    Z1 = 1 - z                        # dh' = dh * (1 - z) + d(r h') * r + sum_k dg_k U_k
    dG = torch.empty(T, 3, B, H, **kw)
    d_hs = d_hs if d_hs is not None else torch.zeros(T, B, H, **kw)
    dh_next = d_hT.clone() if d_hT is not None else torch.zeros(B, H, **kw)
    drh = torch.empty(B, H, **kw)
    tmp = torch.empty(2, B, H, **kw)
    for t in range(T - 1, -1, -1):
        dh = dh_next.add_(d_hs[t])
        torch.mul(dh, Kn[t], out=dG[t, 2])
        torch.mm(dG[t, 2], un, out=drh)
        torch.mul(dh, Kz[t], out=dG[t, 0])
        torch.mul(drh, Kr[t], out=dG[t, 1])
        torch.bmm(dG[t, :2], uzr, out=tmp)
        dh_next = torch.mul(dh, Z1[t]).addcmul_(drh, r[t]).add_(tmp[0]).add_(tmp[1])
    return dG, dh_next


def _gru_backward_weights(dG, hs, rhs):
    """dU_z, dU_r and dU from dG: a few large ops over all timesteps at once (no per-step loop)."""
    T, _, B, H = dG.shape
    dzr = dG[:, :2].transpose(0, 1).reshape(2, T * B, H)
    duzr = torch.bmm(dzr.transpose(1, 2), hs[:-1].reshape(1, T * B, H).expand(2, T * B, H))
    dun = dG[:, 2].reshape(T * B, H).t() @ rhs.reshape(T * B, H)
    return duzr, dun


def _gru_backward(uzr, un, gates, hs, rhs, d_hs, d_hT):
    dG, dh0 = _gru_backward_steps(uzr, un, gates, hs, d_hs, d_hT)
    duzr, dun = _gru_backward_weights(dG, hs, rhs)
    return dG, duzr, dun, dh0


class GRUFunction(torch.autograd.Function):
    """The GRU recurrence over precomputed input projections, in a gate-major layout.

    xp: (T, 3, B, H), gates [z, r, n]; uzr: (2, H, H) = [U_z, U_r]; un: (H, H) = U; h0: (B, H).
    Returns hs (T, B, H) and h_T."""

    @staticmethod
    def forward(ctx, xp, uzr, un, h0):
        T = xp.shape[0]
        gates, hs, rhs = _gru_forward(xp, uzr, un, h0)
        ctx.save_for_backward(uzr, un, gates, hs, rhs)
        return hs[1:], hs[T].clone()

    @staticmethod
    def backward(ctx, d_hs, d_hT):
        return _gru_backward(*ctx.saved_tensors, d_hs, d_hT)


class _GRUGraphEntry:
    """One sequence shape: fixed input buffers, the forward graph, and the backward graph
    (captured at the first backward). Every call copies its inputs in and its results out, so a
    later replay never overwrites a tensor somebody still holds. ``alias_u``: the graphs read
    U_zr and U straight from the layer's parameters (updated in place by the optimizer)."""

    def __init__(self, xp, uzr, un, h0, alias_u: bool, capture: bool):
        self.device, self.capture, self.alias_u = xp.device, capture, alias_u
        self.xp, self.h0 = torch.empty_like(xp), torch.empty_like(h0)
        self.uzr, self.un = (uzr.detach(), un.detach()) if alias_u else (torch.empty_like(uzr), torch.empty_like(un))
        self._load(xp, uzr, un, h0)
        self.fwd = G._Graph(lambda: _gru_forward(self.xp, self.uzr, self.un, self.h0), self.device, capture)
        self.bwd = None

    def _load_u(self, uzr, un):
        if not self.alias_u:
            self.uzr.copy_(uzr)
            self.un.copy_(un)

    def _load(self, xp, uzr, un, h0):
        self.xp.copy_(xp)
        self._load_u(uzr, un)
        self.h0.copy_(h0)

    def forward(self, xp, uzr, un, h0, keep: bool):
        """hs (T, B, H), h_T, and with ``keep`` the tensors the backward needs (copies)."""
        T = xp.shape[0]
        with torch.no_grad():
            self._load(xp, uzr, un, h0)
            gates, hs, rhs = self.fwd.run()
            if not keep:
                return hs[1:].clone(), hs[T].clone(), None
            saved = gates.clone(), hs.clone(), rhs.clone()
            return saved[1][1:], hs[T].clone(), saved

    def backward(self, uzr, un, gates, hs, rhs, d_hs, d_hT):
        with torch.no_grad():
            if self.bwd is None:
                self.b_in = [torch.empty_like(t) for t in (gates, hs, hs[1:], hs[0])]
                self._load_bwd(uzr, un, gates, hs, d_hs, d_hT)
                g, h, dhs, dhT = self.b_in
                self.bwd = G._Graph(lambda: _gru_backward_steps(self.uzr, self.un, g, h, dhs, dhT),
                                    self.device, self.capture)
            else:
                self._load_bwd(uzr, un, gates, hs, d_hs, d_hT)
            dG, dh0 = (t.clone() for t in self.bwd.run())
            duzr, dun = _gru_backward_weights(dG, hs, rhs)  # large ops: eager, straight into new tensors
            return dG, duzr, dun, dh0

    def _load_bwd(self, uzr, un, gates, hs, d_hs, d_hT):
        self._load_u(uzr, un)
        for buf, t in zip(self.b_in, (gates, hs, d_hs, d_hT)):
            buf.zero_() if t is None else buf.copy_(t)


class GraphedGRURecurrence(G.GraphCache):
    """The GRU layer's captured graphs (graphs.GraphCache): the graphed or the eager GRUFunction,
    called as it is: (xp, uzr, un, h0) -> hs, h_T."""

    what = "GRU"
    function = GRUFunction
    eager_backward = staticmethod(_gru_backward)

    def weights(self, xp, uzr, un, h0):
        return uzr, un

    def alias_key(self, xp, uzr, un, h0):
        return uzr.data_ptr(), un.data_ptr()

    def build(self, capture, xp, uzr, un, h0, alias_u):
        return _GRUGraphEntry(xp, uzr, un, h0, alias_u, capture)


class GRU(nn.Module):
    """``recurrence``: auto | graph | eager (graphs.recurrence_mode): auto takes the graphs on CUDA.
    ``fused_backward``: the hand-written GRUFunction (True) or the plain autograd loop (False);
    None (the default): the Function on CUDA or when a recurrence is asked for by name, the
    autograd loop for ``auto`` on the CPU (the CPU path as it always was, bit for bit)."""

    def __init__(self, input_size: int, hidden: int, recurrence: str = "auto", fused_backward: bool | None = None):
        super().__init__()
        G.check_recurrence(recurrence)
        self.hidden = hidden
        self.recurrence = recurrence
        self.fused_backward = fused_backward
        self.graphs = GraphedGRURecurrence()
        self.w = nn.Linear(input_size, 3 * hidden)              # W_z, W_r, W and biases
        self.u_zr = nn.Parameter(torch.empty(2 * hidden, hidden))  # U_z, U_r
        self.u_n = nn.Parameter(torch.empty(hidden, hidden))       # U
        k = 1 / math.sqrt(hidden)
        nn.init.uniform_(self.u_zr, -k, k)
        nn.init.uniform_(self.u_n, -k, k)

    def _uses_function(self, device) -> bool:
        if self.fused_backward is not None:
            return self.fused_backward
        return torch.device(device).type == "cuda" or self.recurrence != "auto"

    def forward(self, x, state=None):
        """x: (B, T, I) -> (B, T, H), h."""
        B, T, H = x.shape[0], x.shape[1], self.hidden
        h = x.new_zeros(B, H) if state is None else state
        xp = self.w(x)  # (B, T, 3H): one matmul for every timestep
        if not self._uses_function(x.device):
            return self._autograd(xp.transpose(0, 1), h)
        dtype = torch.float32 if xp.dtype == torch.bfloat16 else xp.dtype  # the recurrence stays fp32
        xp = xp.view(B, T, 3, H).permute(1, 2, 0, 3).to(dtype).contiguous()  # (T, 3, B, H)
        uzr, un = self.u_zr.view(2, H, H).to(dtype), self.u_n.to(dtype)
        args = (xp, uzr, un, h.to(dtype))
        with torch.autocast(x.device.type, enabled=False):
            if G.recurrence_mode(self.recurrence, x.device) == "graph":
                # alias: U_zr and U are the parameters themselves (no dtype cast), read in place
                alias = uzr.data_ptr() == self.u_zr.data_ptr() and un.data_ptr() == self.u_n.data_ptr()
                hs, h = self.graphs(*args, alias_u=alias)
            else:
                hs, h = GRUFunction.apply(*args)
        return hs.transpose(0, 1), h

    def _autograd(self, xp, h):
        """The plain autograd loop (the CPU's default, and a reference for the Function)."""
        H = self.hidden
        out = []
        for t in range(xp.shape[0]):
            zr = torch.sigmoid(torch.addmm(xp[t, :, :2 * H], h, self.u_zr.t()))
            z, r = zr[:, :H], zr[:, H:]
            n = torch.tanh(torch.addmm(xp[t, :, 2 * H:], r * h, self.u_n.t()))
            h = torch.lerp(h, n, z)  # (1 - z) h + z n
            out.append(h)
        return torch.stack(out, 1), h
