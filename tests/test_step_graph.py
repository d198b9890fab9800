"""The training step replayed from one CUDA graph (training/step.py), on the CPU paths CI has.

On the CPU ``step_graph=graph`` runs the graph path's static buffers and copies without a
capture; it must be the eager step bit for bit, in ``TrainStep`` and in the trainer (resume
included). The capturable optimizer a graph needs (device step counter, tensor lr) runs on the
CPU here by letting the CPU into torch's device check; checkpoints cross between it and the plain
one. A failed capture is simulated. The capture itself is tested on a GPU in tests/test_cuda.py.
"""
import copy
import importlib

import pytest
import torch

from conftest import tiny_config
from gruv_hpc.config import ConfigError
from gruv_hpc.dataset.manifest import load_manifest
from gruv_hpc.paths import read_jsonl
from gruv_hpc.training import step as S
from gruv_hpc.training.cells import graphs as recurrence_graphs
from gruv_hpc.training.config import TrainConfig, resolve
from gruv_hpc.training.model import GRUVModel
from gruv_hpc.training.trainer import main, make_optimizer
from test_train import StopAfter, assert_bitwise_equal, weights


def _batches(full=4, part=2, steps=(1, 1, 0, 1, 1, 1), T=9, D=24):
    """Windows (B, T + 1, D) with their targets, full batches and one partial one (0 in ``steps``)."""
    g = torch.Generator().manual_seed(7)
    out = []
    for f in steps:
        win = torch.randn(full if f else part, T + 1, D, generator=g)
        out.append((win, win[:, 1:]))
    return out


def _train(cell, mode, clip=0.0, lrs=None, capturable=False, batches=None, recurrence="auto"):
    torch.manual_seed(0)
    m = GRUVModel(dim=24, hidden=12, cell=cell, recurrence=recurrence)
    cfg = TrainConfig()
    opt = make_optimizer(cfg, m.parameters(), capturable=capturable)
    ts = S.TrainStep(m, opt, mode=mode, device="cpu", grad_clip=clip, full_batch=4)
    losses, norms = [], []
    for i, (win, y) in enumerate(batches or _batches()):
        if lrs:
            S.set_lr(opt, lrs[i])
        loss, norm = ts(win, y, True)
        losses.append(loss.clone())
        norms.append(None if norm is None else norm.clone())
    return m, opt, ts, losses, norms


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_graph_path_on_the_cpu_is_the_eager_step_bitwise(cell, clip):
    a, _, ea, la, na = _train(cell, "eager", clip)
    b, _, gb, lb, nb = _train(cell, "graph", clip)
    assert_bitwise_equal(a.state_dict(), b.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(la, lb))
    assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(na, nb))
    assert (clip > 0) == (nb[0] is not None)
    # the graph path took the five full batches through its static buffers; the partial one went eager
    assert gb.key[0] == (4, 10, 24) and gb.uses == 5 and gb.static is not None
    assert torch.equal(gb.static[0], _batches()[-1][0])
    assert ea.static is None and ea.uses == 0


def test_the_static_shape_is_a_full_batch_even_when_a_partial_one_comes_first():
    b, _, gb, _, _ = _train("lstm", "graph", batches=_batches(steps=(0, 1, 1)))
    a, _, _, _, _ = _train("lstm", "eager", batches=_batches(steps=(0, 1, 1)))
    assert gb.key[0] == (4, 10, 24) and gb.uses == 2
    assert_bitwise_equal(a.state_dict(), b.state_dict())


def test_trainer_with_step_graph_trains_and_resumes_bitwise_like_eager(data, tmp_path, monkeypatch):
    built = []
    real_build = S.TrainStep._build
    monkeypatch.setattr(S.TrainStep, "_build", lambda self, *a: (built.append(self.key), real_build(self, *a))[1])
    sched = dict(lr_schedule="cosine", lr_horizon_epochs=2, lr_min_ratio=0.1, grad_clip=1.0)
    e, g, r = tmp_path / "eager", tmp_path / "graph", tmp_path / "resumed"
    main(tiny_config(data, epochs=2, step_graph="eager", **sched), e)
    assert built == []
    main(tiny_config(data, epochs=2, step_graph="graph", **sched), g)
    assert len(built) == 1  # one static shape, built once
    assert_bitwise_equal(weights(e), weights(g))
    he, hg = read_jsonl(e / "metrics.jsonl"), read_jsonl(g / "metrics.jsonl")
    for k in ("train_loss", "dev_loss", "lr", "grad_norm"):
        assert [h[k] for h in he] == [h[k] for h in hg], k
    # stopped mid-epoch with the graph path, resumed with it: the same run
    assert main(tiny_config(data, epochs=2, step_graph="graph", **sched), r, stop=StopAfter(17))["status"] == "stopped"
    main(tiny_config(data, epochs=2, step_graph="graph", **sched), r)
    assert_bitwise_equal(weights(e), weights(r))
    assert [h["train_loss"] for h in he] == [h["train_loss"] for h in read_jsonl(r / "metrics.jsonl")]


def test_step_graph_choices_and_refusals(data):
    assert S.step_graph_mode("auto", "cpu", 1) == "eager"
    assert S.step_graph_mode("auto", "cuda", 1) == "graph"
    assert S.step_graph_mode("auto", "cuda", 2) == "eager"  # DDP's all-reduce is not captured
    assert S.step_graph_mode("auto", "cuda", 1, "sgd", "cosine") == "eager"  # SGD bakes a float lr in
    assert S.step_graph_mode("auto", "cuda", 1, "sgd", "constant") == "graph"
    assert S.step_graph_mode("graph", "cpu", 1) == "graph"
    with pytest.raises(ConfigError, match="step_graph: 'always' is not one of auto, graph, eager"):
        TrainConfig(step_graph="always").validate()
    with pytest.raises(ConfigError, match="step_graph: graph with optimizer=sgd, lr_schedule=step"):
        TrainConfig(step_graph="graph", optimizer="sgd", lr_schedule="step", lr_step_epochs=1).validate()
    with pytest.raises(ConfigError, match="step_graph: graph needs one training process.*not 2"):
        resolve(TrainConfig(step_graph="graph", batch_size=4), load_manifest(data), world_size=2)
    resolve(TrainConfig(step_graph="auto", batch_size=4), load_manifest(data), world_size=2)


@pytest.fixture
def capturable_on_cpu(monkeypatch):
    """torch's capturable optimizers check their device (cuda, xpu, ...). The CPU is let in, so that
    the update a graph replays (step counter and lr as tensors on the parameters' device) runs here."""
    mod = importlib.import_module  # (torch.optim's package namespace hides these modules' names)
    orig = mod("torch.optim.optimizer")._get_capturable_supported_devices
    for name in ("torch.optim.rmsprop", "torch.optim.adam"):
        monkeypatch.setattr(mod(name), "_get_capturable_supported_devices", lambda supports_xla=True: [*orig(supports_xla), "cpu"])


def test_the_capturable_optimizer_is_the_same_update(capturable_on_cpu):
    lrs = [1e-3, 8e-4, 6e-4, 4e-4, 3e-4, 2e-4]
    a, oa, _, la, _ = _train("gru", "eager", lrs=lrs)
    b, ob, _, lb, _ = _train("gru", "graph", lrs=lrs, capturable=True)
    g = ob.param_groups[0]
    assert g["capturable"] and isinstance(g["lr"], torch.Tensor) and g["lr"].item() == pytest.approx(2e-4)
    # torch's capturable RMSprop divides by -lr where the plain one multiplies: float32 rounding apart
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert not torch.equal(p, torch.zeros_like(p))
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=n)
    assert la[0] == lb[0]  # the first loss is before any update


@pytest.mark.parametrize("direction", ["graph->eager", "eager->graph"])
def test_checkpoints_cross_between_capturable_and_plain_optimizers(capturable_on_cpu, direction):
    """torch's load_state_dict takes an optimizer's flags and lr from the checkpoint; conform_optimizer
    gives this process's back (its lr tensor object, which a graph reads, kept), and moves the step
    counters where they belong. The run then continues exactly as the saving optimizer would have."""
    src_capt = direction == "graph->eager"
    first, rest = _batches(steps=(1, 1, 1)), _batches(steps=(1, 1))
    m, o, _, _, _ = _train("lstm", "graph", capturable=src_capt, batches=first, lrs=[1e-3, 9e-4, 8e-4])
    # copies, as a checkpoint file is: load_state_dict keeps the tensors it is given
    sd_model, sd_opt = copy.deepcopy(m.state_dict()), copy.deepcopy(o.state_dict())

    def continue_with(capturable):
        torch.manual_seed(1)
        m2 = GRUVModel(dim=24, hidden=12, cell="lstm")
        o2 = make_optimizer(TrainConfig(), m2.parameters(), capturable=capturable)
        flags, lr_obj = S.optimizer_flags(o2), o2.param_groups[0]["lr"]
        m2.load_state_dict(sd_model)
        o2.load_state_dict(copy.deepcopy(sd_opt))
        lr = S.conform_optimizer(o2, flags)
        g = o2.param_groups[0]
        assert g["capturable"] == capturable and lr == pytest.approx(8e-4)
        assert (g["lr"] is lr_obj) if capturable else isinstance(g["lr"], float)
        for st in o2.state.values():
            assert st["step"].device.type == "cpu" and st["step"].item() == 3
        ts = S.TrainStep(m2, o2, mode="graph", device="cpu", full_batch=4)
        for win, y in rest:
            ts(win, y, True)
        return m2

    # the same optimizer kind continues bit for bit; the other kind to rounding
    same, other = continue_with(src_capt), continue_with(not src_capt)
    ts = S.TrainStep(m, o, mode="graph", device="cpu", full_batch=4)  # the saving run, going on
    for win, y in rest:
        ts(win, y, True)
    assert_bitwise_equal(m.state_dict(), same.state_dict())
    for p, q in zip(m.parameters(), other.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_a_failed_capture_is_warned_once_and_the_step_taken_eagerly(monkeypatch):
    """A capture that fails (here after leaving gradients behind, as a half-recorded backward
    can) runs nothing: the step is taken eagerly, with the same result, and so is every later one."""
    monkeypatch.setattr(S.TrainStep, "_side_stream", lambda self: None)  # no streams on the CPU
    calls = []

    def bad_capture(fn, device, stream):
        calls.append(device)
        for p in ts.params:
            p.grad = torch.full_like(p, 1e3)
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    monkeypatch.setattr(S, "_capture", bad_capture)
    a, _, _, la, _ = _train("gru", "eager")
    torch.manual_seed(0)
    m = GRUVModel(dim=24, hidden=12, cell="gru")
    opt = make_optimizer(TrainConfig(), m.parameters())
    ts = S.TrainStep(m, opt, mode="graph", device="cpu", full_batch=4)
    ts.capture = True  # as on CUDA
    with pytest.warns(RuntimeWarning, match="capturing the training step as a CUDA graph failed.*not permitted"):
        lb = [ts(win, y, True)[0].clone() for win, y in _batches()]
    assert len(calls) == 1 and ts.failed and ts.static is None
    assert_bitwise_equal(a.state_dict(), m.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(la, lb))


@pytest.mark.parametrize("sched", [{}, dict(lr_schedule="cosine", lr_horizon_epochs=2, lr_min_ratio=0.1)],
                         ids=["constant", "cosine"])
def test_a_run_with_the_capturable_optimizer_checkpoints_and_resumes_either_way(data, tmp_path, monkeypatch,
                                                                                capturable_on_cpu, sched):
    """The trainer with the optimizer a CUDA graph needs (let onto the CPU): its checkpoints (a tensor
    lr, device step counters) resume it bit for bit, and resume the run eagerly with the plain
    optimizer too (step_graph is a runtime key), to float32 rounding. The lr in metrics.jsonl stays
    the config's, not its float32 rounding, across the resumes."""
    import gruv_hpc.training.trainer as T
    monkeypatch.setattr(T, "wants_capturable", lambda mode, device: mode == "graph")
    a, b, c = tmp_path / "whole", tmp_path / "resumed", tmp_path / "resumed-eager"
    main(tiny_config(data, epochs=2, step_graph="graph", **sched), a)
    for run, then in ((b, "graph"), (c, "eager")):
        assert main(tiny_config(data, epochs=2, step_graph="graph", **sched), run, stop=StopAfter(17))["status"] == "stopped"
        main(tiny_config(data, epochs=2, step_graph=then, **sched), run)
    assert_bitwise_equal(weights(a), weights(b))
    for k, v in weights(a).items():
        torch.testing.assert_close(v, weights(c)[k], rtol=1e-4, atol=1e-6, msg=k)
    lrs = [h["lr"] for h in read_jsonl(a / "metrics.jsonl")]
    assert lrs == [h["lr"] for h in read_jsonl(b / "metrics.jsonl")] == [h["lr"] for h in read_jsonl(c / "metrics.jsonl")]
    assert (lrs == [1e-3, 1e-3]) if not sched else (lrs[0] > lrs[1] >= 1e-4)
    from gruv_hpc.training.checkpoint import load_checkpoint
    from gruv_hpc.paths import RunPaths
    saved = load_checkpoint(RunPaths(a).step_ckpts()[0])["optimizer"]["param_groups"][0]
    assert saved["capturable"] and isinstance(saved["lr"], torch.Tensor)


class FakeGraph:
    """A CUDA graph's semantics on the CPU, for the capture path's control flow: capturing records
    and (in effect) runs nothing, each replay runs the step again on the same buffers, writing its
    gradients and outputs into the tensors the capture made. Emulated by running the step at
    capture time and rolling the parameters and the optimizer's state back."""

    def __init__(self, fn, ts):
        self.fn, self.ts = fn, ts

    def capture(self):
        ts = self.ts
        saved = [p.detach().clone() for p in ts.params]
        state = {id(t): (t, t.clone()) for st in ts.optimizer.state.values() for t in st.values()
                 if isinstance(t, torch.Tensor)}
        with recurrence_graphs.inline():  # as S._capture records it
            self.out = self.fn()
        with torch.no_grad():
            for p, v in zip(ts.params, saved):
                p.copy_(v)
            for t, v in state.values():
                t.copy_(v)
        self.grads = [p.grad for p in ts.params]
        return self, self.out

    def replay(self):
        before = [p.grad for p in self.ts.params]  # a replay changes no Python attribute: put back after
        for p, g in zip(self.ts.params, self.grads):
            p.grad = g.zero_()  # the capture's gradient tensors, overwritten
        with recurrence_graphs.inline():  # a replay runs what was recorded
            out = self.fn()
        for o, n in zip(self.out, out):
            if o is not None:
                o.copy_(n)
        for p, g in zip(self.ts.params, before):
            p.grad = g


@pytest.fixture
def fake_capture(monkeypatch):
    """TrainStep on the CPU as on CUDA: warm-up steps (eager, no side stream here), a capture, replays."""
    made = []
    monkeypatch.setattr(S.TrainStep, "_side_stream", lambda self: None)  # no streams on the CPU
    real_init = S.TrainStep.__init__

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        self.capture = self.mode == "graph"
        made.append(self)

    monkeypatch.setattr(S.TrainStep, "__init__", init)
    monkeypatch.setattr(S, "_capture", lambda fn, device, stream: FakeGraph(fn, made[-1]).capture())
    return made


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_the_capture_path_trains_as_the_eager_step(fake_capture, clip):
    """Warm-up, capture at the 4th full batch, that step replayed (not skipped), a partial batch
    eager in between, replays after: the eager step's weights, losses and norms, bit for bit."""
    steps = (1, 1, 1, 1, 0, 1, 1, 1)
    a, _, _, la, na = _train("gru", "eager", clip, batches=_batches(steps=steps), recurrence="graph")
    b, _, gb, lb, nb = _train("gru", "graph", clip, batches=_batches(steps=steps), recurrence="graph")
    assert (gb.captures, gb.replays) == (1, 4)
    # the recurrence's own graph path: built in the eager run; in the warm-up and the capture the
    # eager Function runs inline (graphs.inline), as a real capture records it
    assert (a.rnns[0].graphs.captures, b.rnns[0].graphs.captures) == (1, 0)
    assert_bitwise_equal(a.state_dict(), b.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(la, lb))
    assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(na, nb))
    assert all(p.grad is g for p, g in zip(gb.params, gb.grads))  # the graph's gradients, after a replay


@pytest.mark.parametrize("opts", [dict(lr_schedule="cosine", lr_horizon_epochs=2, lr_min_ratio=0.1),
                                  dict(own_input_prob=0.5, own_input_ramp_epochs=1.0)], ids=["cosine", "own-input-ramp"])
def test_a_run_through_the_capture_path_is_the_eager_run(data, tmp_path, fake_capture, opts):
    """The trainer with the capture path: the eager run bit for bit. With own_input_prob ramped up
    from 0 the first step feeds the window and the later ones x: the graph follows the shape."""
    e, g = tmp_path / "eager", tmp_path / "graph"
    sched = opts
    main(tiny_config(data, epochs=2, step_graph="eager", **sched), e)
    main(tiny_config(data, epochs=2, step_graph="graph", **sched), g)
    ts = [t for t in fake_capture if t.mode == "graph"][0]
    assert ts.captures == 1 and ts.replays > 10
    assert_bitwise_equal(weights(e), weights(g))
    he, hg = read_jsonl(e / "metrics.jsonl"), read_jsonl(g / "metrics.jsonl")
    for k in ("train_loss", "dev_loss", "lr", "grad_norm"):
        assert [h[k] for h in he] == [h[k] for h in hg], k
