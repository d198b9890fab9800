"""The peephole LSTM's and the GRU's graph paths (cells/lstm.py GraphedRecurrence, cells/gru.py
GraphedGRURecurrence, on the machinery of cells/graphs.py) on the CPU: the selection, the
buffers and copies of the graph path run without capturing (equal to the eager Function bit for
bit), the capture on second use, the cache, and the fallback to eager on any failure. The
capture itself needs a GPU: tests/test_cuda.py."""
import copy
import warnings

import pytest
import torch

from gruv_hpc.training.cells import graphs as M
from gruv_hpc.training.cells.graphs import recurrence_mode
from gruv_hpc.training.cells.gru import GRU, GRUFunction, GraphedGRURecurrence
from gruv_hpc.training.cells.lstm import GraphedRecurrence, PeepholeLSTM, PeepholeLSTMFunction
from gruv_hpc.training.model import GRUVModel


@pytest.fixture(autouse=True)
def fresh_graph_state(monkeypatch):
    monkeypatch.setattr(M, "_graphs_failed", False)
    monkeypatch.delenv(M.RECURRENCE_ENV, raising=False)


def test_selection(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert recurrence_mode("auto", cpu) == "eager" and recurrence_mode("auto", cuda) == "graph"
    assert recurrence_mode("graph", cpu) == "graph" and recurrence_mode("eager", cuda) == "eager"
    monkeypatch.setenv(M.RECURRENCE_ENV, "eager")  # overrides auto only
    assert recurrence_mode("auto", cuda) == "eager" and recurrence_mode("graph", cuda) == "graph"
    monkeypatch.setenv(M.RECURRENCE_ENV, "bogus")
    with pytest.raises(ValueError, match="bogus"):
        recurrence_mode("auto", cpu)
    monkeypatch.setattr(M, "_graphs_failed", True)  # after a failed capture: eager everywhere
    assert recurrence_mode("graph", cuda) == "eager"
    with pytest.raises(ValueError):
        PeepholeLSTM(3, 4, recurrence="compiled")


def pair(hidden=10, inp=6, steps_min=M.GRAPH_MIN_STEPS):
    torch.manual_seed(0)
    a = PeepholeLSTM(inp, hidden, recurrence="eager")
    b = PeepholeLSTM(inp, hidden, recurrence="graph")
    with torch.no_grad():
        a.v.normal_()
    b.load_state_dict(a.state_dict())
    b.graphs.min_steps = steps_min
    return a, b


def run(m, x, state=None):
    m.zero_grad()
    y, (h, c) = m(x, state)
    (y.pow(2).sum() + h.sum() + 0.5 * c.sum()).backward()
    return y.detach(), h.detach(), c.detach(), [p.grad.clone() for p in m.parameters()]


def assert_same(ra, rb):
    for u, v in zip(ra[:3], rb[:3]):
        assert torch.equal(u, v)
    for u, v in zip(ra[3], rb[3]):
        assert torch.equal(u, v)


def test_graph_path_equals_eager_bitwise():
    """New inputs, new states and new weights every call: every one must reach the fixed buffers."""
    a, b = pair()
    opt_a, opt_b = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (a, b))
    for it in range(4):
        x = torch.randn(3, 9, 6)
        state = (torch.randn(3, 10), torch.randn(3, 10)) if it % 2 else None
        ra, rb = run(a, x, state), run(b, x, state)
        assert_same(ra, rb)
        opt_a.step()
        opt_b.step()  # U changes in place: the graph reads the parameter itself (aliased)
        assert b.graphs.captures == (0 if it == 0 else 1)  # captured at the second use of the shape
    (key,) = b.graphs.entries
    assert key[3] == b.u.data_ptr()  # aliased U
    with torch.no_grad():  # the no-grad path (evaluation) through the same entry
        x = torch.randn(3, 9, 6)
        ya, yb = a(x)[0], b(x)[0]
        yb2 = b(x)[0]
    assert torch.equal(ya, yb) and yb.data_ptr() != yb2.data_ptr()  # outputs are copies, never the buffers
    assert b.graphs.captures == 1


def test_function_level_copy_mode_and_gradcheck():
    """U copied into the buffer (not aliased), float64: gradcheck calls it many times over."""
    torch.manual_seed(0)
    T, B, H = 4, 2, 3
    runner = GraphedRecurrence(min_steps=1)
    args = [torch.randn(T, 4, B, H), torch.randn(4, H, H), torch.randn(3, H), torch.randn(B, H), torch.randn(B, H)]
    args = [t.double().requires_grad_() for t in args]
    assert torch.autograd.gradcheck(lambda *a: tuple(runner(*a)), args)
    assert runner.captures == 1 and list(runner.entries)[0][3] is None
    ref = PeepholeLSTMFunction.apply(*args)
    out = runner(*args)
    assert all(torch.equal(r, o) for r, o in zip(ref, out))


def test_short_sequences_and_one_off_shapes_stay_eager():
    a, b = pair()
    for T in (1, 2, 3, 9, 10, 11, 12):  # each length once (generation by refeed): no capture
        x = torch.randn(1, T, 6)
        assert_same(run(a, x), run(b, x))
    assert b.graphs.captures == 0
    for _ in range(3):  # one-block steps, repeated: below GRAPH_MIN_STEPS, never captured
        run(b, torch.randn(1, 1, 6))
    assert b.graphs.captures == 0


def test_cache_keeps_the_newest_shapes():
    a, b = pair()
    b.graphs.max_entries = 2
    for B in (1, 2, 3, 1):
        for _ in range(2):
            x = torch.randn(B, 8, 6)
            assert_same(run(a, x), run(b, x))
    assert [k[0][2] for k in b.graphs.entries] == [3, 1]  # (T, 4, B, H): B=2 dropped, B=1 recaptured
    assert b.graphs.captures == 4


def test_failed_capture_warns_once_and_falls_back(monkeypatch):
    a, b = pair()

    def broken(*args, **kw):
        raise RuntimeError("capture is not supported here")
    monkeypatch.setattr(M, "_Graph", broken)
    x = torch.randn(2, 9, 6)
    run(b, x)
    with pytest.warns(RuntimeWarning, match="CUDA graph failed.*capture is not supported here.*eager"):
        rb = run(b, x)
    assert_same(run(a, x), rb)
    assert M._graphs_failed and recurrence_mode("graph", torch.device("cpu")) == "eager"
    c = PeepholeLSTM(6, 10, recurrence="graph")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        for _ in range(3):
            run(c, x)
    assert c.graphs.captures == 0


def test_failed_backward_capture_falls_back_in_the_backward(monkeypatch):
    a, b = pair()
    x = torch.randn(2, 9, 6)
    run(b, x)
    real = M._Graph

    def forward_only(fn, device, capture):
        if fn.__code__.co_names.count("_lstm_backward_steps"):
            raise RuntimeError("no backward capture")
        return real(fn, device, capture)
    monkeypatch.setattr(M, "_Graph", forward_only)
    with pytest.warns(RuntimeWarning, match="no backward capture"):
        rb = run(b, x)  # forward from the graph path, backward eager from the same saved tensors
    assert_same(run(a, x), rb)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_models_with_graphs_copy_and_train_like_eager(cell):
    """Two layers, bf16 autocast (the recurrence stays fp32), RMSprop: bitwise the same weights;
    a deep copy shares no graph with its original."""
    torch.manual_seed(0)
    a = GRUVModel(dim=16, hidden=8, cell=cell, layers=2, recurrence="eager")
    b = GRUVModel(dim=16, hidden=8, cell=cell, layers=2, recurrence="graph")
    b.load_state_dict(a.state_dict())
    oa, ob = (torch.optim.RMSprop(m.parameters(), lr=1e-3) for m in (a, b))
    x, y = torch.randn(2, 10, 16), torch.randn(2, 10, 16)
    for _ in range(3):
        for m, o in ((a, oa), (b, ob)):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                pred, _ = m(x)
            o.zero_grad()
            torch.nn.functional.mse_loss(pred.float(), y).backward()
            o.step()
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    assert all(r.graphs.captures == 1 for r in b.rnns)  # one per layer: each aliases its own U
    c = copy.deepcopy(b)
    assert all(not r.graphs.entries for r in c.rnns)
    assert torch.equal(c(x)[0], b(x)[0])


# ---------------------------------------------------------------------------------------------
# The GRU's graph path (cells/gru.py): the same machinery, the same checks.

def gru_pair(hidden=10, inp=6):
    torch.manual_seed(0)
    a = GRU(inp, hidden, recurrence="eager")
    b = GRU(inp, hidden, recurrence="graph")
    b.load_state_dict(a.state_dict())
    return a, b


def gru_run(m, x, state=None):
    m.zero_grad()
    y, h = m(x, state)
    (y.pow(2).sum() + h.sum()).backward()
    return y.detach(), h.detach(), None, [p.grad.clone() for p in m.parameters()]


def gru_same(ra, rb):
    for u, v in zip(ra[:2] + tuple(ra[3]), rb[:2] + tuple(rb[3])):
        assert torch.equal(u, v)


def test_gru_selection():
    """auto: the Function (and on CUDA its graphs) on CUDA; the CPU keeps its autograd loop."""
    m = GRU(3, 4)
    assert not m._uses_function("cpu") and m._uses_function("cuda")
    assert GRU(3, 4, recurrence="graph")._uses_function("cpu") and GRU(3, 4, recurrence="eager")._uses_function("cpu")
    assert not GRU(3, 4, recurrence="graph", fused_backward=False)._uses_function("cuda")
    with pytest.raises(ValueError):
        GRU(3, 4, recurrence="compiled")


def test_gru_graph_path_equals_eager_bitwise():
    """New inputs, states and weights every call (RMSprop updates U_zr and U in place: the graph
    reads the parameters themselves)."""
    a, b = gru_pair()
    opt_a, opt_b = (torch.optim.RMSprop(m.parameters(), lr=1e-2) for m in (a, b))
    for it in range(4):
        x = torch.randn(3, 9, 6)
        state = torch.randn(3, 10) if it % 2 else None
        gru_same(gru_run(a, x, state), gru_run(b, x, state))
        opt_a.step()
        opt_b.step()
        assert b.graphs.captures == (0 if it == 0 else 1)  # captured at the second use of the shape
    (key,) = b.graphs.entries
    assert key[3] == (b.u_zr.data_ptr(), b.u_n.data_ptr())  # aliased U_zr and U
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    with torch.no_grad():  # the no-grad path (evaluation) through the same entry
        x = torch.randn(3, 9, 6)
        ya, yb, yb2 = a(x)[0], b(x)[0], b(x)[0]
    assert torch.equal(ya, yb) and yb.data_ptr() != yb2.data_ptr()  # outputs are copies, never the buffers
    assert b.graphs.captures == 1


def test_gru_function_level_copy_mode_and_gradcheck():
    torch.manual_seed(0)
    T, B, H = 4, 2, 3
    runner = GraphedGRURecurrence(min_steps=1)
    args = [torch.randn(T, 3, B, H), torch.randn(2, H, H), torch.randn(H, H), torch.randn(B, H)]
    args = [t.double().requires_grad_() for t in args]
    assert torch.autograd.gradcheck(lambda *a: tuple(runner(*a)), args)
    assert runner.captures == 1 and list(runner.entries)[0][3] is None
    ref, out = GRUFunction.apply(*args), runner(*args)
    assert all(torch.equal(r, o) for r, o in zip(ref, out))
    gr = torch.autograd.grad(ref[0].pow(2).sum() + ref[1].sum(), args)
    go = torch.autograd.grad(out[0].pow(2).sum() + out[1].sum(), args)
    assert all(torch.equal(r, o) for r, o in zip(gr, go))


def test_gru_short_and_one_off_shapes_stay_eager():
    a, b = gru_pair()
    for T in (1, 3, 9, 10, 11):
        x = torch.randn(1, T, 6)
        gru_same(gru_run(a, x), gru_run(b, x))
    for _ in range(3):
        gru_run(b, torch.randn(1, 1, 6))
    assert b.graphs.captures == 0


def test_gru_failed_capture_warns_and_falls_back(monkeypatch):
    a, b = gru_pair()

    def broken(*args, **kw):
        raise RuntimeError("capture is not supported here")
    monkeypatch.setattr(M, "_Graph", broken)
    x = torch.randn(2, 9, 6)
    gru_run(b, x)
    with pytest.warns(RuntimeWarning, match="GRU: .*CUDA graph failed.*capture is not supported here.*eager"):
        rb = gru_run(b, x)
    gru_same(gru_run(a, x), rb)
    assert M._graphs_failed and b.graphs.captures == 0


def test_gru_failed_backward_capture_falls_back_in_the_backward(monkeypatch):
    a, b = gru_pair()
    x = torch.randn(2, 9, 6)
    gru_run(b, x)
    real = M._Graph

    def forward_only(fn, device, capture):
        if fn.__code__.co_names.count("_gru_backward_steps"):
            raise RuntimeError("no backward capture")
        return real(fn, device, capture)
    monkeypatch.setattr(M, "_Graph", forward_only)
    with pytest.warns(RuntimeWarning, match="no backward capture"):
        rb = gru_run(b, x)
    gru_same(gru_run(a, x), rb)
