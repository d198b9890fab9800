"""What training logs about generation: epoch-end hooks (training/hooks.py). One continues the
first dev clip and writes the audio, its spectrogram and the registered diagnostics to TensorBoard;
one scores the model's rollout horizons at the end of training.

The entry points build it (``training_hooks``) and hand it to the trainer; training never imports
generation.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gruv_hpc.dataset.manifest import DatasetError
from gruv_hpc.errors import GenerationError
from gruv_hpc.generation.algorithms import generate_stateful
from gruv_hpc.generation.diagnostics import diagnostics, names
from gruv_hpc.generation.rollout import dev_clips, rollout_horizons
from gruv_hpc.generation.run import LoadedRun
from gruv_hpc.generation.synthesis import seed_and_continuation_audio, seed_features, seed_waveform, to_audio


@dataclass(frozen=True)
class AudioSampler:
    """Every ``gen_every_epochs`` epochs and at the last: a continuation twice the seed's length of
    dev clip 0 (``gen_seconds`` of seed), as audio and a spectrogram; its diagnostics marked
    ``tensorboard`` in the registry are returned, so the trainer logs them as generated/<name> and
    puts them in the epoch's metrics line."""
    name: str = "generated"

    def due(self, end) -> bool:
        cfg = end.cfg
        return cfg.gen_seconds > 0 and (end.final or bool(cfg.gen_every_epochs and end.epoch % cfg.gen_every_epochs == 0))

    def __call__(self, end) -> dict | None:
        if not self.due(end):
            return None
        model, cfg, dev_set, step, w = end.model, end.cfg, end.dev_set, end.epoch, end.writer
        run = LoadedRun(model, cfg, Path(""), end.epoch, dev_set.handle)
        try:
            seed, info = seed_features(run, "dev", 0, min(cfg.gen_seconds, run.transform.seconds(cfg.clip_blocks, cfg.sample_rate)),
                                    split=dev_set)
        except (GenerationError, DatasetError):
            return None
        was_training = model.training
        model.eval()
        gen = generate_stateful(model, torch.from_numpy(seed).to(end.device), 2 * len(seed)).float().cpu().numpy()
        model.train(was_training)
        out = None
        if np.all(np.isfinite(gen)):
            seed_audio, gen_audio = seed_and_continuation_audio(run, seed, gen, seed_waveform(run, info))
            diag = diagnostics(run, gen, seed_audio, gen_audio, seed=seed)
            out = {k: diag[k] for k in names("tensorboard")}
            audio = gen_audio  # the continuation as generate writes it (its phases continue the seed's)
        else:
            audio = to_audio(run, gen)
        audio = np.clip(np.nan_to_num(audio), -1, 1)
        w.add_audio("generated/audio", torch.from_numpy(audio).unsqueeze(0), step, sample_rate=cfg.sample_rate)
        w.add_image("generated/spectrogram", sample_spectrogram(run, seed, gen, step), step, dataformats="HWC")
        return out


@dataclass(frozen=True)
class RolloutScore:
    """At the end of training: the model's rollout horizons on up to 16 dev clips (``rollout``:
    teacher-forced for the clip's first part, then free-running; MSE at about 0.25, 1 and 3 s
    against persistence and the train mean), returned so that the trainer logs them as
    rollout/<key> and puts them in the last epoch's metrics line. The number that matches
    generation, where a next-frame dev loss does not. Horizons longer than the clips are left out."""
    name: str = "rollout"

    def __call__(self, end) -> dict | None:
        if not end.final:
            return None
        clips, fps = dev_clips(end.dev_set.handle)
        if clips is None:
            return None
        return rollout_horizons(end.model, clips.to(end.device), fps)


def training_hooks() -> tuple:
    """The hooks every entry point that trains hands to the trainer."""
    return (AudioSampler(), RolloutScore())


def sample_spectrogram(run: LoadedRun, seed: np.ndarray, gen: np.ndarray, epoch: int) -> np.ndarray:
    """The seed and its continuation as one labelled spectrogram (RGB, 800 x 400): time in s,
    log frequency in Hz, dB colour bar, a line where the continuation starts."""
    from gruv_hpc.plotting import spectrogram_image
    cfg = run.cfg
    mag = run.transform.magnitude(np.concatenate([seed, gen]).astype(np.float64) * run.std + run.mean)
    hop_s = run.transform.seconds(1, cfg.sample_rate)
    return spectrogram_image(mag, run.transform.frequencies(cfg.sample_rate), hop_s,
                             title=f"dev clip 0: {len(seed) * hop_s:.2f} s of seed, then the model (epoch {epoch})",
                             mark_s=len(seed) * hop_s, mark_label="generated")
