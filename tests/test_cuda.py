"""The CUDA paths: every cell forward and backward against a CPU float64 reference, gradcheck of
the peephole LSTM's and the GRU's recurrences (eager Function and CUDA graphs) in float64 on the
GPU, bf16 autocast against float32, training steps without a host sync, a checkpoint from the
GPU loaded on the CPU, the resident dataset on the GPU.

Marked ``cuda``; skipped without a GPU (CI has none). ``GRUV_REQUIRE_CUDA=1`` (bench/gpu_check.sh)
turns the skip into a failure; ``GRUV_CUDA_TESTS_ON_CPU=1`` (``gpu_check.sh --cpu``) runs the same
tests on the CPU instead, so that they cannot rot where no GPU is. Tolerances are stated per test.
"""
import contextlib
import os

import pytest
import torch

from gruv_hpc.training.cells import graphs as M
from gruv_hpc.training import cells
from gruv_hpc.training.cells.gru import GRUFunction, GraphedGRURecurrence
from gruv_hpc.training.cells.lstm import GraphedRecurrence, PeepholeLSTMFunction
from gruv_hpc.training.model import GRUVModel

pytestmark = pytest.mark.cuda

BF16_REL_TOL = 0.02  # |loss_bf16 - loss_fp32| / loss_fp32 under bf16 autocast (bf16 keeps 8 significant bits)


@contextlib.contextmanager
def fp32_reference():
    """Plain fp32 matmuls (no TF32) inside, the previous flags back after. Saved and restored by
    assignment: these flags are properties of torch's backend modules, not attributes in their
    __dict__, and monkeypatch.setattr's undo deletes such an attribute (pytest >= 9.2), which fails."""
    mm, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = mm.allow_tf32, cudnn.allow_tf32
    mm.allow_tf32 = cudnn.allow_tf32 = False
    try:
        yield
    finally:
        mm.allow_tf32, cudnn.allow_tf32 = saved


@contextlib.contextmanager
def no_sync(dev):
    """torch.cuda.set_sync_debug_mode("error") inside, on CUDA: a host sync is an error. Nothing on the CPU."""
    if dev.type != "cuda":
        yield
        return
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.fixture
def dev(monkeypatch):
    if torch.cuda.is_available():
        d = torch.device("cuda", torch.cuda.current_device())
    elif os.environ.get("GRUV_CUDA_TESTS_ON_CPU") == "1":
        d = torch.device("cpu")
    elif os.environ.get("GRUV_REQUIRE_CUDA") == "1":
        pytest.fail("GRUV_REQUIRE_CUDA=1 but torch sees no GPU")
    else:
        pytest.skip("no GPU")
    monkeypatch.setattr(M, "_graphs_failed", False)
    monkeypatch.delenv(M.RECURRENCE_ENV, raising=False)
    # Reference precision: plain fp32 matmuls (no TF32) on the GPU while comparing with float64.
    with fp32_reference():
        yield d


def test_reference_precision_flags_are_restored_by_assignment():
    """What monkeypatch cannot undo with pytest 9.2: the TF32 flags come back as they were."""
    mm = torch.backends.cuda.matmul
    assert "allow_tf32" not in vars(mm)  # a property: a setattr's undo by delattr would fail
    before = mm.allow_tf32
    try:
        mm.allow_tf32 = True
        with fp32_reference():
            assert mm.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False
        assert mm.allow_tf32 is True
    finally:
        mm.allow_tf32 = before


def _grads(m):
    return {n: p.grad.detach().double().cpu() for n, p in m.named_parameters()}


@pytest.mark.parametrize("cell", ["lstm", "gru", "lstm-fused"])
def test_cell_on_device_matches_cpu_float64(dev, cell):
    """fp32 on the device vs float64 on the CPU: outputs and every gradient within 1e-4 (relative
    to the largest value), three steps with the same weights (the graph path captures at the second)."""
    torch.manual_seed(0)
    ref = GRUVModel(dim=24, hidden=16, cell=cell, layers=2).double()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if n.endswith(".v"):
                p.normal_()  # make the peepholes matter
    m = GRUVModel(dim=24, hidden=16, cell=cell, layers=2).to(dev)
    m.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    x, y = torch.randn(3, 12, 24, dtype=torch.float64), torch.randn(3, 12, 24, dtype=torch.float64)
    ref.zero_grad()
    pr, _ = ref(x)
    torch.nn.functional.mse_loss(pr, y).backward()
    gr = _grads(ref)
    for _ in range(3):
        m.zero_grad()
        pm, _ = m(x.float().to(dev))
        torch.nn.functional.mse_loss(pm, y.float().to(dev)).backward()
        assert (pm.double().cpu() - pr).abs().max() <= 1e-4 * pr.abs().max()
        for n, g in _grads(m).items():
            assert (g - gr[n]).abs().max() <= 1e-4 * max(gr[n].abs().max(), 1e-3), n
    if cell in ("lstm", "gru") and dev.type == "cuda":
        assert all(r.graphs.captures == 1 for r in m.rnns)  # the CUDA graph path ran, one graph per layer


def _fn_args(dev, T=5, B=2, H=3):
    torch.manual_seed(0)
    args = [torch.randn(T, 4, B, H), torch.randn(4, H, H), torch.randn(3, H), torch.randn(B, H), torch.randn(B, H)]
    return [a.double().to(dev).requires_grad_() for a in args]


def test_peephole_function_gradcheck_on_device(dev):
    assert torch.autograd.gradcheck(lambda *a: tuple(PeepholeLSTMFunction.apply(*a)), _fn_args(dev))


def test_graphed_recurrence_gradcheck_and_equality_on_device(dev):
    """The graph path (captured on CUDA), float64: gradcheck replays the same graph with new inputs;
    its outputs and gradients equal the eager Function's within 1e-12."""
    runner = GraphedRecurrence(min_steps=1)
    args = _fn_args(dev)
    assert torch.autograd.gradcheck(lambda *a: tuple(runner(*a)), args)
    assert runner.captures == 1
    outs = []
    for f in (lambda *a: PeepholeLSTMFunction.apply(*a), runner):
        hs, h, c = f(*args)
        grads = torch.autograd.grad(hs.pow(2).sum() + h.sum() + c.sum(), args)
        outs.append([hs, h, c, *grads])
    for a, b in zip(*outs):
        assert (a - b).abs().max() <= 1e-12


def _gru_args(dev, T=5, B=2, H=3):
    torch.manual_seed(0)
    args = [torch.randn(T, 3, B, H), torch.randn(2, H, H), torch.randn(H, H), torch.randn(B, H)]
    return [a.double().to(dev).requires_grad_() for a in args]


def test_gru_function_gradcheck_on_device(dev):
    assert torch.autograd.gradcheck(lambda *a: tuple(GRUFunction.apply(*a)), _gru_args(dev))


def test_graphed_gru_gradcheck_and_equality_on_device(dev):
    """The GRU's graph path (captured on CUDA), float64: gradcheck replays the same graph with new
    inputs; outputs and gradients equal the eager GRUFunction's within 1e-12 (bitwise on the CPU,
    where the same code runs without the capture)."""
    runner = GraphedGRURecurrence(min_steps=1)
    args = _gru_args(dev)
    assert torch.autograd.gradcheck(lambda *a: tuple(runner(*a)), args)
    assert runner.captures == 1
    outs = []
    for f in (lambda *a: GRUFunction.apply(*a), runner):
        hs, h = f(*args)
        grads = torch.autograd.grad(hs.pow(2).sum() + h.sum(), args)
        outs.append([hs, h, *grads])
    for a, b in zip(*outs):
        assert (a - b).abs().max() <= 1e-12
        if dev.type == "cpu":
            assert torch.equal(a, b)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_graph_path_trains_like_eager_on_device(dev, cell):
    """A model with the graph path and one with the eager Function, same weights, 4 RMSprop steps
    (the training optimizer) under the training's autocast: the same weights, bitwise on the CPU
    and within 1e-5 (relative) on CUDA, where cuBLAS may pick other kernels inside a capture."""
    from gruv_hpc.training.config import TrainConfig
    from gruv_hpc.training.trainer import make_optimizer
    torch.manual_seed(0)
    a = GRUVModel(dim=24, hidden=16, cell=cell, recurrence="eager").to(dev)
    b = GRUVModel(dim=24, hidden=16, cell=cell, recurrence="graph").to(dev)
    b.load_state_dict(a.state_dict())
    oa, ob = (make_optimizer(TrainConfig(), m.parameters()) for m in (a, b))
    x, y = torch.randn(3, 12, 24, device=dev), torch.randn(3, 12, 24, device=dev)
    for _ in range(4):
        for m, o in ((a, oa), (b, ob)):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                pred, _ = m(x)
            o.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(pred.float(), y).backward()
            o.step()
    assert b.rnns[0].graphs.captures == 1
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        if dev.type == "cpu":
            assert torch.equal(p, q), n
        else:
            assert (p - q).abs().max() <= 1e-5 * max(p.abs().max(), 1e-3), n


def test_training_steps_do_not_sync_the_host(dev):
    """Every cell's training step as the trainer takes it (autocast, the loss summed on the device,
    the optimizer of make_optimizer, the once-an-epoch gradient norm) under
    torch.cuda.set_sync_debug_mode("error"): a host sync in the loop is an error. The first steps
    (where the graphs are captured: a capture synchronizes) run before. On the CPU the same steps
    run without the check."""
    from gruv_hpc.training.config import TrainConfig
    from gruv_hpc.training.trainer import make_optimizer

    for cell in cells.names():
        torch.manual_seed(0)
        m = GRUVModel(dim=32, hidden=16, cell=cell).to(dev)
        opt = make_optimizer(TrainConfig(), m.parameters())
        x, y = torch.randn(2, 10, 32, device=dev), torch.randn(2, 10, 32, device=dev)
        total = torch.zeros((), device=dev)

        def step():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                pred, _ = m(x)
            loss = torch.nn.functional.mse_loss(pred.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.get_total_norm([p.grad for p in m.parameters()])
            opt.step()
            total.add_(loss.detach())
            return norm

        for _ in range(3):
            step()
        with no_sync(dev):
            for _ in range(3):
                norm = step()
        assert torch.isfinite(total) and torch.isfinite(norm), cell


def test_whole_step_graph_trains_like_eager_without_host_syncs(dev, monkeypatch):
    """The training step replayed from one CUDA graph (training/step.py) against the same step
    taken eagerly with the same optimizer (capturable on CUDA), under the training's autocast, a
    scheduled lr written before each step, gradient clipping, and a partial batch after the
    capture: the same weights and losses, bitwise on the CPU (no capture there), within 1e-5
    (relative) on CUDA. Then more replays under set_sync_debug_mode("error"): no host sync, and
    the lr written into the graph's tensor is the one it uses."""
    from gruv_hpc.training import step as S
    from gruv_hpc.training.config import TrainConfig
    from gruv_hpc.training.trainer import make_optimizer
    cuda = dev.type == "cuda"
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(3 if full else 2, 13, 24, generator=g).to(dev) for full in (1, 1, 1, 1, 0, 1, 1)]
    for cell in ("lstm", "gru"):
        models, steps = [], []
        for mode in ("eager", "graph"):
            torch.manual_seed(0)
            m = GRUVModel(dim=24, hidden=16, cell=cell).to(dev)
            o = make_optimizer(TrainConfig(), m.parameters(), capturable=cuda)
            models.append(m)
            steps.append(S.TrainStep(m, o, mode=mode, device=dev, grad_clip=1.0, amp=True, full_batch=3))
        losses = [[], []]
        for i, win in enumerate(batches):
            for ts, ls in zip(steps, losses):
                S.set_lr(ts.optimizer, 1e-3 * (1 - 0.1 * i))
                ls.append(ts(win, win[:, 1:], True)[0].clone())
        if cuda:
            assert steps[1].captures == 1 and steps[1].replays == 3, cell  # 3 warm-up steps, then captured
        for a, b in zip(*losses):
            assert torch.equal(a, b) if not cuda else (a - b).abs() <= 1e-5 * a.abs(), cell
        for (n, p), q in zip(models[0].named_parameters(), models[1].parameters()):
            if cuda:
                assert (p - q).abs().max() <= 1e-5 * max(p.abs().max(), 1e-3), (cell, n)
            else:
                assert torch.equal(p, q), (cell, n)
        params = list(models[1].parameters())
        snaps = [[p.detach().clone() for p in params]]
        total = torch.zeros((), dtype=torch.float64, device=dev)
        with no_sync(dev):
            for lr in (5e-4, 0.0):
                S.set_lr(steps[1].optimizer, lr)
                loss, norm = steps[1](batches[0], batches[0][:, 1:], True)
                total += loss
                snaps.append([p.detach().clone() for p in params])  # device copies: no sync
        assert steps[1].replays == (5 if cuda else 0), cell
        moved = [any(not torch.equal(a, b) for a, b in zip(x, y)) for x, y in zip(snaps, snaps[1:])]
        assert moved == [True, False], cell  # lr 5e-4 moved the weights, lr 0 (written into the graph's tensor) not
        assert torch.isfinite(total) and torch.isfinite(norm), cell


def test_bf16_autocast_loss_close_to_fp32(dev):
    """The training step's loss under bf16 autocast within BF16_REL_TOL of the fp32 loss, for every cell."""
    for cell in cells.names():
        torch.manual_seed(0)
        m = GRUVModel(dim=64, hidden=32, cell=cell).to(dev)
        x, y = torch.randn(4, 20, 64, device=dev), torch.randn(4, 20, 64, device=dev)
        with torch.no_grad():
            ref = torch.nn.functional.mse_loss(m(x)[0].float(), y)
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                pred, _ = m(x)
            low = torch.nn.functional.mse_loss(pred.float(), y)
        assert pred.dtype == torch.bfloat16
        assert abs(low.item() - ref.item()) <= BF16_REL_TOL * ref.item(), (cell, low.item(), ref.item())


def test_checkpoint_from_device_loads_on_cpu(dev, tmp_path):
    """A model and optimizer trained a step on the device, saved, loaded with map_location=cpu: equal."""
    from gruv_hpc.training.checkpoint import Checkpointer
    from gruv_hpc.paths import RunPaths
    from gruv_hpc.training.trainer import make_optimizer
    from gruv_hpc.training.config import TrainConfig
    torch.manual_seed(0)
    m = GRUVModel(dim=32, hidden=16).to(dev)
    opt = make_optimizer(TrainConfig(), m.parameters())
    x = torch.randn(2, 10, 32, device=dev)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        pred, _ = m(x)
    torch.nn.functional.mse_loss(pred.float(), x).backward()
    opt.step()
    ck = Checkpointer(RunPaths(tmp_path), every_epochs=1, every_min=10, keep_last=2)
    ck.save({"model": m.state_dict(), "optimizer": opt.state_dict()}, step=1)
    st, path = ck.load_latest(map_location="cpu")
    assert path is not None
    for k, v in m.state_dict().items():
        assert st["model"][k].device.type == "cpu" and torch.equal(st["model"][k], v.cpu()), k
    for k, s in opt.state_dict()["state"].items():
        for name, t in s.items():
            assert torch.equal(st["optimizer"]["state"][k][name], t.cpu()), (k, name)
    cpu_model = GRUVModel(dim=32, hidden=16)
    cpu_model.load_state_dict(st["model"])
    with torch.no_grad():
        assert (cpu_model(x.cpu())[0] - m(x)[0].cpu()).abs().max() <= 1e-4


def test_resident_batches_on_device_equal_streaming(dev, data):
    """The resident clips on the device give the very batches the DataLoader streams."""
    from torch.utils.data import DataLoader
    from gruv_hpc.dataset import resident
    from gruv_hpc.dataset.clips import ClipDataset, batch_collate
    from gruv_hpc.training.trainer import ResumableSampler
    train, dev_set = ClipDataset(data, "train", as_blocks=True), ClipDataset(data, "dev", as_blocks=True)
    s1, s2 = (ResumableSampler(train, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True) for _ in range(2))
    tr, dv = resident.build_loaders("true", dev, 1, train, dev_set, range(len(dev_set)), s1, 4, log=lambda _: None)
    assert tr.clips.data.device == dev
    for s in (s1, s2):
        s.set_epoch(3)
        s.skip = 4
    ref = DataLoader(train, batch_size=4, sampler=s2, drop_last=True, collate_fn=batch_collate)
    got = list(tr)
    assert len(got) == len(ref) > 0
    for a, b in zip(got, ref):
        assert a.device == dev and torch.equal(a.cpu(), b)
