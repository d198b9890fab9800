"""Rollout horizons: how a model's own continuation of a dev clip drifts, the number that matches
generation (where every frame after the seed is the model's own).

Each dev clip's first ``context`` frames are teacher-forced (the model reads the true frames),
then the model free-runs (each prediction fed back, as ``gruv generate`` does). At each horizon
(about 0.25, 1 and 3 s after the last seen frame) the predicted frame is scored against the true
one, MSE in the model's normalized units, with two references on the same frames: persistence
(repeat the last seen frame) and the train mean (0 in normalized units). A next-frame dev loss can
beat both while the rollout drifts far above them by 1 s.

A pure function of (model, clips, frames per second, horizons): the analysis calls it on each
run's best checkpoint, and a trainer hook can call it at the end of training.
"""
from __future__ import annotations

import math

HORIZONS_S = (0.25, 1.0, 3.0)
REFERENCES = ("model", "persistence", "mean")


def horizon_key(h: float, ref: str) -> str:
    """The results column of horizon ``h`` (seconds) and reference ``ref``: rollout_1s_model."""
    return f"rollout_{h:g}s_{ref}"


def horizon_frames(h: float, fps: float) -> int:
    """Frames ahead of the last seen one that horizon ``h`` seconds is (at least 1: the next)."""
    return max(1, round(h * fps))


def rollout_horizons(model, clips, fps: float, horizons=HORIZONS_S, context: int | None = None) -> dict:
    """clips (B, T, D) normalized frames; ``fps`` frames per second (the transform's hop); returns
    {horizon_key(h, ref): mean over clips of the frame's MSE} for each horizon that fits after
    ``context`` frames (default: the larger of half the clip and T minus the longest horizon),
    plus "rollout_context_frames" and "rollout_clips". Horizons past the clip's end are left out."""
    import torch

    from gruv_hpc.generation.algorithms import generate_stateful
    b, t = int(clips.shape[0]), int(clips.shape[1])
    frames = {h: horizon_frames(h, fps) for h in horizons}
    if context is None:
        context = max(t // 2, t - max(frames.values(), default=1))
    context = max(1, min(int(context), t - 1))
    ahead = {h: n for h, n in frames.items() if n <= t - context}
    out: dict = {"rollout_context_frames": context, "rollout_clips": b}
    if not ahead or not b:
        return out
    sums = {(h, r): 0.0 for h in ahead for r in REFERENCES}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for clip in clips:
                clip = clip.float()
                pred = generate_stateful(model, clip[:context], max(ahead.values()))
                last = clip[context - 1]
                for h, n in ahead.items():
                    true = clip[context + n - 1]
                    sums[h, "model"] += float((pred[n - 1] - true).double().square().mean())
                    sums[h, "persistence"] += float((last - true).double().square().mean())
                    sums[h, "mean"] += float(true.double().square().mean())
    finally:
        model.train(was_training)
    for (h, r), v in sums.items():
        out[horizon_key(h, r)] = v / b if math.isfinite(v) else float("nan")
    return out


def dev_clips(data, max_clips: int = 16):
    """Up to ``max_clips`` normalized dev clips (B, C + 1, D), spread evenly over the dev split
    of a ``DatasetHandle``, and the frames per second of its transform. (None, fps) when dev has
    no clips."""
    import numpy as np
    import torch
    dev = data.split("dev")
    fps = data.params["sample_rate"] / data.transform.hop
    if not len(dev):
        return None, fps
    pick = np.unique(np.linspace(0, len(dev) - 1, min(max_clips, len(dev))).round().astype(int))
    return torch.stack([torch.cat([x, y[-1:]]) for x, y in (dev[int(i)] for i in pick)]), fps
