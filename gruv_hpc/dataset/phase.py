"""Phase for the log-magnitude transforms (``transforms.LogMag``, ``LogMagIF``): Griffin-Lim for
magnitudes alone, and instantaneous frequency (each bin's phase advance over one hop minus the
advance its centre frequency would make) and its integral.

librosa, the field's standard, does the STFTs (``librosa.stft`` / ``librosa.istft``, imported here
and nowhere else: it loads numba, seconds that a dataset build or a CLI start need not pay;
the final overlap-add is ``transforms.overlap_add``, which fades the two ends where librosa's
istft would divide by nearly nothing).
``griffin_lim`` is ``librosa.griffinlim``'s own iteration (fast Griffin-Lim, Perraudin et al. 2013,
with its momentum), with two things librosa's function lacks and a continuation needs: an initial
phase of our choosing, and frames whose phase is known (the seed's) and held fixed. With librosa's
random initial phase and nothing fixed it *is* ``librosa.griffinlim`` (a test checks it).

Spectra here are (bins, frames), librosa's layout; the transforms' features are (frames, bins).
"""
from __future__ import annotations

import numpy as np


def expected_advance(frame: int, hop: int) -> np.ndarray:
    """(frame // 2 + 1,) float64: the phase (radians) bin k's centre frequency advances over one
    hop, 2 pi k hop / frame, taken modulo 2 pi (so a long integral stays accurate)."""
    k = np.arange(frame // 2 + 1, dtype=np.float64)
    return np.mod(2 * np.pi * k * hop / frame, 2 * np.pi)


def wrap(phase: np.ndarray) -> np.ndarray:
    """Angles into [-pi, pi)."""
    return np.mod(phase + np.pi, 2 * np.pi) - np.pi


def instantaneous_frequency(phases: np.ndarray, advance: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
    """(n, bins) phases of consecutive frames -> (n, bins) float64 instantaneous frequency:
    wrap(phase_t - phase_{t-1} - advance). ``previous``: the phases of the frame one hop before
    the first (None: zeros, the convention ``integrate_phase`` inverts)."""
    phases = np.asarray(phases, np.float64)
    prev = np.zeros(phases.shape[-1]) if previous is None else np.asarray(previous, np.float64)
    before = np.concatenate([prev[None], phases[:-1]], axis=0)
    return wrap(phases - before - advance)


def integrate_phase(inst_freq: np.ndarray, advance: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
    """The inverse of ``instantaneous_frequency``: (n, bins) -> (n, bins) float64 phases,
    previous + cumulative sum of (inst_freq + advance), to float64 rounding."""
    prev = 0.0 if previous is None else np.asarray(previous, np.float64)
    return prev + np.cumsum(np.asarray(inst_freq, np.float64) + advance, axis=0)


def griffin_lim(mag: np.ndarray, frame: int, hop: int, n_iter: int, window: str = "hann",
                init: np.ndarray | None = None, known: np.ndarray | None = None, momentum: float = 0.99,
                random_state: int = 0) -> np.ndarray:
    """(bins, n) complex64 spectra whose magnitudes are ``mag`` and whose phases are fitted by
    fast Griffin-Lim, so that an overlap-add of them is audio whose STFT magnitudes approach ``mag``.

    ``init``: the initial phases (bins, n), radians; None draws them as ``librosa.griffinlim``
    does with ``init="random"`` and ``random_state``. ``known``: (bins, k) complex spectra of the
    first k frames (a seed's own): their phases are kept as they are through every iteration, so
    the frames after them are fitted to them. ``n_iter`` = 0 returns the initial phases."""
    import librosa
    mag = np.asarray(mag, np.float32)
    if init is None:
        rng = np.random.RandomState(seed=random_state)  # librosa's for an int random_state
        angles = np.exp(2j * np.pi * rng.random_sample(size=mag.shape)).astype(np.complex64)
    else:
        angles = np.exp(1j * np.asarray(init, np.float64)).astype(np.complex64)
    k = 0 if known is None else known.shape[-1]
    if k:
        fixed = (known / np.maximum(np.abs(known), 1e-30)).astype(np.complex64)
        angles[:, :k] = fixed
    n = mag.shape[-1]
    length = frame + (n - 1) * hop
    eps = np.finfo(np.float32).tiny  # librosa.griffinlim's guard against dividing by a zero
    angles *= mag
    tprev = None
    for _ in range(n_iter):
        inverse = librosa.istft(angles, hop_length=hop, win_length=frame, n_fft=frame, window=window, center=False,
                                length=length, dtype=np.float32)
        rebuilt = librosa.stft(inverse, n_fft=frame, hop_length=hop, win_length=frame, window=window, center=False)
        angles[:] = rebuilt
        if tprev is not None:
            angles -= (momentum / (1 + momentum)) * tprev
        angles /= np.abs(angles) + eps
        if k:
            angles[:, :k] = fixed
        angles *= mag
        tprev = rebuilt
    return angles
