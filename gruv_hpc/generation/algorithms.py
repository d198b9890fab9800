"""Generation algorithms: continue a seed (normalized features) by feeding predictions back.

``refeed`` is the paper's algorithm: feed the whole sequence, append the last prediction, repeat
(quadratic). ``stateful`` runs the seed once and then steps the recurrent state one block at a
time (linear). The model is causal, so the two are equal up to float rounding, which a trained
recurrent model can amplify (on one, 1 LSB for the first 5 s, then 0.02 by 10 s): a long
continuation drifts apart, both equally valid.
"""
from __future__ import annotations

import torch


def feedback_noise(n: int, dim: int, sigma: float, seed: int = 0, device="cpu") -> torch.Tensor | None:
    """The noise added to the n - 1 predictions that are fed back (row k: to the k-th), or None
    when sigma is 0. Drawn on the CPU from its own generator: the same rows on any device."""
    if sigma <= 0 or n < 2:
        return None
    g = torch.Generator().manual_seed(seed)
    return (sigma * torch.randn(n - 1, dim, generator=g)).to(device)


@torch.no_grad()
def residual_std(model, clips, device="cpu") -> torch.Tensor:
    """The model's per-dimension residual std (normalized units) on ``clips``: an iterable of (T + 1,
    D) normalized feature arrays, each scored teacher-forced as in training (the prediction at t
    against frame t + 1). The spread ``--temperature`` samples with."""
    sq, n = None, 0
    for clip in clips:
        win = torch.as_tensor(clip, dtype=torch.float32, device=device).unsqueeze(0)
        pred, _ = model(win, drop_last=True)
        r = (pred.float() - win[:, 1:]).square().sum((0, 1)).double()
        sq, n = (r if sq is None else sq + r), n + win.shape[1] - 1
    if not n:
        raise ValueError("no clips to measure the residual on")
    return (sq / n).sqrt().float().cpu()


def sampling_noise(n: int, sigma: torch.Tensor, seed: int = 0, device="cpu") -> torch.Tensor:
    """Draws for sampled generation: row k is the deviation of sampled frame k from the model's
    prediction, per dimension ``sigma`` (D,) (the temperature times the residual std). Drawn on
    the CPU from its own generator: the same samples on any device."""
    g = torch.Generator().manual_seed(seed)
    return (sigma.float() * torch.randn(n, sigma.numel(), generator=g)).to(device)


@torch.no_grad()
def generate_stateful(model, seed: torch.Tensor, n: int, noise: torch.Tensor | None = None) -> torch.Tensor:
    """seed (T0, D) normalized -> the next n blocks (n, D). Linear in n. ``noise`` (n - 1, D): added
    to each prediction before it is fed back (``feedback_noise``); the blocks returned are the
    predictions themselves. The model's own free run (``GRUVModel.rollout``: one H x H map a
    step, for either ``predict``), equal to ``generate_refeed`` up to float rounding."""
    return model.rollout(seed, n, noise)


@torch.no_grad()
def generate_refeed(model, seed: torch.Tensor, n: int, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's algorithm: re-run the whole sequence for every new block. Quadratic in n."""
    seq, preds = seed, []
    for k in range(n):
        pred, _ = model(seq.unsqueeze(0))
        preds.append(pred[0, -1:])
        seq = torch.cat([seq, preds[-1] if noise is None or k == n - 1 else preds[-1] + noise[k]])
    return torch.cat(preds)


# A gaussian head (``head = gaussian``) samples at its own spread, frame by frame: the draws are
# standard normal times the temperature, and the model scales each by its predicted std.
@torch.no_grad()
def sample_stateful(model, seed: torch.Tensor, n: int, draws: torch.Tensor) -> torch.Tensor:
    """seed (T0, D) normalized -> n sampled frames (n, D), each fed back (``GRUVModel.sample``)."""
    return model.sample(seed, n, draws)


@torch.no_grad()
def sample_refeed(model, seed: torch.Tensor, n: int, draws: torch.Tensor) -> torch.Tensor:
    """``sample_stateful`` by the paper's algorithm: the whole sequence re-run for every frame."""
    seq, frames = seed, []
    for k in range(n):
        pred, logvar, _ = model(seq.unsqueeze(0), logvar=True)
        frames.append(pred[0, -1:] + (0.5 * logvar[0, -1:]).exp() * draws[k].to(pred.dtype))
        seq = torch.cat([seq, frames[-1]])
    return torch.cat(frames)
