"""One training step, eager or replayed from one CUDA graph (``TrainStep``).

A step is the forward pass, eq. 1's L2 loss (a gaussian head: its negative log-likelihood), the
backward pass, the optional gradient clip and the optimizer's update. At the paper's shape
(D = 22050, H = 2048, batch 5) it moves about 3.5 GB of memory, 0.75 ms on an H200, yet took
7.4 ms eagerly: the rest was the launch of a few hundred small kernels from Python (issue 23).
Replayed from one CUDA graph, they are launched at once.

What makes the step capturable, and what this module does about each:

- **A static shape.** A graph replays on fixed addresses, so the step's inputs are copied into
  fixed buffers. The trainer's full batches share one shape, the first one ``TrainStep`` is
  given with the batch it was told is full; any other (an epoch's last partial batch) takes the
  eager step, which computes the same update.
- **A capturable optimizer.** Its step counter and learning rate live on the device
  (``optim.make_optimizer(..., capturable=True)``); a scheduled lr is written into that tensor before each step
  (``set_lr``), never baked into the graph. SGD has no capturable form in torch, so SGD with a
  schedule stays eager.
- **No host sync inside.** The loss comes back as a device tensor; the clip's norm stays there.
- **One process.** DDP's all-reduce is not captured: with world_size > 1 the step is eager.
- **Autocast without its cast cache** (``cache_enabled=False``), as torch's CUDA-graph notes ask:
  the cache would keep casts made during the capture.

The recurrences' own graphs (cells/graphs.py) step aside inside this capture, so their eager
Functions, the same kernels, are captured inline.

On CUDA the static shape's first ``CAPTURE_AT - 1`` steps run eagerly on a side stream, the one
the capture then records on (lazy initialisation, cuBLAS handles and workspaces, the optimizer's
state, must not happen in the capture); the next is captured and every later one replayed. The recurrences take their eager Functions in
the warm-up as in the capture (``graphs.inline``). Should a capture fail, the failure is warned,
and that step and every later one of this ``TrainStep`` are taken eagerly (``failed``). On the CPU
``step_graph=graph`` runs the same buffers and copies without capturing: what CI tests.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F

from gruv_hpc.training.cells import graphs as recurrence_graphs
from gruv_hpc.training.config import STEP_GRAPHS, graph_unsupported

CAPTURE_AT = 4  # the static shape's 4th step is captured; the three before warm up (as torch's example does)


def step_graph_mode(requested: str, device, world: int, optimizer: str = "rmsprop",
                    lr_schedule: str = "constant") -> str:
    """'graph' or 'eager'. ``auto``: the graph on CUDA with one process and a capturable
    optimizer, else eager. ``graph`` on the CPU runs the graph path without capturing."""
    if requested not in STEP_GRAPHS:
        raise ValueError(f"step_graph {requested!r} is not one of {', '.join(STEP_GRAPHS)}")
    if requested == "auto":
        cuda = torch.device(device).type == "cuda"
        requested = "graph" if cuda and world == 1 and not graph_unsupported(optimizer, lr_schedule) else "eager"
    return requested


def wants_capturable(mode: str, device) -> bool:
    """Whether a step in this mode on this device needs the capturable optimizer: a real capture,
    so the graph on CUDA (the CPU's graph path captures nothing)."""
    return mode == "graph" and torch.device(device).type == "cuda"


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group's lr: written into its tensor (a capturable optimizer's, which a graph reads)
    or set as a number."""
    for g in optimizer.param_groups:
        _set_group_lr(g, lr)


def _set_group_lr(g: dict, lr: float) -> None:
    if isinstance(g["lr"], torch.Tensor):
        g["lr"].fill_(lr)  # a kernel launch with the value as its argument: no host sync
    else:
        g["lr"] = lr


def conform_optimizer(optimizer: torch.optim.Optimizer, built: list[dict]) -> float:
    """After ``optimizer.load_state_dict``: give its groups back this process's own device flags
    and lr object (``optimizer_flags`` at construction), keeping the loaded lr's value. torch
    takes them from the checkpoint, so a run checkpointed with the graph (a capturable optimizer,
    a tensor lr) and resumed eagerly or on the CPU would otherwise inherit them, and the other way
    round. The step counters go where these flags want them: the device if capturable or fused,
    else the CPU. Returns the (first group's) loaded lr, as a number."""
    lrs = []
    for g, own in zip(optimizer.param_groups, built):
        lr = float(g["lr"])
        lrs.append(lr)
        g.update({k: v for k, v in own.items() if k != "lr"})
        g["lr"] = own["lr"]  # this process's own object: a tensor a graph may read, or a number
        _set_group_lr(g, lr)
        on_device = bool(g.get("capturable")) or bool(g.get("fused"))
        for p in g["params"]:
            st = optimizer.state.get(p)
            if st and isinstance(st.get("step"), torch.Tensor):
                # as torch's own load does: float32 on the device for a capturable or fused optimizer
                st["step"] = st["step"].to(dtype=torch.float32, device=p.device) if on_device else st["step"].cpu()
    return lrs[0]


def optimizer_flags(optimizer: torch.optim.Optimizer) -> list[dict]:
    """Each group's device flags and lr object, as built (for ``conform_optimizer``)."""
    keys = ("lr", "foreach", "fused", "capturable")
    return [{k: g[k] for k in keys if k in g} for g in optimizer.param_groups]


def _capture(fn, device, stream):
    """``fn`` captured as a CUDA graph on ``stream`` (recorded, not run): the graph and ``fn``'s
    outputs, which each replay overwrites. Looked up at call time, so that a test can make a
    capture fail."""
    with torch.cuda.device(device):
        cur = torch.cuda.current_stream(device)
        g = torch.cuda.CUDAGraph()
        try:
            # thread_local: another thread's CUDA calls (a watchdog) cannot spoil the capture
            with torch.cuda.graph(g, stream=stream, capture_error_mode="thread_local"), recurrence_graphs.inline():
                out = fn()
        finally:
            # torch.cuda.graph's exit ends the capture before it restores the stream: a failed
            # capture would leave every later step on the capture's stream
            torch.cuda.set_stream(cur)
    return g, out


class TrainStep:
    """Calls as ``step(inp, y, drop_last) -> (loss, clip norm or None)``, both device tensors:
    one whole training step of ``model`` (called through ``forward``: the DDP wrapper or the model
    itself). ``mode``: 'graph' or 'eager' (``step_graph_mode``). ``full_batch``: the batch size of
    a full batch, the one shape the graph is built for. ``captures``/``replays`` count for tests
    and benchmarks."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, mode: str, device,
                 grad_clip: float = 0.0, amp: bool = False, full_batch: int | None = None, forward=None,
                 free: int = 0, free_noise: float = 0.0):
        self.optimizer, self.mode = optimizer, mode
        # rollout_frames and rollout_noise: passed only when on (the paper's call as it was)
        self.free = {"free": free, "free_noise": free_noise} if free else {}
        # the model's head = gaussian: the objective is the negative log-likelihood (asked of the model, which
        # knows its head, so a caller cannot pair a gaussian model with the mean head's loss)
        self.gaussian = getattr(model, "head", "mean") == "gaussian"
        self.forward = forward or model
        self.device = torch.device(device)
        self.grad_clip, self.full_batch = grad_clip, full_batch
        self.params = [p for p in model.parameters() if p.requires_grad]
        cuda_amp = amp and self.device.type == "cuda"
        self._amp = (lambda cache: torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)) if cuda_amp \
            else (lambda cache: contextlib.nullcontext())
        self.capture = self.device.type == "cuda"
        self.key = None          # the static shape: (inp shape, y shape, drop_last)
        self.uses = 0            # steps of the static shape so far
        self.static = None       # (inp, y) buffers, once built
        self.graph = self.out = self.grads = None
        self.captures = self.replays = 0
        self._stream = None      # the warm-up's and the capture's stream (CUDA)
        self.failed = False      # a capture failed: every step eager from then on

    # -- the step itself, as both paths compute it ------------------------------------------
    def _compute(self, inp, y, drop_last: bool, cache: bool, zero_grad: bool, **kw):
        with self._amp(cache):
            head = {"logvar": True} if self.gaussian else {}  # the mean head's call as it was
            out = self.forward(inp, drop_last=drop_last, **self.free, **kw, **head)
        if self.gaussian:
            pred, logvar, _ = out
            # The Gaussian NLL per dimension (torch's, without its constant) is what is minimized; the loss
            # returned and logged stays eq. 1's MSE of the mean, the measure of dev loss and the floors.
            objective = F.gaussian_nll_loss(pred.float(), y, logvar.float().exp())
            loss = F.mse_loss(pred.detach().float(), y)
        else:
            pred, _ = out
            loss = objective = F.mse_loss(pred.float(), y)  # eq. 1, in normalized units
        if zero_grad:  # here, after the forward, as the eager loop always did (a capture has none: see _build)
            self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip) if self.grad_clip > 0 else None
        self.optimizer.step()
        return loss.detach(), norm

    def eager(self, inp, y, drop_last: bool, **kw):
        return self._compute(inp, y, drop_last, cache=True, zero_grad=True, **kw)

    # -- the graph path ------------------------------------------------------------------------
    def __call__(self, inp, y, drop_last: bool, **kw):
        """``kw``: more for the model's forward this step (rollout_noise's generator); a step with
        any runs eagerly (a graph replays fixed inputs)."""
        if self.mode != "graph" or self.failed or kw:
            return self.eager(inp, y, drop_last, **kw)
        key = (tuple(inp.shape), tuple(y.shape), drop_last, inp.dtype)
        if self.static is None and key != self.key and (self.full_batch is None or inp.shape[0] == self.full_batch):
            # a full batch's shape, until the graph is built: a shape that changes early (own_input_prob
            # ramped up from 0 gives the model x instead of the window) is followed
            self.key, self.uses = key, 0
        if key != self.key:
            return self.eager(inp, y, drop_last)  # another shape (a partial batch): the same update, eagerly
        self.uses += 1
        if self.static is None:
            if self.capture and self.uses < CAPTURE_AT:
                return self._warm_up(inp, y, drop_last)
            try:
                self._build(inp, y, drop_last)
            except Exception as e:  # noqa: BLE001 - any capture failure: the eager step from now on
                self._fail(e)
                return self.eager(inp, y, drop_last)
        self.static[0].copy_(inp)
        self.static[1].copy_(y)
        if self.graph is None:  # the CPU: the same buffers, no capture
            return self.eager(*self.static, drop_last)
        self.graph.replay()
        self.replays += 1
        for p, g in zip(self.params, self.grads):
            p.grad = g  # the graph's gradients, which it overwrote: what an eager step would leave there
        return self.out

    def _side_stream(self):
        """The stream the warm-up steps run on and the capture records on: the same one, so that
        what the library creates per stream on first use (cuBLAS handles and workspaces) exists
        before the capture (a lazy creation inside it fails the capture)."""
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        return self._stream

    def _warm_up(self, inp, y, drop_last):
        side = self._side_stream()
        with recurrence_graphs.inline():  # the code the capture will record
            if side is None:  # (a test's stand-in for CUDA on the CPU)
                return self.eager(inp, y, drop_last)
            cur = torch.cuda.current_stream(self.device)
            side.wait_stream(cur)
            with torch.cuda.stream(side):
                loss, norm = self.eager(inp, y, drop_last)
            cur.wait_stream(side)
        return loss, norm

    def _build(self, inp, y, drop_last):
        self.static = (inp.detach().clone(), y.detach().clone())
        if not self.capture:
            return
        # The gradients are made inside the capture, from its memory pool: each replay overwrites
        # them (no zero_grad in the graph).
        self.optimizer.zero_grad(set_to_none=True)
        step = (lambda: self._compute(*self.static, drop_last, cache=False, zero_grad=False))
        self.graph, self.out = _capture(step, self.device, self._side_stream())
        self.grads = [p.grad for p in self.params]
        self.captures += 1

    def _fail(self, err: BaseException) -> None:
        # A failed capture's own error is often "operation failed due to a previous error": the
        # cause is the exception it was raised while handling.
        why = f"{type(err).__name__}: {err}"
        if err.__context__ is not None:
            why += f" (after {type(err.__context__).__name__}: {err.__context__})"
        warnings.warn(f"capturing the training step as a CUDA graph failed ({why}); taking every step eagerly "
                      "from now on", RuntimeWarning, stacklevel=3)
        self.failed = True
        # A failed capture ran nothing (kernels are recorded, not run); gradients it may have left
        # behind are dropped by the eager step's zero_grad(set_to_none=True).
        self.static = self.graph = self.out = self.grads = None
