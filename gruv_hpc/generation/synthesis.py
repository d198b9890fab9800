"""Seeds in, audio out: a seed clip as normalized features, and features back to audio."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gruv_hpc.dataset.audio import load_mono
from gruv_hpc.dataset.clips import ClipDataset
from gruv_hpc.errors import GenerationError
from gruv_hpc.generation.run import LoadedRun


def seed_features(run: LoadedRun, source: str, index: int, seconds: float, start_s: float = 0.0,
                  split: ClipDataset | None = None) -> tuple[np.ndarray, dict]:
    """The seed as normalized features (T0, D), and a record of where it came from. ``index``:
    the clip of the dev/train split (``split``, when already open); ``start_s``: where in a seed
    file the seed starts."""
    cfg, tf = run.cfg, run.transform
    step_s = tf.seconds(1, cfg.sample_rate)
    n = int(round(seconds / step_s))
    if n < 1:
        raise GenerationError(f"seed of {seconds} s is shorter than one frame step ({step_s:.3f} s)")
    if source in ("dev", "train"):
        ds = split if split is not None else run.data.split(source, normalize=False)
        if len(ds) == 0:
            raise GenerationError(f"the {source} split of {cfg.data} has no clips to seed from")
        if not 0 <= index < len(ds):
            raise GenerationError(f"seed index {index} is out of range: the {source} split has {len(ds)} clips")
        start, end = int(ds.index.start_of_clip[index]), int(ds.index.end_of_clip[index])
        if start + n > end:
            raise GenerationError(f"clip {index} of the {source} split has only {end - start} blocks after it; "
                                  f"a {seconds} s seed needs {n}")
        raw = ds.features(index, n=n)
        song = ds.manifest["songs"][int(ds.index.song_of_clip[index])]
        info = {"source": source, "index": index, "song": song["path"], "artist": song["artist"],
                "start_s": tf.seconds(int(ds.index.clip_of_song[index]) * cfg.clip_blocks, cfg.sample_rate)}
    else:
        path = Path(source)
        if not path.exists():
            raise GenerationError(f"seed file {path} does not exist (and is not 'dev' or 'train')")
        if not path.is_file():  # a FIFO or a device would block the decoder for ever
            raise GenerationError(f"seed file {path} is not a regular file")
        audio = load_mono(path, cfg.sample_rate)  # resampled and downmixed like the corpus
        audio = audio[int(round(start_s * cfg.sample_rate)):][: tf.n_samples(n)]
        if tf.n_frames(len(audio)) < 1:
            raise GenerationError(f"seed file {path} ({len(audio) / cfg.sample_rate:.2f} s) is shorter than one frame "
                                  f"({tf.frame / cfg.sample_rate:.3f} s) from --seed-start {start_s:g} s on")
        raw = tf.features(audio)
        n = len(raw)
        info = {"source": str(path), "index": None, "start_s": start_s}
    feats = (raw - run.mean) / run.std
    info["blocks"] = n
    info["seconds"] = tf.seconds(n, cfg.sample_rate)
    return feats.astype(np.float32), info


def seed_waveform(run: LoadedRun, info: dict) -> np.ndarray | None:
    """The seed's own audio, for a transform whose features hold no phase (``phase_from_seed``:
    logmag, logmag_if): the seed file's excerpt, or the dev/train song's, decoded again from where
    the manifest says it is. None for other transforms, and when the song is no longer there
    (synthesis then fits every phase; the sidecar says which: ``seed.phase_from``)."""
    tf, sr = run.transform, run.cfg.sample_rate
    if not tf.phase_from_seed:
        return None
    path = Path(info["song"] if info.get("index") is not None else info["source"])
    try:
        audio = load_mono(path, sr) if path.is_file() else None
    except Exception:  # a song changed or damaged since the build: fitted phases, said in the sidecar
        audio = None
    if audio is None:
        return None
    start = int(round(info["start_s"] * sr))
    return audio[start: start + tf.n_samples(info["blocks"])]


def to_audio(run: LoadedRun, feats: np.ndarray, seed_audio: np.ndarray | None = None) -> np.ndarray:
    raw = np.asarray(feats, np.float64) * run.std + run.mean
    if seed_audio is None:
        return run.transform.synthesize(raw)
    return run.transform.synthesize(raw, seed_audio=seed_audio)


def seed_and_continuation_audio(run: LoadedRun, seed: np.ndarray, gen: np.ndarray,
                                seed_audio: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The seed's audio and the continuation's, synthesized as one sequence and cut where the
    continuation's first frame starts: where frames overlap, the seed's last frame and the
    continuation's first are added together, as in any other pair of neighbours. ``seed_audio``
    (``seed_waveform``): the seed's own audio, whose phases a phase-less transform continues."""
    audio = to_audio(run, np.concatenate([seed, gen]), seed_audio)
    cut = len(seed) * run.transform.hop
    return audio[:cut], audio[cut:]
