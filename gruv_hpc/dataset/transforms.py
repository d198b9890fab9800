"""Feature transforms: one ``Transform`` object per kind, in a registry (``TRANSFORMS``).

A transform owns everything that depends on how audio becomes features and back:

- framing: the frame length (``frame``, the config's ``block_size``) and the hop between frames
  (``hop``; the paper's transforms use non-overlapping frames, hop = frame);
- analysis (``analyze``: frames -> the stored half of each frame's spectrum) and synthesis
  (``synthesize``: features -> audio, by overlap-add where frames overlap);
- dimensions (``feature_dim``, ``storage_dim``) and the gather that expands what is stored into
  the model's features (``expansion``), on any device;
- its frequency axis (``frequencies``, ``magnitude``) and its time axis (``seconds``);
- what a stored value means, for whoever reads a dataset without a model: each bin's energy
  (``add_power``: a song's bandwidth), the largest value a peak sample can give (``stored_bound``:
  the float16 check) and each stored value's name and frequency (``stored_value_name``: the
  report's floor section).

Each transform's docstring gives its analysis and, beside it, its inverse (``synthesize``).

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

The log-magnitude transforms (``logmag``, ``logmag_if``) store no Re/Im: see ``LogMag``.

Adding a transform is one subclass and one ``register`` line; nothing else names transforms.
"""
from __future__ import annotations

import numpy as np
import scipy.fft

from gruv_hpc.dataset import phase
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


def overlap_add(frames: np.ndarray, w: np.ndarray, hop: int) -> np.ndarray:
    """(n, N) frames (before the synthesis window ``w``) -> (N + (n - 1) hop,) float32 audio: a
    weighted overlap-add, the inverse of analysing every ``hop`` samples under window ``w``."""
    frames = frames * w
    n, frame = frames.shape
    out = np.zeros(0 if n < 1 else frame + (n - 1) * hop, np.float64)
    weight = np.zeros_like(out)
    w2 = (w.astype(np.float64)) ** 2
    for i in range(n):  # a Python loop over frames: a few thousand per minute of audio
        out[i * hop: i * hop + frame] += frames[i]
        weight[i * hop: i * hop + frame] += w2
    # Inside, where every sample is under as many frames as it can be, dividing by the weights
    # inverts the windows exactly. At the two ends fewer frames overlap and the weights fall
    # towards zero: there the audio fades in and out instead of being divided by nearly nothing.
    lo, hi = frame - hop, len(weight) - (frame - hop)
    floor = float(weight[lo:hi].min()) if hi > lo else float(weight.max())
    weight[:lo] = np.maximum(weight[:lo], floor)
    weight[max(hi, lo):] = np.maximum(weight[max(hi, lo):], floor)
    return (out / np.maximum(weight, 1e-12)).astype(np.float32)


class Transform:
    """Base class: non-overlapping, unwindowed frames of ``frame`` samples (the paper's framing).

    Subclasses set ``name`` and ``help``, and override what differs: the feature layout
    (``feature_dim``, ``expansion``, ``features``, ``_inverse``) or the framing (``hop``,
    ``window``, ``stored``, ``synthesize``)."""

    name = ""
    help = ""
    window = "none"  # recorded in the manifest
    # True where the stored features hold no phase, so synthesis takes the seed's own audio
    # (``synthesize(..., seed_audio=...)``) to continue it without a seam: generation then decodes it.
    phase_from_seed = False
    # The feature vector is ``parts`` equal parts that describe the same frequency bins in turn:
    # 2 for [Re | Im] (feature d and d + D/2 are one bin's complex value); 1 for a real layout
    # (e.g. a log magnitude). Analysis fits its per-bin floors by it (``analysis.baseline``).
    parts = 2
    default_frame = 11025  # block_size when a build names none: 0.25 s at 44.1 kHz, the paper's

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

    def analyze_rows(self, frames: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of what a song whose frames are ``frames`` stores. The same as
        ``analyze(frames[start:stop])`` for a transform that reads each frame alone; one whose
        stored values depend on the frame before (``logmag_if``) reads that one too. A dataset
        build calls this, a batch of rows at a time."""
        return self.analyze(frames[start:stop])

    @property
    def storage_dim(self) -> int:
        """Values stored per frame: N real samples have exactly N real degrees of freedom in frequency."""
        return self.frame

    @property
    def n_bins(self) -> int:
        """Frequency bins per frame: 0 .. N//2 (``frequencies``)."""
        return self.frame // 2 + 1

    def stored_bound(self, peak: float) -> float:
        """The largest |stored value| audio whose samples are at most ``peak`` can give: the
        float16 check of a build. A DFT coefficient is a sum of N samples (a window only lowers it)."""
        return self.frame * peak

    def add_power(self, power: np.ndarray, stored: np.ndarray) -> None:
        """Add to ``power`` (n_bins,) float64 the energy per frequency bin of (n, storage_dim) stored
        rows, summed over the rows: |X_k|^2, from the stored half's layout (the module docstring)."""
        n_re = self.n_bins
        st = stored.astype(np.float64)
        power += np.square(st[:, :n_re]).sum(0)
        power[1: 1 + st.shape[1] - n_re] += np.square(st[:, n_re:]).sum(0)

    def stored_value_name(self, j: int, sample_rate: int) -> tuple[str, float]:
        """(part, Hz) of stored value ``j``: [Re_0 .. Re_{N//2} | Im_1 .. Im_{(N-1)//2}]."""
        n_re = self.n_bins
        k, part = (j, "Re") if j < n_re else (j - n_re + 1, "Im")
        return part, k * sample_rate / self.frame

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

    def synthesize(self, features: np.ndarray, seed_audio: np.ndarray | None = None) -> np.ndarray:
        """(n, D) features -> (n_samples(n),) float32 audio. ``seed_audio``: the audio the first
        frames of ``features`` were analysed from (a continuation's seed), for transforms that do
        not store the phase (``LogMag``); the others invert exactly and need none."""
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

    @classmethod
    def from_params(cls, params: dict) -> "Transform":
        """The transform ``params`` (a manifest's) record; a subclass with options of its own reads them."""
        return cls(params["block_size"], params.get("hop"))


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
            raise ConfigError(f"hop: transform {self.name!r} needs 1 <= hop <= block_size / 2 = {self.frame // 2}, "
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

    def synthesize(self, features, seed_audio=None):
        return overlap_add(self.to_frames(features), self.w, self.hop)


class LogMag(STFT):
    """Log-magnitude STFT: what a model can predict of music (issue 30: the next frame of an
    unseen song is 4-20x nearer its current one than the mean, where the paper's [Re | Im] is not
    predictable at all).

    Analysis (``features``, ``analyze``): frames of ``block_size`` samples every ``hop`` (default
    2048 and 512: 46 and 12 ms at 44.1 kHz), each under a periodic Hann window, rfft, and
    ``log(|X_k| + eps)`` for the bins k = 0 .. N//2: N//2 + 1 values a frame (1025 at N = 2048),
    stored as they are. ``eps`` (default 1e-5, the floor of silence: log(1e-5) = -11.5) is
    recorded in the manifest and read back from it.

    Inverse (``synthesize(features, seed_audio=None, n_iter=None)``): the phase is not stored, so
    it is recovered by Griffin-Lim (``phase.griffin_lim``: librosa's fast Griffin-Lim, ``n_iter``
    iterations, default ``self.n_iter`` = 32) on the magnitudes ``exp(features) - eps``.
    Without ``seed_audio`` every frame's phase is fitted, from librosa's random start (seeded:
    the same audio every time). For a continuation give ``seed_audio``: the audio the first
    frames of ``features`` were analysed from (the seed; frame t starts at sample t * hop). The
    frames that lie wholly inside it keep the seed's own phases through every iteration; each
    later frame starts from the last of them advanced by its bins' frequencies (bin k by
    2 pi k hop / N a hop), so the continuation joins the seed without a step::

        audio = tf.synthesize(np.concatenate([seed_raw, generated_raw]), seed_audio=seed_wave)
        seed_part, continuation = audio[: len(seed_raw) * tf.hop], audio[len(seed_raw) * tf.hop:]

    (``seed_raw``: unnormalized features, ``tf.features(seed_wave)``'s rows.)"""

    name = "logmag"
    phase_from_seed = True
    parts = 1  # one real value a bin
    help = ("log(|X| + eps) of the rfft of overlapping Hann-windowed frames (block_size default 2048, hop "
            "default block_size/4), N//2 + 1 values; synthesized by Griffin-Lim")
    window = "hann"
    default_frame = 2048
    EPS = 1e-5
    N_ITER = 32

    def __init__(self, frame: int, hop: int | None = None, eps: float | None = None, n_iter: int | None = None):
        super().__init__(frame, hop)
        self.eps = float(self.EPS if eps is None else eps)
        if not (np.isfinite(self.eps) and self.eps > 0):
            raise ConfigError(f"eps: transform {self.name!r} needs eps > 0 (the log of a silent bin), got {eps}")
        self.n_iter = int(self.N_ITER if n_iter is None else n_iter)
        import scipy.signal
        self.w = scipy.signal.get_window("hann", self.frame, fftbins=True).astype(np.float32)  # librosa's "hann"
        self.advance = phase.expected_advance(self.frame, self.hop)

    @staticmethod
    def default_hop(frame: int) -> int:
        return max(1, frame // 4)

    @classmethod
    def from_params(cls, params):
        return cls(params["block_size"], params.get("hop"), params.get("eps"))

    def params(self):
        return {**super().params(), "eps": self.eps}

    # -- analysis ------------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        return self.n_bins

    @property
    def storage_dim(self) -> int:
        return self.feature_dim

    def expansion(self):
        return np.arange(self.feature_dim, dtype=np.int64), np.ones(self.feature_dim, np.float32)

    def spectrum(self, frames: np.ndarray) -> np.ndarray:
        """(n, frame) frames -> (n, n_bins) complex64: the rfft of each Hann-windowed frame."""
        return scipy.fft.rfft(np.asarray(frames, np.float32) * self.w, axis=-1, workers=1)

    def log_magnitude(self, spec: np.ndarray) -> np.ndarray:
        return np.log(np.abs(spec) + self.eps).astype(np.float32, copy=False)

    def analyze(self, frames):
        return self.log_magnitude(self.spectrum(frames))

    def features(self, audio):
        return self.analyze(self.frames(audio))

    # -- synthesis -------------------------------------------------------------------------------
    def to_frames(self, features):
        raise NotImplementedError(f"transform {self.name!r} stores no phase: its frames overlap and only "
                                  "synthesize() (Griffin-Lim) turns its features into audio")

    def _check_dim(self, features: np.ndarray) -> None:
        if features.shape[-1] != self.feature_dim:
            raise ValueError(f"features have {features.shape[-1]} values per frame, but transform {self.name!r} "
                             f"with block size {self.frame} has {self.feature_dim}")

    def _seed_spectrum(self, seed_audio: np.ndarray | None, n: int) -> np.ndarray | None:
        """The spectra of the seed's whole frames (at most n), (k, n_bins); None without a seed."""
        if seed_audio is None:
            return None
        return self.spectrum(self.frames(np.asarray(seed_audio, np.float32)))[:n]

    def synthesize(self, features, seed_audio=None, n_iter: int | None = None):
        features = np.asarray(features)
        self._check_dim(features)
        mag = self.magnitude(features).T  # (bins, n): librosa's layout
        known = self._seed_spectrum(seed_audio, len(features))
        init = None
        if known is not None and len(known):
            k = len(known)
            steps = np.arange(1, len(features) - k + 1, dtype=np.float64)[:, None]
            init = np.concatenate([np.angle(known), np.angle(known[-1]) + steps * self.advance]).T
        spec = phase.griffin_lim(mag, self.frame, self.hop, self.n_iter if n_iter is None else int(n_iter),
                                 init=init, known=None if known is None else known.T)
        return self.inverse_stft(spec.T)

    def inverse_stft(self, spec: np.ndarray) -> np.ndarray:
        """(n, n_bins) complex spectra -> audio: the Hann-weighted overlap-add (``overlap_add``),
        as librosa.istft does, but fading out at the two ends where it divides by nearly nothing."""
        return overlap_add(scipy.fft.irfft(spec, n=self.frame, axis=-1, workers=1), self.w, self.hop)

    # -- what the values mean ------------------------------------------------------------------
    # A log-magnitude above this many times the largest a full-scale frame can give (sum(w)) is no
    # audio's: a runaway prediction (a delta model's drift) is capped here, 60 dB over full scale,
    # so it becomes loud audio that is clipped and reported, never an overflow to inf.
    HEADROOM = 1e3

    def magnitude(self, features):
        """|X_k| = exp(log-magnitude) - eps (never below 0; the log-magnitude capped at HEADROOM
        times full scale): (..., D) -> (..., n_bins)."""
        cap = float(np.log(float(self.w.sum()) * self.HEADROOM))
        return np.maximum(np.exp(np.minimum(np.asarray(features, np.float64)[..., : self.n_bins], cap)) - self.eps, 0.0)

    def add_power(self, power, stored):
        power += np.square(self.magnitude(stored)).sum(0)

    def stored_bound(self, peak):
        # |X_k| <= sum(w) * peak; the log of it, or of eps for silence, whichever is further out
        return max(abs(float(np.log(float(self.w.sum()) * peak + self.eps))), abs(float(np.log(self.eps))))

    def stored_value_name(self, j, sample_rate):
        return "log|X|", j * sample_rate / self.frame


class LogMagIF(LogMag):
    """Log-magnitude and instantaneous frequency, as in GANSynth (Engel et al. 2019): an exact
    representation a model can predict.

    Analysis: the frames, window and log-magnitude of ``LogMag`` (N//2 + 1 values), then, for each
    bin k, its instantaneous frequency: how far its phase advanced since the frame one hop earlier,
    minus the advance its centre frequency makes (2 pi k hop / N), wrapped to [-pi, pi): N//2 + 1
    more values, 2 (N//2 + 1) a frame, stored [log|X_0| .. log|X_{N//2}| | IF_0 .. IF_{N//2}].
    The first frame of a song is taken against a frame of phase 0 before it. A dataset build
    reads the frame before each batch too (``analyze_rows``), so every row of a song is its own
    advance, whatever batch it was computed in.

    Inverse (``synthesize(features, seed_audio=None)``): exact. The phases are the running sum of
    (IF + the expected advance), from phase 0 before the first frame (``phase.integrate_phase``),
    and librosa's inverse STFT overlap-adds the frames: a song's features give back its audio to
    float32 rounding away from its first and last frame. A clip taken from inside a song has lost
    its phase at the start (one constant per bin); ``seed_audio`` (the audio of its first frames,
    as for ``LogMag``) supplies it, and then the continuation's phases run on from the seed's own."""

    name = "logmag_if"
    parts = 2  # [log magnitude | instantaneous frequency] of the same bins
    help = ("log(|X| + eps) and instantaneous frequency (phase advance minus the bin's own, wrapped) of "
            "overlapping Hann-windowed frames, 2 (N//2 + 1) values; synthesized exactly by integrating the phases")

    @property
    def feature_dim(self) -> int:
        return 2 * self.n_bins

    def _stored(self, spec: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
        inst = phase.instantaneous_frequency(np.angle(spec), self.advance, previous)
        return np.concatenate([self.log_magnitude(spec), inst.astype(np.float32)], axis=-1)

    def analyze(self, frames):
        return self._stored(self.spectrum(frames), None)

    def analyze_rows(self, frames, start, stop):
        if start == 0:
            return self.analyze(frames[:stop])
        spec = self.spectrum(frames[start - 1: stop])
        return self._stored(spec[1:], np.angle(spec[0]))

    def synthesize(self, features, seed_audio=None, n_iter=None):
        """``n_iter`` is accepted for the same call as ``LogMag``'s and not used: nothing is iterated."""
        features = np.asarray(features)
        self._check_dim(features)
        phases = phase.integrate_phase(features[:, self.n_bins:], self.advance)
        known = self._seed_spectrum(seed_audio, len(features))
        if known is not None and len(known):
            # one constant per bin: the seed's own phase at its last whole frame
            phases += phase.wrap(np.angle(known[-1]) - phases[len(known) - 1])
        return self.inverse_stft(self.magnitude(features) * np.exp(1j * phases))

    def stored_bound(self, peak):
        return max(super().stored_bound(peak), float(np.pi))

    def stored_value_name(self, j, sample_rate):
        if j < self.n_bins:
            return super().stored_value_name(j, sample_rate)
        return "IF", (j - self.n_bins) * sample_rate / self.frame


TRANSFORMS: dict[str, type[Transform]] = {}


def register(cls: type[Transform]) -> type[Transform]:
    TRANSFORMS[cls.name] = cls
    return cls


register(FFT)
register(RFFT)
register(STFT)
register(LogMag)
register(LogMagIF)


def transform_class(name: str) -> type[Transform]:
    """The registered transform ``name``; an unknown name lists the valid ones."""
    try:
        return TRANSFORMS[name]
    except KeyError:
        raise ConfigError(f"transform: {name!r} is not one of {', '.join(TRANSFORMS)}") from None


def get_transform(name: str, frame: int | None = None, hop: int | None = None) -> Transform:
    """The transform ``name`` for frames of ``frame`` samples (None: its ``default_frame``)."""
    cls = transform_class(name)
    return cls(cls.default_frame if frame is None else frame, hop)


def from_params(params: dict) -> Transform:
    """The transform a dataset's manifest (or a resolved run config) records. Datasets made before
    hops were recorded have non-overlapping frames."""
    return transform_class(params["transform"]).from_params(params)
