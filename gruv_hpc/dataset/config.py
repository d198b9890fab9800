"""``PreprocessConfig``: the parameters of a dataset build (``gruv preprocess``)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from gruv_hpc.config import check_number, opt
from gruv_hpc.errors import ConfigError

DTYPES = ("float32", "float16")


@dataclass
class PreprocessConfig:
    sample_rate: int = opt(44100, "target sample rate (Hz); every song is resampled to it")
    block_size: int | None = opt(None, "samples per block (frame) N; None = the transform's default: 11025 (0.25 s "
                                       "at 44.1 kHz, the paper's) for fft, rfft and stft, 2048 for logmag and logmag_if")
    clip_blocks: int = opt(40, "blocks per training clip (40 = 10 s, the paper's)")
    transform: str = opt("fft", "feature transform (gruv_hpc.dataset.transforms.TRANSFORMS): fft ([Re|Im] of the "
                               "full DFT, 2N values, the paper's), rfft (the non-redundant half), stft "
                               "(overlapping sqrt-Hann frames, hop default block_size/2, overlap-added back), logmag "
                               "(log |STFT| of Hann frames, hop default block_size/4, N/2+1 values, Griffin-Lim back) "
                               "or logmag_if (logmag and instantaneous frequency, 2 (N/2+1) values, exact back)")
    hop: int | None = opt(None, "samples between the starts of consecutive frames; None = the transform's default "
                                "(block_size for the paper's non-overlapping fft and rfft)")
    dev_fraction: float = opt(0.2, "fraction of each artist's songs held out as the dev split")
    seed: int = opt(0, "seed of the song-level train/dev split")
    shard_mb: float = opt(512.0, "upper bound of one shard's size, MiB")
    shard_clips: int = opt(0, "upper bound of clips per shard (0: the size bound only)")
    dtype: str = opt("float32", "stored value type: float32, or float16 (half the bytes; read back as float32)")

    def __post_init__(self):
        if self.block_size is None:  # the transform's own frame (an unknown transform is named by validate)
            from gruv_hpc.dataset.transforms import TRANSFORMS, Transform
            self.block_size = TRANSFORMS.get(self.transform, Transform).default_frame

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")
        for k, lo in (("sample_rate", 1), ("block_size", 2), ("clip_blocks", 1)):
            if getattr(self, k) < lo:
                raise ConfigError(f"{k}: must be >= {lo}, got {getattr(self, k)}")
        if not (math.isfinite(self.dev_fraction) and 0 <= self.dev_fraction < 1):
            raise ConfigError(f"dev_fraction: must be in [0, 1), got {self.dev_fraction}")
        check_number("shard_mb", self.shard_mb, positive=True)
        if self.shard_clips < 0:
            raise ConfigError(f"shard_clips: must be >= 0, got {self.shard_clips}")
        if self.hop is not None and not 1 <= self.hop <= self.block_size:
            raise ConfigError(f"hop: must be in [1, block_size = {self.block_size}], got {self.hop}")
        self.make_transform()  # an unknown transform, or a hop it cannot take, is named here

    def params(self) -> dict:
        """The parameters a dataset records in its manifest (and a run can pin)."""
        return {"sample_rate": self.sample_rate, "clip_blocks": self.clip_blocks, **self.make_transform().params(),
                "dtype": self.dtype, "dev_fraction": self.dev_fraction, "seed": self.seed}

    def make_transform(self):
        """The ``Transform`` these parameters describe."""
        from gruv_hpc.dataset.transforms import get_transform  # numpy and scipy: not for every CLI start
        return get_transform(self.transform, self.block_size, self.hop)

