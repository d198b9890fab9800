"""Spectral features of audio blocks, and their exact inverses.

The paper's feature (``fft``) is [Re | Im] of the full DFT of each block of N samples:
2N values, half of them redundant because a real signal's spectrum is conjugate-symmetric.
``rfft`` keeps only the non-redundant half: [Re | Im] of ``rfft``, N + 1 values for odd N
(N + 2 for even N). Both invert exactly (up to float32 rounding).

Blocks are transformed in batches with ``scipy.fft`` in float32: a per-block Python loop in
float64 (what the original code did) is ~7x slower and doubles the memory.

Datasets store neither: they store the *stored half* (``blocks_to_stored``), exactly N values per
block of N real samples, [Re_0 .. Re_{N//2} | Im_1 .. Im_{(N-1)//2}] of ``rfft``: the imaginary
parts of the DC bin (and of the Nyquist bin, for even N) are always zero and are left out. Both
feature layouts follow from it by a gather with a sign per value (``expansion``): the full DFT's
mirrored bins are Re[N-k] = Re[k], Im[N-k] = -Im[k], and the always-zero values get sign 0.
"""
from __future__ import annotations

import numpy as np
import scipy.fft

from gruv_hpc.dataset.config import TRANSFORMS


def feature_dim(transform: str, block_size: int) -> int:
    if transform == "fft":
        return 2 * block_size
    if transform == "rfft":
        return 2 * (block_size // 2 + 1)
    raise ValueError(f"unknown transform {transform!r}; valid: {', '.join(TRANSFORMS)}")


def storage_dim(block_size: int) -> int:
    """Values stored per block: N real samples have exactly N real degrees of freedom in frequency."""
    return block_size


def blocks_to_stored(blocks: np.ndarray) -> np.ndarray:
    """(..., N) float samples -> (..., N) float32: the stored half (see the module docstring)."""
    blocks = np.asarray(blocks, dtype=np.float32)
    n = blocks.shape[-1]
    spec = scipy.fft.rfft(blocks, axis=-1, workers=1)
    return np.concatenate([spec.real, spec.imag[..., 1: 1 + (n - 1) // 2]], axis=-1).astype(np.float32, copy=False)


def expansion(transform: str, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(index, sign), each (D,): features[..., d] = sign[d] * stored[..., index[d]].

    sign is +1, -1 (the imaginary part of a mirrored bin of the full DFT) or 0 (a value that is
    always zero; its index is 0 and means nothing)."""
    n = block_size
    n_re, n_im = n // 2 + 1, (n - 1) // 2
    if transform == "fft":
        k = np.arange(n)
    elif transform == "rfft":
        k = np.arange(n_re)
    else:
        raise ValueError(f"unknown transform {transform!r}; valid: {', '.join(TRANSFORMS)}")
    m = np.minimum(k, n - k) % n  # the stored bin that holds bin k (k = 0: 0)
    has_im = (m >= 1) & (m <= n_im)
    re_idx, re_sign = m, np.ones(len(k), np.float32)
    im_idx = np.where(has_im, n_re + m - 1, 0)
    im_sign = np.where(has_im, np.where(k == m, 1.0, -1.0), 0.0).astype(np.float32)
    return np.concatenate([re_idx, im_idx]).astype(np.int64), np.concatenate([re_sign, im_sign])


def stored_to_features(stored: np.ndarray, transform: str, block_size: int) -> np.ndarray:
    """(..., N) stored half (any float dtype) -> (..., D) float32 features of ``transform``."""
    idx, sign = expansion(transform, block_size)
    return np.take(np.asarray(stored, dtype=np.float32), idx, axis=-1) * sign


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
