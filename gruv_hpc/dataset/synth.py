"""A procedurally generated two-artist corpus, so the demo and the tests need no download.

``aurora`` is harmonic: chord pads and a melody, soft attacks, gentle dynamics (WAV, 16-bit).
``circuit`` is percussive: kick, hi-hats and a sawtooth bass line with sharp transients (FLAC).
Their spectra differ clearly: aurora's energy sits in a few harmonic bands, circuit's is broadband.

Both are music a small model can learn in the demo's 30 epochs, and that the dev songs share with
the train songs: each artist keeps one key and one tempo, its bars last a whole number of the
paper's 0.25 s blocks, every note of an instrument is the same waveform each time it is played (a
sampler's, a drum machine's: fixed phases, one hi-hat sample) and each song arranges, bar by bar,
a few patterns its artist always plays (``style``: a melody motif, a bass line, a hi-hat groove). Random keys, tempos off the block grid and a fresh noise burst per hi-hat made the
next block as unpredictable as its train mean: no model beat that floor on circuit.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

SR = 44100
MAJOR = [0, 2, 4, 5, 7, 9, 11]


def _midi_hz(m):
    return 440.0 * 2 ** ((np.asarray(m, dtype=np.float64) - 69) / 12)


def _add(buf, start, sig):
    end = min(len(buf), start + len(sig))
    if end > start:
        buf[start:end] += sig[: end - start]


def _tone(freq, dur, rng, attack=0.08, release=0.4, harmonics=(1.0, 0.5, 0.25, 0.12)):
    n = int(dur * SR)
    t = np.arange(n) / SR
    sig = sum(a * np.sin(2 * np.pi * freq * (k + 1) * t) for k, a in enumerate(harmonics))  # the same note each time
    env = np.minimum(1.0, t / attack) * np.exp(-t / max(release, 1e-3) * 0.5)
    return sig * env


def aurora_style(rng: np.random.Generator) -> dict:
    """What every aurora song shares: two melody motifs (one note a beat)."""
    return {"motifs": rng.integers(0, 7, size=(2, 4))}


def aurora_song(seconds: float, rng: np.random.Generator, style: dict | None = None) -> np.ndarray:
    style = style or aurora_style(rng)
    buf = np.zeros(int(seconds * SR))
    key = 60  # the artist's key
    bar = 2.0  # 8 blocks of 0.25 s
    progression = [0, 5, 3, 4][:: rng.choice([1, -1])]
    motif = style["motifs"][rng.integers(0, 2)]  # the song's melody, repeated every bar
    plays = rng.random(4) < 0.8
    t, i = 0.0, 0
    while t < seconds:
        root = key + MAJOR[progression[i % 4]] - 12
        for off in (0, 4, 7):
            _add(buf, int(t * SR), 0.12 * _tone(_midi_hz(root + off), bar * 1.2, rng, attack=0.3, release=bar))
        beat = bar / 4
        for b in range(4):
            if plays[b]:
                note = key + 12 + MAJOR[motif[b]]
                _add(buf, int((t + b * beat) * SR), 0.18 * _tone(_midi_hz(note), beat * 1.5, rng, attack=0.04, release=beat))
        t += bar
        i += 1
    # slow swell: soft dynamics
    swell = 0.7 + 0.3 * np.sin(2 * np.pi * np.arange(len(buf)) / SR / (4 * bar))
    return buf * swell


def circuit_style(rng: np.random.Generator) -> dict:
    """What every circuit song shares: the drum machine's hi-hat sample and groove, two bass lines."""
    n = int(0.04 * SR)
    hat = np.diff(rng.standard_normal(n), prepend=0) * np.exp(-np.arange(n) / SR * 120)  # crude high-pass, fast decay
    return {"hat": hat, "extra_hats": rng.random(16) < 0.3,
            "bass_lines": rng.choice([0, 0, 3, 5, 7, 10, 12], size=(2, 16))}


def circuit_song(seconds: float, rng: np.random.Generator, style: dict | None = None) -> np.ndarray:
    style = style or circuit_style(rng)
    buf = np.zeros(int(seconds * SR))
    bpm = 120.0  # the artist's tempo: a sixteenth is half a block
    step = 60.0 / bpm / 4  # sixteenth notes
    n_steps = int(seconds / step)
    kick_t = np.arange(int(0.25 * SR)) / SR
    kick = np.sin(2 * np.pi * (50 * kick_t + 120 * (1 - np.exp(-kick_t * 30)) / 30)) * np.exp(-kick_t * 18)
    bass_root = 36
    lines = rng.integers(0, 2, size=n_steps // 16 + 1)  # which of the artist's bass lines each bar plays
    extra_hats, hat = style["extra_hats"], style["hat"]
    for s in range(n_steps):
        start = int(s * step * SR)
        if s % 4 == 0:
            _add(buf, start, 0.9 * kick)
        if s % 2 == 1 or extra_hats[s % 16]:
            _add(buf, start, 0.25 * hat)
        if s % 2 == 0:
            n = int(step * 1.8 * SR)
            tt = np.arange(n) / SR
            f = _midi_hz(bass_root + style["bass_lines"][lines[s // 16]][(s // 2) % 16])
            saw = 2 * ((f * tt) % 1.0) - 1
            _add(buf, start, 0.3 * saw * np.exp(-tt * 10))
    return buf


def make_corpus(out: str | Path, songs_per_artist: int = 6, min_s: float = 30, max_s: float = 60, seed: int = 0) -> dict:
    """Write ``out/<artist>/<song>`` files; returns {artist: [paths]}."""
    import math

    from gruv_hpc.errors import ConfigError
    out = Path(out)
    if not (isinstance(songs_per_artist, int) and songs_per_artist >= 1):
        raise ConfigError(f"--songs: must be >= 1, got {songs_per_artist}")
    for name, v in (("--min-seconds", min_s), ("--max-seconds", max_s)):
        if not (math.isfinite(v) and 0 < v <= 24 * 3600):
            raise ConfigError(f"{name}: must be a number of seconds in (0, 86400], got {v}")
    if min_s > max_s:
        raise ConfigError(f"--min-seconds {min_s} is more than --max-seconds {max_s}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    rng = np.random.default_rng(seed)
    made = {}
    for artist, fn, style, fmt in (("aurora", aurora_song, aurora_style, "wav"),
                                   ("circuit", circuit_song, circuit_style, "flac")):
        shared = style(rng)
        d = out / artist
        d.mkdir(parents=True, exist_ok=True)
        made[artist] = []
        for k in range(songs_per_artist):
            audio = fn(rng.uniform(min_s, max_s), rng, shared)
            audio = 0.8 * audio / max(1e-9, np.max(np.abs(audio)))
            path = d / f"{artist}_{k:02d}.{fmt}"
            sf.write(str(path), audio.astype(np.float32), SR, subtype="PCM_16")
            made[artist].append(path)
    return made
