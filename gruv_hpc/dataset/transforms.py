"""Feature transforms: one ``Transform`` object per kind, in a registry (``TRANSFORMS``).

A transform owns everything that depends on how audio becomes features and back:

- framing: the frame length (``frame``, the config's ``block_size``) and the hop between frames
  (``hop``; the paper's transforms use non-overlapping frames, hop = frame);
- analysis (``analyze``: frames -> the stored half of each frame's spectrum) and synthesis
  (``synthesize``: features -> audio, by overlap-add where frames overlap);
- dimensions (``feature_dim``, ``storage_dim``) and the gather that expands what is stored into
  the model's features (``expansion``), on any device;
- its frequency axis (``frequencies``, ``magnitude``) and its time axis (``seconds``).

The paper's feature (``fft``) is [Re | Im] of the full DFT of each block of N samples: 2N values,
half of them redundant because a real signal's spectrum is conjugate-symmetric. ``rfft`` keeps
only the non-redundant half: [Re | Im] of ``rfft``, N + 1 values for odd N (N + 2 for even N).
Both invert exactly (up to float32 rounding).

Datasets store neither: they store the *stored half* (``blocks_to_stored``), exactly N values per
frame of N real samples, [Re_0 .. Re_{N//2} | Im_1 .. Im_{(N-1)//2}] of ``rfft``: the imaginary
parts of the DC bin (and of the Nyquist bin, for even N) are always zero and are left out. Each
feature layout follows from it by a gather with a sign per value (``expansion``): the full DFT's
mirrored bins are Re[N-k] = Re[k], Im[N-k] = -Im[k], and the always-zero values get sign 0.

Frames are transformed in batches with ``scipy.fft`` in float32: a per-block Python loop in
float64 (what the original code did) is ~7x slower and doubles the memory.

Adding a transform is one subclass and one ``register`` line; nothing else names transforms.
"""
from __future__ import annotations

import numpy as np
import scipy.fft

from gruv_hpc.errors import ConfigError


def blocks_to_stored(blocks: np.ndarray) -> np.ndarray:
    """(..., N) float samples -> (..., N) float32: the stored half (see the module docstring)."""
    blocks = np.asarray(blocks, dtype=np.float32)
    n = blocks.shape[-1]
    spec = scipy.fft.rfft(blocks, axis=-1, workers=1)
    return np.concatenate([spec.real, spec.imag[..., 1: 1 + (n - 1) // 2]], axis=-1).astype(np.float32, copy=False)


def audio_to_blocks(audio: np.ndarray, block_size: int) -> np.ndarray:
    """Non-overlapping, unwindowed blocks; the ragged tail is dropped. A view, no copy."""
    n = len(audio) // block_size
    return audio[: n * block_size].reshape(n, block_size)


def _rfft_expansion(n: int, full: bool) -> tuple[np.ndarray, np.ndarray]:
    n_re, n_im = n // 2 + 1, (n - 1) // 2
    k = np.arange(n if full else n_re)
    m = np.minimum(k, n - k) % n  # the stored bin that holds bin k (k = 0: 0)
    has_im = (m >= 1) & (m <= n_im)
    re_idx, re_sign = m, np.ones(len(k), np.float32)
    im_idx = np.where(has_im, n_re + m - 1, 0)
    im_sign = np.where(has_im, np.where(k == m, 1.0, -1.0), 0.0).astype(np.float32)
    return np.concatenate([re_idx, im_idx]).astype(np.int64), np.concatenate([re_sign, im_sign])


class Transform:
    """Base class: non-overlapping, unwindowed frames of ``frame`` samples (the paper's framing).

    Subclasses set ``name`` and ``help``, and override what differs: the feature layout
    (``feature_dim``, ``expansion``, ``features``, ``_inverse``) or the framing (``hop``,
    ``window``, ``stored``, ``synthesize``)."""

    name = ""
    help = ""
    window = "none"  # recorded in the manifest
    # The feature vector is ``parts`` equal parts that describe the same frequency bins in turn:
    # 2 for [Re | Im] (feature d and d + D/2 are one bin's complex value); 1 for a real layout
    # (e.g. a log magnitude). Analysis fits its per-bin floors by it (``analysis.baseline``).
    parts = 2

    def __init__(self, frame: int, hop: int | None = None):
        if frame < 2:
            raise ConfigError(f"block_size: must be >= 2, got {frame}")
        self.frame = int(frame)
        self.hop = self.default_hop(self.frame) if hop is None else int(hop)
        self.check_hop()

    # -- framing -----------------------------------------------------------------------------
    @staticmethod
    def default_hop(frame: int) -> int:
        return frame

    def check_hop(self) -> None:
        if self.hop != self.frame:
            raise ConfigError(f"hop: transform {self.name!r} frames audio without overlap, so hop must equal "
                              f"block_size ({self.frame}), got {self.hop}; --transform stft overlaps frames")

    def n_frames(self, n_samples: int) -> int:
        """Frames that ``n_samples`` of audio give (the ragged tail is dropped)."""
        return 0 if n_samples < self.frame else 1 + (n_samples - self.frame) // self.hop

    def n_samples(self, n_frames: int) -> int:
        """Samples of audio that ``n_frames`` frames span."""
        return 0 if n_frames < 1 else self.frame + (n_frames - 1) * self.hop

    def seconds(self, n_frames: int, sample_rate: int) -> float:
        """The time ``n_frames`` steps of the sequence advance (one hop each)."""
        return n_frames * self.hop / sample_rate

    def frames(self, audio: np.ndarray) -> np.ndarray:
        """(T,) audio -> (n, frame) frames, not yet windowed: a view where it can be."""
        return audio_to_blocks(audio, self.frame)

    # -- analysis ------------------------------------------------------------------------------
    def analyze(self, frames: np.ndarray) -> np.ndarray:
        """(n, frame) frames (from ``frames``) -> (n, storage_dim) float32: what a dataset stores."""
        return blocks_to_stored(frames)

    @property
    def storage_dim(self) -> int:
        """Values stored per frame: N real samples have exactly N real degrees of freedom in frequency."""
        return self.frame

    @property
    def feature_dim(self) -> int:
        raise NotImplementedError

    def expansion(self) -> tuple[np.ndarray, np.ndarray]:
        """(index, sign), each (D,): features[..., d] = sign[d] * stored[..., index[d]].

        sign is +1, -1 (the imaginary part of a mirrored bin of the full DFT) or 0 (a value that is
        always zero; its index is 0 and means nothing)."""
        raise NotImplementedError

    def stored_to_features(self, stored: np.ndarray) -> np.ndarray:
        """(..., N) stored half (any float dtype) -> (..., D) float32 features."""
        idx, sign = self.expansion()
        return np.take(np.asarray(stored, dtype=np.float32), idx, axis=-1) * sign

    def features(self, audio: np.ndarray) -> np.ndarray:
        """(T,) audio -> (n, D) float32 features."""
        return self.stored_to_features(self.analyze(self.frames(audio)))

    # -- synthesis -------------------------------------------------------------------------------
    def to_frames(self, features: np.ndarray) -> np.ndarray:
        """(..., D) features -> (..., frame) float32 frames (before any synthesis window)."""
        features = np.asarray(features)
        d = features.shape[-1]
        if d != self.feature_dim:
            raise ValueError(f"features have {d} values per frame, but transform {self.name!r} with block size "
                             f"{self.frame} has {self.feature_dim}")
        half = d // 2
        spec = features[..., :half].astype(np.float32) + 1j * features[..., half:].astype(np.float32)
        return self._inverse(spec).astype(np.float32, copy=False)

    def _inverse(self, spec: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def synthesize(self, features: np.ndarray) -> np.ndarray:
        """(n, D) features -> (n_samples(n),) float32 audio."""
        return self.to_frames(features).reshape(-1)

    # -- frequency axis --------------------------------------------------------------------------
    def frequencies(self, sample_rate: int) -> np.ndarray:
        """The frequencies (Hz) of ``magnitude``'s bins: 0 .. sample_rate / 2."""
        return np.fft.rfftfreq(self.frame, d=1.0 / sample_rate)

    def magnitude(self, features: np.ndarray) -> np.ndarray:
        """|X(f)| for the non-negative frequencies of each frame: (..., D) -> (..., N//2 + 1)."""
        half = features.shape[-1] // 2
        return np.hypot(features[..., :half], features[..., half:])[..., : self.frame // 2 + 1]

    # -- manifest --------------------------------------------------------------------------------
    def params(self) -> dict:
        """What a dataset's manifest records of its transform (beside sample_rate and clip_blocks)."""
        return {"transform": self.name, "block_size": self.frame, "hop": self.hop, "window": self.window,
                "feature_dim": self.feature_dim, "storage_dim": self.storage_dim}


class FFT(Transform):
    name = "fft"
    help = "[Re|Im] of the full DFT of each non-overlapping block, 2N values (the paper's)"

    @property
    def feature_dim(self) -> int:
        return 2 * self.frame

    def expansion(self):
        return _rfft_expansion(self.frame, full=True)

    def features(self, audio):
        # The full DFT directly (what the paper computes), not a gather over the stored half.
        spec = scipy.fft.fft(np.asarray(self.frames(audio), dtype=np.float32), axis=-1, workers=1)
        return np.concatenate([spec.real, spec.imag], axis=-1).astype(np.float32, copy=False)

    def _inverse(self, spec):
        # A prediction need not be conjugate-symmetric; the real part is the closest real signal.
        return scipy.fft.ifft(spec, axis=-1, workers=1).real


class RFFT(Transform):
    name = "rfft"
    help = "[Re|Im] of the rfft of each non-overlapping block, the non-redundant half (N + 1 or N + 2 values)"

    @property
    def feature_dim(self) -> int:
        return 2 * (self.frame // 2 + 1)

    def expansion(self):
        return _rfft_expansion(self.frame, full=False)

    def features(self, audio):
        spec = scipy.fft.rfft(np.asarray(self.frames(audio), dtype=np.float32), axis=-1, workers=1)
        return np.concatenate([spec.real, spec.imag], axis=-1).astype(np.float32, copy=False)

    def _inverse(self, spec):
        return scipy.fft.irfft(spec, n=self.frame, axis=-1, workers=1)


class STFT(RFFT):
    """Overlapping frames under a sqrt-Hann window: [Re | Im] of the rfft of each windowed frame.

    The analysis and the synthesis window are both the square root of a periodic Hann window, so
    their product is a Hann window, whose shifts by any hop of frame/2, frame/4, ... add up to a
    constant: synthesis is a weighted overlap-add, exact (to float rounding) wherever full frames
    overlap. Each synthesized frame fades in and out, so frames that do not quite agree (a model's
    predictions) meet without a step at their edges, unlike the paper's rectangular blocks."""

    name = "stft"
    help = "[Re|Im] of the rfft of overlapping sqrt-Hann-windowed frames (hop default frame/2), overlap-added back"
    window = "sqrt_hann"

    def __init__(self, frame: int, hop: int | None = None):
        super().__init__(frame, hop)
        import scipy.signal
        self.w = np.sqrt(scipy.signal.get_window("hann", self.frame, fftbins=True)).astype(np.float32)

    @staticmethod
    def default_hop(frame: int) -> int:
        return frame // 2

    def check_hop(self) -> None:
        # Past half a frame, the shifted windows leave gaps (Hann is 0 at its ends) that nothing fills.
        if not 1 <= self.hop <= self.frame // 2:
            raise ConfigError(f"hop: transform 'stft' needs 1 <= hop <= block_size / 2 = {self.frame // 2}, "
                              f"got {self.hop}")

    def frames(self, audio):
        audio = np.asarray(audio)
        if len(audio) < self.frame:
            return np.empty((0, self.frame), audio.dtype)
        return np.lib.stride_tricks.sliding_window_view(audio, self.frame)[:: self.hop]

    def analyze(self, frames):
        return blocks_to_stored(np.asarray(frames, np.float32) * self.w)

    def features(self, audio):
        spec = scipy.fft.rfft(np.asarray(self.frames(audio), np.float32) * self.w, axis=-1, workers=1)
        return np.concatenate([spec.real, spec.imag], axis=-1).astype(np.float32, copy=False)

    def synthesize(self, features):
        frames = self.to_frames(features) * self.w
        n = len(frames)
        out = np.zeros(self.n_samples(n), np.float64)
        weight = np.zeros_like(out)
        w2 = (self.w.astype(np.float64)) ** 2
        for i in range(n):  # a Python loop over frames: a few thousand per minute of audio
            out[i * self.hop: i * self.hop + self.frame] += frames[i]
            weight[i * self.hop: i * self.hop + self.frame] += w2
        # Inside, where every sample is under as many frames as it can be, dividing by the weights
        # inverts the windows exactly. At the two ends fewer frames overlap and the weights fall
        # towards zero: there the audio fades in and out instead of being divided by nearly nothing.
        lo, hi = self.frame - self.hop, len(weight) - (self.frame - self.hop)
        floor = float(weight[lo:hi].min()) if hi > lo else float(weight.max())
        weight[:lo] = np.maximum(weight[:lo], floor)
        weight[max(hi, lo):] = np.maximum(weight[max(hi, lo):], floor)
        return (out / np.maximum(weight, 1e-12)).astype(np.float32)


TRANSFORMS: dict[str, type[Transform]] = {}


def register(cls: type[Transform]) -> type[Transform]:
    TRANSFORMS[cls.name] = cls
    return cls


register(FFT)
register(RFFT)
register(STFT)


def get_transform(name: str, frame: int, hop: int | None = None) -> Transform:
    """The transform ``name`` for frames of ``frame`` samples; an unknown name lists the valid ones."""
    try:
        cls = TRANSFORMS[name]
    except KeyError:
        raise ConfigError(f"transform: {name!r} is not one of {', '.join(TRANSFORMS)}") from None
    return cls(frame, hop)


def from_params(params: dict) -> Transform:
    """The transform a dataset's manifest (or a resolved run config) records. Datasets made before
    hops were recorded have non-overlapping frames."""
    return get_transform(params["transform"], params["block_size"], params.get("hop"))
