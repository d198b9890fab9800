"""``gruv generate``: a continuation of a seed, written as OUT.wav with its sidecar OUT.json.

Unlike the original code, the continuation starts *after* the seed: no block of the output is a
teacher-forced reconstruction of the seed.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from gruv_hpc.dataset.audio import write_wav
from gruv_hpc.errors import GenerationError
from gruv_hpc.fsio import atomic_write_json
from gruv_hpc.generation.algorithms import (feedback_noise, generate_refeed, generate_stateful, residual_std,
                                            sample_refeed, sample_stateful, sampling_noise)
from gruv_hpc.generation.diagnostics import diagnostics
from gruv_hpc.generation.run import LoadedRun, check_device, load_run
from gruv_hpc.generation.synthesis import seed_and_continuation_audio, seed_features, seed_waveform


def generate(run_dir, out_wav, seed_seconds: float = 10.0, length_ratio: float = 3.0, seed_from: str = "dev",
             seed_index: int | None = None, algorithm: str = "stateful", checkpoint: str = "best", with_seed: bool = False,
             float32: bool = False, normalize: bool = False, device: str = "cpu", run: LoadedRun | None = None,
             seed_out=None, seed_start: float | None = None, band_hz: tuple[float, float] | None = None,
             noise: float = 0.0, noise_seed: int = 0, temperature: float = 0.0, audio_out: dict | None = None) -> dict:
    """Write OUT.wav and OUT.json (the sidecar), and the seed alone to ``seed_out`` if given;
    returns the sidecar dict. ``seed_index`` (default 0) picks a clip of the dev/train split,
    ``seed_start`` (seconds, default 0) a point in a seed file: each is refused with the other
    source rather than ignored. ``band_hz``: the band the flatness is measured over (None: the
    band that holds the seed's energy; the analysis passes Figure 3's). ``noise``: sigma of
    Gaussian noise (normalized units) added to each prediction before it is fed back, against
    generation loops (0: off). ``temperature``: sample each frame from a Gaussian around the
    prediction, per dimension temperature x the model's residual std on the train set
    (``train_residual_std``), or with a gaussian head (``head = gaussian``) x the model's own std
    for that frame; the sample is what is fed back and heard (0: the mean prediction, the paper's,
    bitwise). ``noise_seed`` seeds either's draws. ``audio_out``: a dict that gets the
    seed's and the continuation's audio as arrays (``seed``, ``continuation``; float, before the
    WAV's quantization), for callers that measure them further without reading the WAVs back."""
    split = seed_from in ("dev", "train")
    if split and seed_start is not None:
        raise GenerationError(f"--seed-start is for a seed file; with --seed-from {seed_from}, pick the clip with --seed-index")
    if not split and seed_index is not None:
        raise GenerationError("--seed-index picks a clip of the dev or train split; in a seed file, say where the "
                              "seed starts with --seed-start SECONDS")
    if seed_start is not None and not (math.isfinite(seed_start) and seed_start >= 0):
        raise GenerationError(f"--seed-start must be a finite number of seconds >= 0, got {seed_start}")
    if not (math.isfinite(length_ratio) and length_ratio > 0):
        raise GenerationError(f"length ratio must be a finite number > 0, got {length_ratio}")
    if not (math.isfinite(seed_seconds) and seed_seconds > 0):
        raise GenerationError(f"seed seconds must be a finite number > 0, got {seed_seconds}")
    if not (math.isfinite(noise) and noise >= 0):
        raise GenerationError(f"--noise must be a finite sigma >= 0, got {noise}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise GenerationError(f"--temperature must be a finite number >= 0, got {temperature}")
    if noise > 0 and temperature > 0:
        raise GenerationError("--noise and --temperature both perturb what is fed back: give one")
    if not 0 <= noise_seed < 2 ** 63:
        raise GenerationError(f"--noise-seed must be in [0, 2^63), got {noise_seed}")
    if algorithm not in ("stateful", "refeed"):
        raise GenerationError(f"algorithm must be 'stateful' or 'refeed', not {algorithm!r}")
    out_wav = Path(out_wav)
    if out_wav.is_dir() or out_wav.suffix.lower() != ".wav":
        raise GenerationError(f"--out {out_wav}: give a file name ending in .wav")
    run = run or load_run(run_dir, checkpoint, device)
    device = check_device(device)
    seed, info = seed_features(run, seed_from, seed_index or 0, seed_seconds, seed_start or 0.0)
    n = max(1, int(round(length_ratio * len(seed))))
    t0 = time.time()
    fn = generate_stateful if algorithm == "stateful" else generate_refeed
    gaussian = temperature > 0 and run.model.head == "gaussian"
    if gaussian:  # the model's own spread, frame by frame
        draws = sampling_noise(n, torch.full((seed.shape[1],), float(temperature)), noise_seed, device)
        sample = sample_stateful if algorithm == "stateful" else sample_refeed
        gen = sample(run.model, torch.from_numpy(seed).to(device), n, draws).float().cpu().numpy()
    elif temperature > 0:
        # the sample is the prediction plus its draw, fed back and kept: draw k perturbs frame k
        draws = sampling_noise(n, temperature * train_residual_std(run), noise_seed, device)
        gen = (fn(run.model, torch.from_numpy(seed).to(device), n, draws[:-1]).float() + draws.float()).cpu().numpy()
    else:
        eps = feedback_noise(n, seed.shape[1], noise, noise_seed, device)
        gen = fn(run.model, torch.from_numpy(seed).to(device), n, eps).float().cpu().numpy()
    wall = time.time() - t0
    if not np.all(np.isfinite(gen)):
        raise GenerationError(f"the model produced non-finite features (checkpoint {run.ckpt_path})")
    sr = run.cfg.sample_rate
    wave = seed_waveform(run, info)
    if run.transform.phase_from_seed:
        info["phase_from"] = "the seed's audio" if wave is not None else f"fitted (no audio at {info.get('song') or info['source']})"
    seed_audio, gen_audio = seed_and_continuation_audio(run, seed, gen, wave)
    if audio_out is not None:
        audio_out.update(seed=seed_audio, continuation=gen_audio)
    audio = np.concatenate([seed_audio, gen_audio]) if with_seed else gen_audio
    try:
        out_wav.parent.mkdir(parents=True, exist_ok=True)
        clipped = write_wav(out_wav, audio, sr, float32=float32, peak=0.99 if normalize else 0.0)
        if seed_out is not None:
            write_wav(seed_out, seed_audio, sr, float32=float32)
    except (OSError, RuntimeError) as e:  # soundfile's errors are RuntimeErrors
        msg = getattr(e, "strerror", None) or str(e).strip().splitlines()[-1]
        raise GenerationError(f"--out {out_wav}: cannot write it ({msg})") from e
    tf = run.transform
    diag = diagnostics(run, gen, seed_audio, gen_audio, band_hz, seed=seed)
    side = {"run": str(run_dir), "checkpoint": str(run.ckpt_path), "checkpoint_epoch": run.epoch, "cell": run.cfg.cell,
            "hidden": run.cfg.hidden, "seed": info, "generated_blocks": n, "generated_s": tf.seconds(n, sr),
            "length_ratio": length_ratio, "with_seed": with_seed, "algorithm": algorithm, "wall_s": wall,
            "noise": noise, "temperature": temperature, "noise_seed": noise_seed if noise > 0 or temperature > 0 else None,
            "spread": ("the model's own (head = gaussian)" if gaussian else "train residual std") if temperature > 0 else None,
            "residual_std_mean": float(train_residual_std(run).mean()) if temperature > 0 and not gaussian else None,
            "sample_rate": sr, "format": "float32" if float32 else "pcm16", "peak_normalized": normalize,
            "clipped_samples": clipped, "diagnostics": diag}
    atomic_write_json(out_wav.with_suffix(".json"), side)  # strict JSON: a silent output's -inf dB is null
    return side


RESIDUAL_CLIPS = 64  # train clips (evenly spread) the residual std is measured on


def train_residual_std(run: LoadedRun) -> torch.Tensor:
    """The run's per-dimension residual std on (up to RESIDUAL_CLIPS of) its train clips, for the
    checkpoint loaded: measured once per loaded run."""
    if "residual_std" not in run.cache:
        train = run.data.split("train", normalize=False)
        if not len(train):
            raise GenerationError(f"--temperature needs the residual on the train split, and {run.cfg.data} has no "
                                  "train clips for this run")
        idx = np.linspace(0, len(train) - 1, min(RESIDUAL_CLIPS, len(train))).round().astype(int)
        clips = (((train.features(int(i)) - run.mean) / run.std).astype(np.float32) for i in idx)
        dev = next(run.model.parameters()).device
        with torch.no_grad():
            run.cache["residual_std"] = residual_std(run.model, clips, dev)
    return run.cache["residual_std"]
