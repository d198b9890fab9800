"""The cells against a direct, per-timestep transcription of the paper's equations."""
import pytest
import torch

from gruv_hpc.training.cells.gru import GRU, GRUFunction
from gruv_hpc.training.cells.lstm import PeepholeLSTM, PeepholeLSTMFunction
from gruv_hpc.training.cells.lstm_fused import FusedLSTM
from gruv_hpc.training.model import GRUVModel


def sig(x):
    return 1 / (1 + torch.exp(-x))


def paper_lstm(m: PeepholeLSTM, x, h, c):
    """Eqs. 6-11 with diagonal V, written out gate by gate."""
    H = m.hidden
    W, b, U, V = m.w.weight, m.w.bias, m.u, m.v
    Wi, Wf, Wc, Wo = (W[k * H:(k + 1) * H] for k in range(4))
    bi, bf, bc, bo = (b[k * H:(k + 1) * H] for k in range(4))
    Ui, Uf, Uc, Uo = (U[k * H:(k + 1) * H] for k in range(4))
    Vi, Vf, Vo = V[0], V[1], V[2]
    hs = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        i = sig(xt @ Wi.T + bi + h @ Ui.T + Vi * c)        # (6): peeks at c_{t-1}
        f = sig(xt @ Wf.T + bf + h @ Uf.T + Vf * c)        # (7): peeks at c_{t-1}
        c = f * c + i * torch.tanh(xt @ Wc.T + bc + h @ Uc.T)  # (8)-(9)
        o = sig(xt @ Wo.T + bo + h @ Uo.T + Vo * c)        # (10): peeks at c_t
        h = o * torch.tanh(c)                              # (11)
        hs.append(h)
    return torch.stack(hs, 1), h, c


def paper_gru(m: GRU, x, h):
    """Eqs. 2-5."""
    H = m.hidden
    W, b = m.w.weight, m.w.bias
    Wz, Wr, Wn = W[:H], W[H:2 * H], W[2 * H:]
    bz, br, bn = b[:H], b[H:2 * H], b[2 * H:]
    Uz, Ur, Un = m.u_zr[:H], m.u_zr[H:], m.u_n
    hs = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        z = sig(xt @ Wz.T + bz + h @ Uz.T)                 # (2)
        r = sig(xt @ Wr.T + br + h @ Ur.T)                 # (3)
        n = torch.tanh(xt @ Wn.T + bn + (r * h) @ Un.T)    # (4)
        h = (1 - z) * h + z * n                            # (5)
        hs.append(h)
    return torch.stack(hs, 1), h


@pytest.mark.parametrize("fused", [True, False])
def test_lstm_matches_paper_equations(fused):
    torch.manual_seed(0)
    m = PeepholeLSTM(6, 10, fused_backward=fused)
    with torch.no_grad():
        m.v.normal_()  # make the peepholes matter
    x = torch.randn(3, 7, 6)
    h0, c0 = torch.randn(3, 10), torch.randn(3, 10)
    y, (h, c) = m(x, (h0, c0))
    ry, rh, rc = paper_lstm(m, x, h0, c0)
    assert (y - ry).abs().max() <= 1e-5
    assert (h - rh).abs().max() <= 1e-5 and (c - rc).abs().max() <= 1e-5


def test_peepholes_are_wired_to_the_right_cell_state():
    """Swapping which c the output gate sees must change the result (the test can fail)."""
    torch.manual_seed(1)
    m = PeepholeLSTM(4, 5)
    with torch.no_grad():
        m.v.normal_(std=3)
    x = torch.randn(2, 6, 4)
    y, _ = m(x)
    m2 = PeepholeLSTM(4, 5)
    m2.load_state_dict(m.state_dict())
    with torch.no_grad():
        m2.v[2].zero_()
    assert (m2(x)[0] - y).abs().max() > 1e-3


@pytest.mark.parametrize("fused", [None, True, False])
def test_gru_matches_paper_equations(fused):
    """None: the CPU's default (the autograd loop); True: GRUFunction (CUDA's eager path and the
    graph path's code); False: the autograd loop by name."""
    torch.manual_seed(0)
    m = GRU(6, 10, fused_backward=fused)
    x, h0 = torch.randn(3, 7, 6), torch.randn(3, 10)
    y, h = m(x, h0)
    ry, rh = paper_gru(m, x, h0)
    assert (y - ry).abs().max() <= 1e-5 and (h - rh).abs().max() <= 1e-5


def test_fused_lstm_function_gradcheck():
    torch.manual_seed(0)
    T, B, H = 4, 2, 3
    args = [torch.randn(T, 4, B, H), torch.randn(4, H, H), torch.randn(3, H), torch.randn(B, H), torch.randn(B, H)]
    args = [a.double().requires_grad_() for a in args]
    # every output carries gradient: the sequence, h_T and c_T
    f = lambda *a: tuple(o for o in PeepholeLSTMFunction.apply(*a))  # noqa: E731
    assert torch.autograd.gradcheck(f, args)


@pytest.mark.parametrize("cell", ["lstm", "gru", "gru-function"])
def test_cell_gradcheck(cell):
    torch.manual_seed(0)
    m = (PeepholeLSTM(3, 4) if cell == "lstm" else GRU(3, 4, fused_backward=cell == "gru-function")).double()
    x = torch.randn(2, 5, 3, dtype=torch.double, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    def f(x, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,))[0]
    assert torch.autograd.gradcheck(f, (x, *params))


def test_gru_function_gradcheck():
    torch.manual_seed(0)
    T, B, H = 4, 2, 3
    args = [torch.randn(T, 3, B, H), torch.randn(2, H, H), torch.randn(H, H), torch.randn(B, H)]
    args = [a.double().requires_grad_() for a in args]
    assert torch.autograd.gradcheck(lambda *a: tuple(GRUFunction.apply(*a)), args)


def test_gru_function_equals_autograd():
    """The hand-written backward against the autograd loop: outputs, state and every gradient."""
    torch.manual_seed(0)
    a, b = GRU(5, 9, fused_backward=True), GRU(5, 9, fused_backward=False)
    b.load_state_dict(a.state_dict())
    x, h0 = torch.randn(4, 11, 5), torch.randn(4, 9)
    outs = []
    for m in (a, b):
        y, h = m(x, h0)
        (y.pow(2).sum() + h.sum()).backward()
        outs.append((y, h))
    assert (outs[0][0] - outs[1][0]).abs().max() <= 1e-6 and (outs[0][1] - outs[1][1]).abs().max() <= 1e-6
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert (pa.grad - pb.grad).abs().max() <= 1e-5, n


def test_fused_backward_equals_autograd():
    torch.manual_seed(0)
    a = PeepholeLSTM(5, 9, fused_backward=True)
    b = PeepholeLSTM(5, 9, fused_backward=False)
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 11, 5)
    for m in (a, b):
        y, (h, c) = m(x)
        (y.pow(2).sum() + h.sum() + 0.5 * c.sum()).backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert (pa.grad - pb.grad).abs().max() <= 1e-5, n


@pytest.mark.parametrize("cell", ["lstm", "gru", "lstm-fused"])
def test_model_shapes_state_and_causality(cell):
    torch.manual_seed(0)
    m = GRUVModel(dim=16, hidden=8, cell=cell, layers=2)
    x = torch.randn(2, 6, 16)
    y, state = m(x)
    assert y.shape == x.shape and len(state) == 2
    x2 = x.clone()
    x2[:, 4:] += 1.0  # the future must not change the past
    y2, _ = m(x2)
    assert torch.allclose(y[:, :4], y2[:, :4], atol=1e-6)
    assert not torch.allclose(y[:, 4:], y2[:, 4:])
    # stepping with the carried state equals running the whole sequence
    ya, sa = m(x[:, :3])
    yb, _ = m(x[:, 3:], sa)
    assert torch.allclose(torch.cat([ya, yb], 1), y, atol=1e-5)


def test_fused_lstm_is_the_standard_lstm_and_carries_its_state():
    """lstm-fused is the LSTM without peepholes (torch's gate order i, f, g, o; two biases),
    written out step by step; its (h, c) state of shape (B, H) continues a sequence exactly where
    it left off, as generation and truncated sequences use it."""
    torch.manual_seed(0)
    m = FusedLSTM(4, 6).double()
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    h0, c0 = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    r = m.rnn
    h, c, hs = h0, c0, []
    for t in range(x.shape[1]):
        i, f, g, o = (x[:, t] @ r.weight_ih_l0.T + r.bias_ih_l0 + h @ r.weight_hh_l0.T + r.bias_hh_l0).chunk(4, dim=1)
        c = sig(f) * c + sig(i) * torch.tanh(g)
        h = sig(o) * torch.tanh(c)
        hs.append(h)
    y, (hn, cn) = m(x, (h0, c0))
    torch.testing.assert_close(y, torch.stack(hs, 1))
    torch.testing.assert_close((hn, cn), (h, c))
    y1, s1 = m(x[:, :3], (h0, c0))
    y2, s2 = m(x[:, 3:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y)
    torch.testing.assert_close(s2, (hn, cn))
    zero, _ = m(x)  # no state: zeros
    torch.testing.assert_close(zero, m(x, (torch.zeros_like(h0), torch.zeros_like(c0)))[0])


@pytest.mark.parametrize("cell", ["lstm", "gru", "lstm-fused"])
def test_bf16_autocast_path(cell):
    """The mixed-precision path training takes on CUDA, exercised with CPU autocast: the affine
    layers run in bf16, the peephole recurrence in fp32, and gradients reach every parameter."""
    torch.manual_seed(0)
    m = GRUVModel(dim=16, hidden=8, cell=cell, layers=2)
    x, y = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred, _ = m(x)
    assert pred.dtype == torch.bfloat16
    torch.nn.functional.mse_loss(pred.float(), y).backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    ref, _ = m(x)
    assert (pred.float() - ref).abs().max() < 0.1  # bf16 rounding, not a different computation
