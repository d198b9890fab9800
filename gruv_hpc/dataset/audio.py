"""Audio in and out: decoding through soundfile, downmix, resampling, safe PCM writing."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from gruv_hpc.errors import GruvError


class AudioError(GruvError):
    """A file could not be decoded; the message names the file and the reason."""


def probe(path: str | Path):
    """The header of an audio file (soundfile's info: samplerate, frames, channels, format),
    without decoding it. Raises AudioError for anything soundfile cannot open."""
    try:
        return sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, OSError) as e:
        raise AudioError(f"{path}: not audio soundfile can read ({getattr(e, 'error_string', None) or e})") from e


def load_mono(path: str | Path, sample_rate: int, chunk_frames: int = 1 << 18) -> np.ndarray:
    """Decode any soundfile-supported file to mono float32 at ``sample_rate``.

    soundfile scales every integer PCM depth (8/16/24/32-bit) and float formats to [-1, 1]
    itself, which is what the original code got wrong for 32-bit input. Decoding goes chunk by
    chunk and downmixes immediately, so a stereo file never sits in memory twice.
    """
    path = Path(path)
    try:
        with sf.SoundFile(str(path)) as f:
            sr = f.samplerate
            parts = []
            while True:
                chunk = f.read(chunk_frames, dtype="float32", always_2d=True)
                if len(chunk) == 0:
                    break
                parts.append(chunk.mean(axis=1, dtype=np.float32) if chunk.shape[1] > 1 else chunk[:, 0].copy())
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as e:
        raise AudioError(f"{path}: cannot decode audio ({e})") from e
    audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"{path}: decoded audio contains NaN or inf samples")
    return resample(audio, sr, sample_rate)


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased), exact rational ratio."""
    if sr_in == sr_out or len(audio) == 0:
        return audio.astype(np.float32, copy=False)
    # Imported here: scipy.signal takes about a second to import, which every `gruv preprocess`
    # (and each of its task processes) would pay, mostly for songs already at the target rate.
    from scipy.signal import resample_poly
    g = math.gcd(sr_in, sr_out)
    return resample_poly(audio, sr_out // g, sr_in // g).astype(np.float32, copy=False)


def to_pcm(audio: np.ndarray, peak: float = 0.0) -> tuple[np.ndarray, int]:
    """Prepare float audio for writing, never letting samples wrap around.

    ``peak`` > 0 scales the signal so its maximum magnitude is ``peak`` (peak-normalization,
    nothing clips). With ``peak`` == 0 samples are clipped to [-1, 1]. Returns the audio and the
    number of samples that were clipped. NaN/inf become 0 and count as clipped.
    """
    audio = np.asarray(audio, dtype=np.float32)
    bad = ~np.isfinite(audio)
    audio = np.where(bad, 0.0, audio).astype(np.float32)
    if peak > 0:
        m = float(np.max(np.abs(audio))) if audio.size else 0.0
        if m > 0:
            audio = audio * (peak / m)
    over = np.abs(audio) > 1.0
    return np.clip(audio, -1.0, 1.0), int(over.sum() + bad.sum())


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int, float32: bool = False, peak: float = 0.0) -> int:
    """Write mono audio as 16-bit PCM (or 32-bit float); returns the clipped-sample count. Written
    to a temp file beside ``path`` and moved into place: a full disk leaves no truncated WAV (and
    the file that was there, if any, as it was)."""
    import io

    from gruv_hpc.fsio import temp_name
    audio, clipped = to_pcm(audio, peak)
    buf = io.BytesIO()  # encoded in memory, written by Python: a full disk is an OSError that names itself
    sf.write(buf, audio, sample_rate, subtype="FLOAT" if float32 else "PCM_16", format="WAV")
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return clipped
