"""The GRUV model: affine (D->H), recurrent layer(s), affine (H->D).

The recurrent cells (the paper's peephole LSTM and GRU, torch.nn.LSTM for comparison) and their
registry are in gruv_hpc.training.cells: the model asks the registry for the layer of its cell.
"""
from __future__ import annotations

import torch
from torch import nn

from gruv_hpc.training import cells
from gruv_hpc.training.config import HEADS, PREDICT


def make_cell(cell: str, input_size: int, hidden: int, recurrence: str = "auto") -> nn.Module:
    return cells.get(cell).make(input_size, hidden, recurrence)


class GRUVModel(nn.Module):
    """affine (D->H), ``layers`` recurrent layers, affine (H->D). Causal: step t sees steps <= t.

    ``predict="delta"``: the prediction of frame t + 1 is frame t plus the output affine's value
    (all in normalized units), so with zero output weights and bias the model is persistence
    (next = current), the floor a model of log-magnitude music must beat; with "next" (the
    paper's) the bottleneck D -> H -> D has to learn to copy its input before it can do as well.
    ``predict="damped"``: frame t times a learned per-dimension gain (initialized to 1), plus the
    output affine's value. It starts as ``delta`` (persistence) and can learn what the linear floor
    knows: that a bin's deviation from its mean decays (gain < 1). A free run then forgets what
    was fed back at the rate the gain sets, so noise fed back (``--temperature``) stays bounded
    instead of adding up as a random walk, as it does under ``delta`` (gain exactly 1).
    Whoever feeds predictions back calls ``forward`` or ``rollout``, which both add the frame.

    ``head="gaussian"``: a second affine H->D gives each prediction a per-dimension log-variance
    (``forward(..., logvar=True)``), trained on the Gaussian negative log-likelihood; ``sample``
    then draws each fed-back frame at the model's own spread for that frame. The prediction itself
    (the mean) is computed as with ``head="mean"`` (the paper's), whose parameters and checkpoints
    are as before."""

    def __init__(self, dim: int, hidden: int, cell: str = cells.DEFAULT, layers: int = 1, recurrence: str = "auto",
                 predict: str = "next", head: str = "mean"):
        super().__init__()
        if predict not in PREDICT:
            raise ValueError(f"predict: {predict!r} is not one of {', '.join(PREDICT)}")
        if head not in HEADS:
            raise ValueError(f"head: {head!r} is not one of {', '.join(HEADS)}")
        self.dim, self.hidden, self.cell, self.layers = dim, hidden, cell, layers
        self.predict, self.head = predict, head
        self.inp = nn.Linear(dim, hidden)
        self.rnns = nn.ModuleList(make_cell(cell, hidden, hidden, recurrence) for _ in range(layers))
        self.out = nn.Linear(hidden, dim)
        if predict == "damped":  # only then: the other modes' parameters (and checkpoints) are as before
            self.gain = nn.Parameter(torch.ones(dim))
        if head == "gaussian":  # made last: the other parameters draw the same initial values as the mean head's
            # zero weights and bias: variance 1 at the start, the normalized data's own spread
            self.logvar = nn.Linear(hidden, dim)
            nn.init.zeros_(self.logvar.weight)
            nn.init.zeros_(self.logvar.bias)

    @classmethod
    def from_config(cls, cfg) -> "GRUVModel":
        """The model a TrainConfig (with its feature_dim resolved) describes: training and
        generation build it here alike."""
        return cls(cfg.feature_dim, cfg.hidden, cfg.cell, cfg.layers, predict=cfg.predict, head=cfg.head)

    def forward(self, x, state=None, drop_last: bool = False, free: int = 0, free_noise: float = 0.0,
                generator: torch.Generator | None = None, logvar: bool = False):
        """x: (B, T, D) -> predictions (B, T, D) of the next block, and the final recurrent state.

        ``drop_last``: x is a whole (B, T + 1, D) window and its last step is dropped after the
        input affine. Training passes its contiguous batch so: x = window[:, :-1] is a strided
        view that the input GEMM would first copy (a batch-sized buffer), while one more row per
        clip in that GEMM costs 1/T of it.

        ``free`` (training's ``rollout_frames``): the last ``free`` predictions come from the
        model's own free run instead: after the first T - free input frames, each prediction is
        fed back as the next input, with gradients through the feedback, as generation runs.
        ``free_noise`` (``rollout_noise``): Gaussian noise of that sigma, from ``generator`` (the
        trainer's, seeded by the step), added to each prediction fed back, as sampled generation
        feeds back draws.

        ``logvar`` (a gaussian head only): also return each prediction's per-dimension
        log-variance (B, T, D), as (predictions, log-variances, state)."""
        if logvar and self.head != "gaussian":
            raise ValueError(f"logvar: the model's head is {self.head!r}, which has no variance")
        if free > 0:
            y, h, state = self._forward_free(x[:, :-1] if drop_last else x, free, state, free_noise, generator)
        else:
            z = self.inp(x)
            h, state = self.recur(z[:, :-1] if drop_last else z, state)
            y = self._head(h, x[:, :-1] if drop_last else x)
        return (y, self.logvar(h), state) if logvar else (y, state)

    def _head(self, h, cur):
        """The prediction from the top layer's hidden state ``h`` and the current frame ``cur``."""
        y = self.out(h)
        if self.predict != "next":
            y = y + (cur * self.gain if self.predict == "damped" else cur)
        return y

    def _forward_free(self, x, free: int, state=None, noise: float = 0.0, generator=None):
        """``forward`` with its last ``free`` predictions from a free run (at most T - 1: one frame
        of data starts it): the predictions, the top layer's hidden states and the final state."""
        t = x.shape[1]
        free = min(int(free), t - 1)
        h, state = self.recur(self.inp(x[:, : t - free]), state)
        y = self._head(h, x[:, : t - free])
        preds, hs, cur = [y], [h], y[:, -1:]
        for _ in range(free):
            fed = cur
            if noise > 0:
                fed = cur + noise * torch.randn(cur.shape, generator=generator, device=cur.device).to(cur.dtype)
            h, state = self.recur(self.inp(fed), state)
            cur = self._head(h, fed)
            preds.append(cur)
            hs.append(h)
        return torch.cat(preds, 1), torch.cat(hs, 1), state

    def recur(self, z, state=None):
        """The recurrent layers alone: (B, T, H) -> top layer's hidden sequence, new state."""
        new_state = []
        for k, rnn in enumerate(self.rnns):
            z, s = rnn(z, None if state is None else state[k])
            new_state.append(s)
        return z, new_state

    @torch.no_grad()
    def rollout(self, seed: torch.Tensor, n: int, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Free-running: seed (T0, D) normalized -> the next n predicted frames (n, D), each fed
        back as the next input. Linear in n. ``noise`` (n - 1, D): added to each prediction before
        it is fed back; the frames returned are the predictions themselves.

        Feeding a prediction back in is out(h) followed by inp(.): two affine maps with nothing in
        between, so they compose into one H x H map (computed once per call). Each step then costs
        only H-sized work; the D-sized output layer runs once, batched, over all the steps. With
        ``predict="delta"`` the fed-back frame is the current one plus out(h), so its input affine
        is the current one's plus the same composed map (less inp's bias), and the predictions
        are the seed's last frame plus the running sum of the outputs (and of the noise fed back).
        The result equals feeding every prediction back through ``forward`` (generation's
        ``generate_refeed``) up to float rounding, which a trained recurrent model can amplify."""
        if self.predict == "damped":
            return self._rollout_damped(seed, n, noise)
        z_seed = self.inp(seed.unsqueeze(0))
        h, state = self.recur(z_seed)
        h = h[:, -1:]
        w_in = self.inp.weight
        delta = self.predict == "delta"
        feed_w = (w_in @ self.out.weight).to(h.dtype)  # inp(out(h)) = feed_w h + feed_b
        feed_b = (w_in @ self.out.bias if delta else torch.addmv(self.inp.bias, w_in, self.out.bias)).to(h.dtype)
        noise_in = None if noise is None else (noise.to(w_in.dtype) @ w_in.t()).to(h.dtype)  # inp(out(h) + e) adds w_in e
        z = z_seed[0, -1:].to(h.dtype)
        hs = [h]
        for k in range(n - 1):
            x = torch.addmm(feed_b, h[0], feed_w.t())
            if delta:
                x = x + z  # inp(current + out(h))
            if noise_in is not None:
                x = x + noise_in[k]
            z = x
            h, state = self.recur(x.unsqueeze(0), state)
            hs.append(h)
        out = self.out(torch.cat(hs, 1))[0]
        if not delta:
            return out
        fed = out.cumsum(0)
        if noise is not None and n > 1:
            fed[1:] += noise.to(fed.dtype)[: n - 1].cumsum(0)
        return seed[-1] + fed

    def _rollout_damped(self, seed: torch.Tensor, n: int, noise: torch.Tensor | None) -> torch.Tensor:
        """``rollout`` for ``predict="damped"``: the gain acts on the frame itself, so the frame is
        kept (D-sized work a step) rather than composed away as for ``next`` and ``delta``."""
        h, state = self.recur(self.inp(seed.unsqueeze(0)))
        x, preds = seed[-1:].unsqueeze(0), []
        for k in range(n):
            x = self._head(h[:, -1:], x)
            preds.append(x[0])
            if k == n - 1:
                break
            fed = x if noise is None else x + noise[k].to(x.dtype)
            h, state = self.recur(self.inp(fed), state)
            x = fed
        return torch.cat(preds)

    @torch.no_grad()
    def sample(self, seed: torch.Tensor, n: int, draws: torch.Tensor) -> torch.Tensor:
        """A gaussian head's sampled free run: seed (T0, D) normalized -> n frames (n, D), frame k
        drawn as the prediction plus exp(logvar / 2) * ``draws[k]`` (standard normal draws times
        the temperature) and fed back as the next input. The spread is the model's own for that
        frame, where ``--temperature`` with a mean head uses one train residual std for all."""
        if self.head != "gaussian":
            raise ValueError(f"sample: the model's head is {self.head!r}, which has no variance (use rollout's noise)")
        h, state = self.recur(self.inp(seed.unsqueeze(0)))
        x, frames = seed[-1:].unsqueeze(0), []
        for k in range(n):
            top = h[:, -1:]
            x = self._head(top, x) + (0.5 * self.logvar(top)).exp() * draws[k].to(x.dtype)
            frames.append(x[0])
            if k == n - 1:
                break
            h, state = self.recur(self.inp(x), state)
        return torch.cat(frames)
