"""Generated audio: every run's best checkpoint continues the same fixed dev seeds.

Writes REPORT_DIR/audio/<run>/seed<K>.wav (the continuation), seed<K>_seed.wav (the seed itself),
a JSON sidecar per clip with the diagnostics (docs/generation.md), and seed<K>.png: a small
spectrogram of the seed followed by the continuation. Per run: the mean of each diagnostic over its
clips, and whether the continuations from its different seed clips converge to the same output.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gruv_hpc.analysis.common import RunInfo


def seed_indices(n_clips: int, n_seed_clips: int) -> list[int]:
    """Evenly spread over the dev split, the same for every run of an artist."""
    if n_clips == 0:
        return []
    return sorted(set(np.linspace(0, n_clips - 1, min(n_seed_clips, n_clips)).astype(int).tolist()))


def spectrogram_png(seed: np.ndarray, continuation: np.ndarray, sample_rate: int, path: Path,
                    width: int = 360, height: int = 90) -> None:
    """Seed then continuation as one ``width`` x ``height`` image: dB over an 80 dB range, low
    frequencies at the bottom, a white line where the continuation starts. Frames and bins are
    averaged down to the image's size (a long clip costs no more than a short one), or repeated up
    to it (a short clip is not a few pixels the page would blow up)."""
    import matplotlib
    from scipy.signal import spectrogram
    audio = np.concatenate([seed, continuation]).astype(np.float64)
    n = int(2 ** round(np.log2(max(64, 0.02 * sample_rate))))  # ~20 ms frames
    _, _, p = spectrogram(audio, fs=sample_rate, nperseg=min(n, len(audio)), noverlap=0)

    def pool(a, size, axis):
        edges = np.linspace(0, a.shape[axis], min(size, a.shape[axis]) + 1).astype(int)
        return np.add.reduceat(a, edges[:-1], axis=axis) / np.expand_dims(np.diff(edges), 1 - axis)

    p = pool(pool(p, height, 0), width, 1)
    p = p[np.linspace(0, p.shape[0] - 1, height).round().astype(int)][:, np.linspace(0, p.shape[1] - 1, width).round().astype(int)]
    db = 10 * np.log10(p + 1e-20)
    db = np.clip(db, db.max() - 80, None)
    rgba = matplotlib.colormaps["magma"]((db - db.min()) / max(np.ptp(db), 1e-9))[::-1]
    rgba[:, min(rgba.shape[1] - 1, int(round(len(seed) / len(audio) * rgba.shape[1])))] = 1.0
    path.parent.mkdir(parents=True, exist_ok=True)
    matplotlib.pyplot.imsave(path, rgba)


def generate_audio(runs: list[RunInfo], out_dir, n_seed_clips: int = 2, seed_seconds: float = 10.0,
                   length_ratio: float = 3.0, band_hz: dict | None = None) -> dict:
    """Returns {run: {"clips": [...], mean diagnostics}} (a run that cannot be read: {"clips": [],
    "error": why}). ``n_seed_clips``: dev clips to continue per run; ``band_hz``: {artist: (lo, hi)},
    the band holding the music's energy (Figure 3's), the band the flatness is measured over."""
    from gruv_hpc.analysis.common import load_each
    result = {}
    for run, lr, error in load_each(runs):
        if error:  # this run cannot be read: say so in the report, analyse the others
            result[run.name] = {"clips": [], "error": error}
            continue
        a = run_audio(run, lr, out_dir, n_seed_clips, seed_seconds, length_ratio, (band_hz or {}).get(run.artist))
        if a:
            result[run.name] = a
    return result


def run_audio(run: RunInfo, lr, out_dir, n_seed_clips: int = 2, seed_seconds: float = 10.0,
              length_ratio: float = 3.0, band_hz: tuple | None = None, temperature: float = 0.0) -> dict | None:
    """One run's clips and their mean diagnostics, from ``lr``: the run as ``generation.load_run``
    loaded it. None when its dev split has no clip to seed from. ``temperature`` > 0: each
    continuation is sampled (``gruv generate --temperature``), its draws seeded by its clip's index."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401  (imsave)
    from gruv_hpc.generation import describe, generate
    out_dir = Path(out_dir)
    out = out_dir / "audio"
    cfg = lr.cfg
    # A seed no longer than one clip always fits inside a dev clip's segment.
    secs = min(seed_seconds, lr.transform.seconds(cfg.clip_blocks, cfg.sample_rate))
    ds = lr.data.split("dev", normalize=False)
    clips, made_audio = [], []
    for k in seed_indices(len(ds), n_seed_clips):
        wav, seed_wav = out / run.name / f"seed{k}.wav", out / run.name / f"seed{k}_seed.wav"
        made: dict = {}  # the audio as arrays: measured from memory, never read back from the WAVs
        side = generate(run.paths.root, wav, seed_seconds=secs, length_ratio=length_ratio, seed_from="dev",
                        seed_index=k, run=lr, seed_out=seed_wav, band_hz=band_hz, audio_out=made,
                        temperature=temperature, noise_seed=k)
        made_audio.append(made)
        png = wav.with_suffix(".png")
        spectrogram_png(made["seed"], made["continuation"], cfg.sample_rate, png)
        clips.append({"seed_index": k, "wav": str(wav.relative_to(out_dir)), "seed_wav": str(seed_wav.relative_to(out_dir)),
                      "png": str(png.relative_to(out_dir)), **side["diagnostics"],
                      "clipped_samples": side["clipped_samples"], "temperature": temperature,
                      "words": describe(side["diagnostics"], side["clipped_samples"])})
    if not clips:
        return None
    def mean(key):
        v = [c[key] for c in clips if c.get(key) is not None and np.isfinite(c[key])]
        return float(np.mean(v)) if v else None
    return {"clips": clips, **{k: mean(k) for k in mean_keys()},
            "convergence": convergence(lr, [m["continuation"] for m in made_audio], [m["seed"] for m in made_audio])}


def mean_keys() -> list[str]:
    """The diagnostics a run reports as the mean over its seed clips: the registry's ``mean`` ones."""
    from gruv_hpc.generation.diagnostics import names
    return names("mean")


CONVERGED_COSINE = 0.9  # end frames this alike (normalized features) are the same output to a listener


def _end_frames(run, audio: np.ndarray, n: int = 8) -> np.ndarray:
    """The last ``n`` frames of some audio as the run's normalized features, unit length."""
    f = (run.transform.features(np.asarray(audio, np.float32))[-n:] - run.mean) / run.std
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def _pair_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """How alike two endings are: the last frame of each against its best match among the other's
    last frames (a loop of period > 1 ends at any phase), averaged both ways."""
    return float(((a[-1] @ b.T).max() + (b[-1] @ a.T).max()) / 2)


def convergence(run, continuations: list[np.ndarray], seeds: list[np.ndarray]) -> dict | None:
    """Do continuations from different seed clips of one run converge to the same output? From the
    audio: the cosine between the continuations' endings (``_pair_cosine``, mean over pairs),
    beside the same measure between the seeds' endings (how alike the starting points were), and
    the spread of the continuations' levels. None with fewer than two clips."""
    if len(continuations) < 2:
        return None
    import itertools

    from gruv_hpc.generation import rms_db
    ends, starts = [_end_frames(run, a) for a in continuations], [_end_frames(run, a) for a in seeds]
    if any(len(f) == 0 for f in ends + starts):  # shorter than one frame: nothing to compare
        return None
    pairs = list(itertools.combinations(range(len(continuations)), 2))
    cos = float(np.mean([_pair_cosine(ends[i], ends[j]) for i, j in pairs]))
    seed_cos = float(np.mean([_pair_cosine(starts[i], starts[j]) for i, j in pairs]))
    levels = [v for v in (rms_db(a) for a in continuations) if np.isfinite(v)]
    return {"end_cosine": cos, "seed_end_cosine": seed_cos, "clips": len(continuations),
            "level_spread_db": float(max(levels) - min(levels)) if levels else None,
            "converged": bool(cos >= CONVERGED_COSINE and cos > seed_cos)}
