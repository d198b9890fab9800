"""Music generation from a trained run, and numbers that describe the result.

``refeed`` is the paper's algorithm: feed the whole sequence, append the last prediction, repeat
(quadratic). ``stateful`` runs the seed once and then steps the recurrent state one block at a
time (linear). The model is causal, so the two are equal up to float rounding, which a trained
recurrent model can amplify (on one, 1 LSB for the first 5 s, then 0.02 by 10 s): a long
continuation drifts apart, both equally valid.

Unlike the original code, the continuation starts *after* the seed: no block of the output is a
teacher-forced reconstruction of the seed.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gruv_hpc.dataset.audio import load_mono, write_wav
from gruv_hpc.training.checkpoint import RunPaths, load_best, load_checkpoint, load_latest, upgrade
from gruv_hpc.training.config import TrainConfig
from gruv_hpc.config import build
from gruv_hpc.dataset.clips import ClipDataset, DatasetHandle
from gruv_hpc.errors import GenerationError
from gruv_hpc.fsio import atomic_write_json
from gruv_hpc.dataset.transforms import Transform, audio_to_blocks
from gruv_hpc.dataset.manifest import DatasetError
from gruv_hpc.training.config import run_config
from gruv_hpc.training.model import GRUVModel




@dataclass
class LoadedRun:
    model: GRUVModel
    cfg: TrainConfig
    ckpt_path: Path
    epoch: int
    data: DatasetHandle  # the run's dataset, opened once: its statistics, transform and splits
    cache: dict = field(default_factory=dict, repr=False)  # what diagnostics reuse across clips (nearest_train's pool)

    @property
    def mean(self) -> np.ndarray:
        return self.data.mean

    @property
    def std(self) -> np.ndarray:
        return self.data.std

    @property
    def transform(self) -> Transform:
        return self.data.transform


def load_run(run_dir, checkpoint: str = "best", device="cpu") -> LoadedRun:
    """A run's model and statistics. ``checkpoint``: best (best.pt, or the newest readable one
    with a warning when it is missing or unreadable), last (the newest readable), or a PATH."""
    paths = RunPaths(run_dir)
    if not paths.config.exists():
        raise GenerationError(f"{run_dir}: not a run directory (no config.json)")
    device = check_device(device)
    if checkpoint == "last":
        state, path = load_latest(paths, map_location=device)
    elif checkpoint == "best":
        state, path = load_best(paths, map_location=device)
    else:
        path = Path(checkpoint)
        if not path.is_file():
            raise GenerationError(f"checkpoint {path} does not exist")
        try:
            state = load_checkpoint(path, device)
        except Exception as e:
            raise GenerationError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from None
    if state is None:
        raise GenerationError(f"{run_dir}: no readable checkpoint to generate from (has training saved one yet?)")
    # The dataset's newest known place: config.json follows a moved dataset, the checkpoint does not.
    data = json.loads(paths.config.read_text()).get("config", {}).get("data") or state["config"]["data"]
    cfg = build(TrainConfig, {**run_config(state["config"]), "data": data})
    model = GRUVModel(cfg.feature_dim, cfg.hidden, cfg.cell, cfg.layers, predict=cfg.predict).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return LoadedRun(model, cfg, path, _epoch(state), open_dataset(cfg))


def check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise GenerationError(f"--device {device!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GenerationError(f"--device {device}: no GPU is visible")
    return dev


def _epoch(state: dict) -> int:
    return upgrade(state)["train"]["epoch"]


def open_dataset(cfg: TrainConfig) -> DatasetHandle:
    """The run's dataset, with the normalization statistics the run trained with (float64 mean
    and std): those of the train split of the run's artists (all when it names none)."""
    data = DatasetHandle(cfg.data, cfg.artists, std_floor=cfg.std_floor)
    if data.params["feature_dim"] != cfg.feature_dim:
        raise GenerationError(f"dataset {cfg.data} has feature_dim {data.params['feature_dim']}, "
                              f"the run was trained with {cfg.feature_dim}")
    return data


def feedback_noise(n: int, dim: int, sigma: float, seed: int = 0, device="cpu") -> torch.Tensor | None:
    """The noise added to the n - 1 predictions that are fed back (row k: to the k-th), or None
    when sigma is 0. Drawn on the CPU from its own generator: the same rows on any device."""
    if sigma <= 0 or n < 2:
        return None
    g = torch.Generator().manual_seed(seed)
    return (sigma * torch.randn(n - 1, dim, generator=g)).to(device)


@torch.no_grad()
def generate_stateful(model, seed: torch.Tensor, n: int, noise: torch.Tensor | None = None) -> torch.Tensor:
    """seed (T0, D) normalized -> the next n blocks (n, D). Linear in n. ``noise`` (n - 1, D): added
    to each prediction before it is fed back (``feedback_noise``); the blocks returned are the
    predictions themselves. The model's own free run (``GRUVModel.rollout``: one H x H map a
    step, for either ``predict``), equal to ``generate_refeed`` up to float rounding."""
    return model.rollout(seed, n, noise)


@torch.no_grad()
def generate_refeed(model, seed: torch.Tensor, n: int, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's algorithm: re-run the whole sequence for every new block. Quadratic in n."""
    seq, preds = seed, []
    for k in range(n):
        pred, _ = model(seq.unsqueeze(0))
        preds.append(pred[0, -1:])
        seq = torch.cat([seq, preds[-1] if noise is None or k == n - 1 else preds[-1] + noise[k]])
    return torch.cat(preds)


# ---------------------------------------------------------------------------------------------
# Diagnostics

def loop_stats(frames: np.ndarray, threshold: float = 0.95, min_run: int = 8) -> dict:
    """Generation loops: step t is 'looping' when it is within cosine similarity ``threshold`` of
    some earlier frame (any period, a fixed point included). A loop is ``min_run`` such steps in
    a row. Returns the first loop's onset step (None if never) and the fraction of steps in loops."""
    n = len(frames)
    # Unit frames in float32, and the similarities a block of rows at a time: memory stays linear in
    # the length (a whole n x n matrix is 1 GB at --length-ratio 150).
    f = np.asarray(frames, dtype=np.float32)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    looping = np.zeros(n, bool)
    for a in range(0, n, 256):
        b = min(n, a + 256)
        sim = f[a:b] @ f[:b].T  # rows a..b-1 against every frame up to b-1
        sim[np.arange(b)[None, :] >= np.arange(a, b)[:, None]] = -np.inf  # only earlier frames count
        looping[a:b] = sim.max(axis=1) >= threshold
    onset, in_loop, run = None, np.zeros(n, bool), 0
    for t in range(n):
        run = run + 1 if looping[t] else 0
        if run >= min_run:
            in_loop[t - run + 1: t + 1] = True
            if onset is None:
                onset = t - run + 1
    return {"loop_onset_step": onset, "loop_fraction": float(in_loop.mean()) if n else 0.0,
            "loop_threshold": threshold, "loop_min_run": min_run}


def spectral_flatness(audio: np.ndarray, sample_rate: int, window_s: float = 0.25,
                      band_hz: tuple[float, float] | None = None) -> float:
    """Mean Wiener entropy over windows: ~1 for white noise, ~0 for a pure tone.

    Each window's power spectrum is a Welch average (1024-sample segments), which removes the
    periodogram's own variance; silent windows are left out. ``band_hz`` (lo, hi): only the bins
    in that band, the one that holds the music's energy (``music_band``, or Figure 3's): over all
    bins, band-limited music (nothing above 11 kHz, say) scores ~1e-7 from its empty bins alone,
    and any continuation with a little broadband noise looks 10^5 times noisier."""
    from scipy.signal import welch
    w = max(1024, int(window_s * sample_rate))
    blocks = audio_to_blocks(np.asarray(audio, np.float64), w)
    if len(blocks) == 0:
        blocks = np.asarray(audio, np.float64)[None]
    f, p = welch(blocks, fs=sample_rate, nperseg=min(1024, blocks.shape[1]), axis=-1)
    keep = f > 0  # drop DC
    if band_hz is not None:
        keep &= (f >= band_hz[0]) & (f <= band_hz[1])
        if keep.sum() < 2:  # a band narrower than Welch's bins: its nearest few bins
            keep = np.zeros_like(keep)
            keep[max(1, int(np.searchsorted(f, band_hz[0])) - 1): int(np.searchsorted(f, band_hz[1])) + 2] = True
    if not keep.any():
        return float("nan")
    p = p[:, keep] * sample_rate  # the density per cycle per sample, as with fs=1: the silence floor below is in those units
    loud = p.mean(axis=1) > 1e-12
    if not loud.any():
        return float("nan")
    p = p[loud] + 1e-20
    return float(np.mean(np.exp(np.mean(np.log(p), axis=1)) / np.mean(p, axis=1)))


def rms_db(audio: np.ndarray) -> float:
    r = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    return 20 * math.log10(r) if r > 0 else float("-inf")


def music_band(audio: np.ndarray, sample_rate: int, energy: float = 0.95) -> tuple[float, float] | None:
    """The band (lo, hi) Hz that holds ``energy`` of the audio's power, the same share cut off
    below and above (as Figure 3's ``band_fraction`` does with the dev truth). None when silent."""
    from scipy.signal import welch
    audio = np.asarray(audio, np.float64)
    if len(audio) < 2:
        return None
    f, p = welch(audio, fs=sample_rate, nperseg=min(1024, len(audio)))
    if p.sum() <= 0:
        return None
    c = np.cumsum(p) / p.sum()
    lo, hi = int(np.searchsorted(c, (1 - energy) / 2)), int(np.searchsorted(c, 1 - (1 - energy) / 2))
    return float(f[lo]), float(f[min(hi, len(f) - 1)])


def click_ratio(audio: np.ndarray, hop: int) -> float | None:
    """Mean |x[n+1] - x[n]| across frame boundaries (between samples k*hop - 1 and k*hop, every
    hop: where overlapping frames start too) over the mean of every other step. ~1: the edges
    are inaudible; the paper's rectangular blocks give >> 1 when neighbours disagree (a tick at
    sample_rate / hop Hz). None when the audio has no boundary or is silent."""
    d = np.abs(np.diff(np.asarray(audio, np.float64)))
    at = np.zeros(len(d), bool)
    at[hop - 1:: hop] = True
    if not at.any() or at.all():
        return None
    rest = float(d[~at].mean())
    return float(d[at].mean() / rest) if rest > 0 else None


NEAREST_CLIPS = 64     # train clips compared (a random subsample when there are more)
NEAREST_FRAMES = 2048  # train frames compared in all (each clip's spread evenly)
NEAREST_QUERY = 64     # frames of the continuation (and of the dev reference) compared
COPY_RELATIVE = 0.5    # copying: nearer a train frame than half the dev-train distance and half its own distance to the mean


def _unit_rms_distances(q: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """RMS distance per feature (normalized units) of each row of q to each row of pool."""
    d2 = (q * q).sum(1)[:, None] + (pool * pool).sum(1)[None, :] - 2 * q @ pool.T
    return np.sqrt(np.maximum(d2, 0) / q.shape[1])


def _nearest_pool(run: LoadedRun) -> dict:
    """Frames of a random subsample of the train clips (normalized features), and where each came
    from; with the typical nearest distance of dev frames into them. Built once per run."""
    if "nearest" in run.cache:
        return run.cache["nearest"]
    cfg, tf = run.cfg, run.transform
    train = run.data.split("train", normalize=False)
    pool = None
    if len(train):
        rng = np.random.default_rng(0)  # the same subsample for every clip of the run
        clips = np.sort(rng.choice(len(train), min(NEAREST_CLIPS, len(train)), replace=False))
        per = max(1, min(cfg.clip_blocks + 1, NEAREST_FRAMES // len(clips)))
        rows, where = [], []
        for i in clips:
            f = train.features(int(i))
            pick = np.linspace(0, len(f) - 1, per).round().astype(int)
            rows.append(((f[pick] - run.mean) / run.std).astype(np.float32))
            song = train.manifest["songs"][int(train.index.song_of_clip[i])]["path"]
            start = int(train.index.clip_of_song[i]) * cfg.clip_blocks
            where += [(song, tf.seconds(start + int(k), cfg.sample_rate)) for k in pick]
        pool = {"frames": np.concatenate(rows), "where": where}
        dev = run.data.split("dev", normalize=False)
        ref = []
        for i in np.linspace(0, len(dev) - 1, min(8, len(dev))).round().astype(int) if len(dev) else []:
            f = dev.features(int(i))
            ref.append(((f[np.linspace(0, len(f) - 1, NEAREST_QUERY // 8).round().astype(int)] - run.mean)
                        / run.std).astype(np.float32))
        pool["dev_distance"] = (float(_unit_rms_distances(np.concatenate(ref), pool["frames"]).min(1).mean())
                                if ref else None)
    run.cache["nearest"] = pool
    return pool


def nearest_train(run: LoadedRun, gen: np.ndarray) -> dict | None:
    """The training clip nearest to the continuation ``gen`` (normalized features): is it copying?

    Kept cheap: up to NEAREST_QUERY frames of the continuation, each against its nearest of up to
    NEAREST_FRAMES frames from up to NEAREST_CLIPS random train clips. ``distance``: the mean of
    those nearest distances (RMS per feature, normalized units); the nearest clip is the one most
    of them fall in, ``offset_s`` its best-matching frame's time in its song. ``relative``: the
    distance over the same measure for dev frames (music the model never saw): well below 1 means
    closer to the training set than unseen music is, i.e. copying."""
    pool = _nearest_pool(run)
    if pool is None or len(gen) == 0:
        return None
    q = np.asarray(gen, np.float32)[np.linspace(0, len(gen) - 1, min(NEAREST_QUERY, len(gen))).round().astype(int)]
    d = _unit_rms_distances(q, pool["frames"])
    best = d.argmin(1)
    songs = [pool["where"][j][0] for j in best]
    song = max(set(songs), key=songs.count)
    j = min((j for j in best if pool["where"][j][0] == song), key=lambda j: d[:, j].min())
    dist = float(d.min(1).mean())
    ref = pool["dev_distance"]
    # How far the continuation is from the train mean (all zeros): a near-silent continuation is near
    # every quiet train frame, which is not copying; copying is a distance well below this too.
    own = float(np.sqrt((q.astype(np.float64) ** 2).mean(1)).mean())
    rel = dist / ref if ref else None
    return {"song": song, "offset_s": pool["where"][j][1], "distance": dist, "relative": rel,
            "dev_train_distance": ref, "distance_to_mean": own,
            "copying": bool(rel is not None and rel < COPY_RELATIVE and dist < COPY_RELATIVE * own),
            "frames_compared": int(d.size)}


def diagnostics(run: LoadedRun, gen: np.ndarray, seed_audio: np.ndarray, gen_audio: np.ndarray,
                band_hz: tuple[float, float] | None = None) -> dict:
    """Everything the sidecar, the summary line, TensorBoard and the report say about a
    continuation (docs/generation.md says what each means). The flatness is taken over the music's
    band: ``band_hz`` (Figure 3's, from the analysis) or else the band holding the seed's energy;
    ``flatness_all_bins`` is the whole spectrum's."""
    sr, tf = run.cfg.sample_rate, run.transform
    loops = loop_stats(gen)
    band = tuple(band_hz) if band_hz is not None else music_band(seed_audio, sr)
    level, seed_level = rms_db(gen_audio), rms_db(seed_audio)
    flat = spectral_flatness(gen_audio, sr, band_hz=band) if band else spectral_flatness(gen_audio, sr)
    seed_flat = spectral_flatness(seed_audio, sr, band_hz=band) if band else spectral_flatness(seed_audio, sr)
    return {**loops, "loop_onset_s": None if loops["loop_onset_step"] is None else tf.seconds(loops["loop_onset_step"], sr),
            "flatness": flat, "seed_flatness": seed_flat, "flatness_band_hz": band,
            "flatness_all_bins": spectral_flatness(gen_audio, sr),
            "band_hz": band, "band_flatness": flat if band else None, "seed_band_flatness": seed_flat if band else None,
            "rms_db": level, "seed_rms_db": seed_level,
            "level_change_db": level - seed_level if math.isfinite(level) and math.isfinite(seed_level) else None,
            "click_ratio": click_ratio(gen_audio, tf.hop), "seed_click_ratio": click_ratio(seed_audio, tf.hop),
            "frame_hop": tf.hop, "nearest_train": nearest_train(run, gen)}


# ---------------------------------------------------------------------------------------------

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


def to_audio(run: LoadedRun, feats: np.ndarray) -> np.ndarray:
    raw = np.asarray(feats, np.float64) * run.std + run.mean
    return run.transform.synthesize(raw)


def seed_and_continuation_audio(run: LoadedRun, seed: np.ndarray, gen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The seed's audio and the continuation's, synthesized as one sequence and cut where the
    continuation's first frame starts: where frames overlap, the seed's last frame and the
    continuation's first are added together, as in any other pair of neighbours."""
    audio = to_audio(run, np.concatenate([seed, gen]))
    cut = len(seed) * run.transform.hop
    return audio[:cut], audio[cut:]


def generate(run_dir, out_wav, seed_seconds: float = 10.0, length_ratio: float = 3.0, seed_from: str = "dev",
             seed_index: int | None = None, algorithm: str = "stateful", checkpoint: str = "best", with_seed: bool = False,
             float32: bool = False, normalize: bool = False, device: str = "cpu", run: LoadedRun | None = None,
             seed_out=None, seed_start: float | None = None, band_hz: tuple[float, float] | None = None,
             noise: float = 0.0, noise_seed: int = 0) -> dict:
    """Write OUT.wav and OUT.json (the sidecar), and the seed alone to ``seed_out`` if given;
    returns the sidecar dict. ``seed_index`` (default 0) picks a clip of the dev/train split,
    ``seed_start`` (seconds, default 0) a point in a seed file: each is refused with the other
    source rather than ignored. ``band_hz``: the band the flatness is measured over (None: the
    band that holds the seed's energy; the analysis passes Figure 3's). ``noise``: sigma of
    Gaussian noise (normalized units) added to each prediction before it is fed back, against
    generation loops (0: off)."""
    split = seed_from in ("dev", "train")
    if split and seed_start is not None:
        raise GenerationError(f"--seed-start is for a seed file; with --seed-from {seed_from}, pick the clip with --seed-index")
    if not split and seed_index is not None:
        raise GenerationError("--seed-index picks a clip of the dev or train split; in a seed file, say where the "
                              "seed starts with --seed-start SECONDS")
    if seed_start is not None and not (math.isfinite(seed_start) and seed_start >= 0):
        raise GenerationError(f"--seed-start must be a finite number of seconds >= 0, got {seed_start}")
    if not (math.isfinite(length_ratio) and length_ratio > 0):
        raise GenerationError(f"length ratio must be a finite number > 0, got {length_ratio}")
    if not (math.isfinite(seed_seconds) and seed_seconds > 0):
        raise GenerationError(f"seed seconds must be a finite number > 0, got {seed_seconds}")
    if not (math.isfinite(noise) and noise >= 0):
        raise GenerationError(f"--noise must be a finite sigma >= 0, got {noise}")
    if algorithm not in ("stateful", "refeed"):
        raise GenerationError(f"algorithm must be 'stateful' or 'refeed', not {algorithm!r}")
    out_wav = Path(out_wav)
    if out_wav.is_dir() or out_wav.suffix.lower() != ".wav":
        raise GenerationError(f"--out {out_wav}: give a file name ending in .wav")
    run = run or load_run(run_dir, checkpoint, device)
    device = check_device(device)
    seed, info = seed_features(run, seed_from, seed_index or 0, seed_seconds, seed_start or 0.0)
    n = max(1, int(round(length_ratio * len(seed))))
    t0 = time.time()
    fn = generate_stateful if algorithm == "stateful" else generate_refeed
    eps = feedback_noise(n, seed.shape[1], noise, noise_seed, device)
    gen = fn(run.model, torch.from_numpy(seed).to(device), n, eps).float().cpu().numpy()
    wall = time.time() - t0
    if not np.all(np.isfinite(gen)):
        raise GenerationError(f"the model produced non-finite features (checkpoint {run.ckpt_path})")
    sr = run.cfg.sample_rate
    seed_audio, gen_audio = seed_and_continuation_audio(run, seed, gen)
    audio = np.concatenate([seed_audio, gen_audio]) if with_seed else gen_audio
    try:
        out_wav.parent.mkdir(parents=True, exist_ok=True)
        clipped = write_wav(out_wav, audio, sr, float32=float32, peak=0.99 if normalize else 0.0)
        if seed_out is not None:
            write_wav(seed_out, seed_audio, sr, float32=float32)
    except (OSError, RuntimeError) as e:  # soundfile's errors are RuntimeErrors
        msg = getattr(e, "strerror", None) or str(e).strip().splitlines()[-1]
        raise GenerationError(f"--out {out_wav}: cannot write it ({msg})") from e
    tf = run.transform
    diag = diagnostics(run, gen, seed_audio, gen_audio, band_hz)
    side = {"run": str(run_dir), "checkpoint": str(run.ckpt_path), "checkpoint_epoch": run.epoch, "cell": run.cfg.cell,
            "hidden": run.cfg.hidden, "seed": info, "generated_blocks": n, "generated_s": tf.seconds(n, sr),
            "length_ratio": length_ratio, "with_seed": with_seed, "algorithm": algorithm, "wall_s": wall,
            "noise": noise, "noise_seed": noise_seed if noise > 0 else None,
            "sample_rate": sr, "format": "float32" if float32 else "pcm16", "peak_normalized": normalize,
            "clipped_samples": clipped, "diagnostics": diag}
    atomic_write_json(out_wav.with_suffix(".json"), side)  # strict JSON: a silent output's -inf dB is null
    return side


def describe(diag: dict, clipped: int) -> str:
    """A generated clip's diagnostics in words, with their units (the CLI and the report say the same)."""
    parts = []
    if diag.get("loop_onset_s") is None:
        parts.append("no loop")
    else:
        parts.append(f"loops from {diag['loop_onset_s']:.2f} s ({diag['loop_fraction']:.0%} of it in loops)")
    parts.append("silent" if not math.isfinite(diag["rms_db"]) else f"level {diag['rms_db']:.0f} dBFS")
    if math.isfinite(diag["seed_rms_db"]):
        parts[-1] += f", seed {diag['seed_rms_db']:.0f} dBFS"
    if diag.get("level_change_db") is not None:
        parts[-1] += f" ({diag['level_change_db']:+.1f} dB)"
    if diag.get("click_ratio") is not None:
        seed = f", seed {diag['seed_click_ratio']:.2f}x" if diag.get("seed_click_ratio") is not None else ""
        parts.append(f"clicks {diag['click_ratio']:.2f}x at frame edges{seed}")
    if diag.get("flatness") is not None and math.isfinite(diag["flatness"]):
        parts.append(f"spectral flatness {diag['flatness']:.3g} (seed {diag['seed_flatness']:.3g})")
    if diag.get("band_flatness") is not None and math.isfinite(diag["band_flatness"]):
        lo, hi = diag["band_hz"]
        parts.append(f"{diag['band_flatness']:.3g} in the music's band {lo:.0f}-{hi:.0f} Hz "
                     f"(seed {diag['seed_band_flatness']:.3g})")
    near = diag.get("nearest_train")
    if near:
        rel = f", {near['relative']:.2f}x the dev-train distance" if near.get("relative") is not None else ""
        verdict = "COPYING it" if near.get("copying") else \
            f"not a copy: {near['distance_to_mean']:.3g} from the train mean" if "distance_to_mean" in near else ""
        parts.append(f"nearest train: {Path(near['song']).name} at {near['offset_s']:.1f} s "
                     f"(distance {near['distance']:.3g}{rel}{'; ' + verdict if verdict else ''})")
    if clipped:
        parts.append(f"clipped {clipped} samples")
    return "; ".join(parts)


def log_to_tensorboard(writer, model, cfg: TrainConfig, step: int, device, dev_set: ClipDataset) -> None:
    """A short generated clip (and its spectrogram) from the first clip of the trainer's dev set,
    for TensorBoard, at x position ``step`` (the trainer passes the epoch: its epoch axis)."""
    if cfg.gen_seconds <= 0:
        return
    run = LoadedRun(model, cfg, Path(""), 0, dev_set.handle)
    try:
        seed, _ = seed_features(run, "dev", 0, min(cfg.gen_seconds, run.transform.seconds(cfg.clip_blocks, cfg.sample_rate)),
                                split=dev_set)
    except (GenerationError, DatasetError):
        return
    was_training = model.training
    model.eval()
    gen = generate_stateful(model, torch.from_numpy(seed).to(device), 2 * len(seed)).float().cpu().numpy()
    model.train(was_training)
    seed_audio, gen_audio = seed_and_continuation_audio(run, seed, gen)
    if np.all(np.isfinite(gen)):
        diag = diagnostics(run, gen, seed_audio, gen_audio)
        near = diag["nearest_train"] or {}
        for k, v in (("click_ratio", diag["click_ratio"]), ("level_change_db", diag["level_change_db"]),
                     ("loop_onset_s", diag["loop_onset_s"]), ("loop_fraction", diag["loop_fraction"]),
                     ("band_flatness", diag["band_flatness"]), ("nearest_train_distance", near.get("distance")),
                     ("nearest_train_relative", near.get("relative"))):
            if v is not None and math.isfinite(v):
                writer.add_scalar(f"generated/{k}", v, step)
    audio = np.clip(to_audio(run, gen), -1, 1)
    writer.add_audio("generated/audio", torch.from_numpy(audio).unsqueeze(0), step, sample_rate=cfg.sample_rate)
    writer.add_image("generated/spectrogram", sample_spectrogram(run, seed, gen, step), step, dataformats="HWC")


def sample_spectrogram(run: "LoadedRun", seed: np.ndarray, gen: np.ndarray, epoch: int) -> np.ndarray:
    """The seed and its continuation as one labelled spectrogram (RGB, 800 x 400): time in s,
    log frequency in Hz, dB colour bar, a line where the continuation starts."""
    from gruv_hpc.plotting import spectrogram_image
    cfg = run.cfg
    mag = run.transform.magnitude(np.concatenate([seed, gen]).astype(np.float64) * run.std + run.mean)
    hop_s = run.transform.seconds(1, cfg.sample_rate)
    return spectrogram_image(mag, run.transform.frequencies(cfg.sample_rate), hop_s,
                             title=f"dev clip 0: {len(seed) * hop_s:.2f} s of seed, then the model (epoch {epoch})",
                             mark_s=len(seed) * hop_s, mark_label="generated")
