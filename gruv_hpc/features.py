"""Spectral features of audio blocks, and their exact inverses.

The paper's feature (``fft``) is [Re | Im] of the full DFT of each block of N samples:
2N values, half of them redundant because a real signal's spectrum is conjugate-symmetric.
``rfft`` keeps only the non-redundant half: [Re | Im] of ``rfft``, N + 1 values for odd N
(N + 2 for even N). Both invert exactly (up to float32 rounding).

Blocks are transformed in batches with ``scipy.fft`` in float32: a per-block Python loop in
float64 (what the original code did) is ~7x slower and doubles the memory.
"""
from __future__ import annotations

import numpy as np
import scipy.fft

from .config import TRANSFORMS


def feature_dim(transform: str, block_size: int) -> int:
    if transform == "fft":
        return 2 * block_size
    if transform == "rfft":
        return 2 * (block_size // 2 + 1)
    raise ValueError(f"unknown transform {transform!r}; valid: {', '.join(TRANSFORMS)}")


def blocks_to_features(blocks: np.ndarray, transform: str) -> np.ndarray:
    """(..., N) float samples -> (..., D) float32 features."""
    blocks = np.asarray(blocks, dtype=np.float32)
    if transform == "fft":
        spec = scipy.fft.fft(blocks, axis=-1, workers=1)
    elif transform == "rfft":
        spec = scipy.fft.rfft(blocks, axis=-1, workers=1)
    else:
        raise ValueError(f"unknown transform {transform!r}; valid: {', '.join(TRANSFORMS)}")
    return np.concatenate([spec.real, spec.imag], axis=-1).astype(np.float32, copy=False)


def features_to_blocks(features: np.ndarray, transform: str, block_size: int) -> np.ndarray:
    """(..., D) features -> (..., N) float32 samples. The exact inverse of blocks_to_features."""
    features = np.asarray(features)
    d = features.shape[-1]
    if d != feature_dim(transform, block_size):
        raise ValueError(
            f"features have {d} values per block, but transform {transform!r} with block size "
            f"{block_size} has {feature_dim(transform, block_size)}"
        )
    half = d // 2
    spec = features[..., :half].astype(np.float32) + 1j * features[..., half:].astype(np.float32)
    if transform == "fft":
        # A prediction need not be conjugate-symmetric; the real part is the closest real signal.
        out = scipy.fft.ifft(spec, axis=-1, workers=1).real
    else:
        out = scipy.fft.irfft(spec, n=block_size, axis=-1, workers=1)
    return out.astype(np.float32, copy=False)


def audio_to_blocks(audio: np.ndarray, block_size: int) -> np.ndarray:
    """Non-overlapping, unwindowed blocks; the ragged tail is dropped. A view, no copy."""
    n = len(audio) // block_size
    return audio[: n * block_size].reshape(n, block_size)


def magnitude_spectrum(features: np.ndarray, transform: str) -> np.ndarray:
    """|X(f)| for the non-negative frequencies of each block: (..., D) -> (..., N//2 + 1)."""
    half = features.shape[-1] // 2
    mag = np.hypot(features[..., :half], features[..., half:])
    if transform == "fft":
        block_size = half
        mag = mag[..., : block_size // 2 + 1]
    return mag


def bin_frequencies(block_size: int, sample_rate: int) -> np.ndarray:
    return np.fft.rfftfreq(block_size, d=1.0 / sample_rate)
