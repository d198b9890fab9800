"""Measurements of generated audio and features: loops, level, flatness, clicks, copying.

Each is a plain function of arrays; ``diagnostics.py`` names them, with their units and words,
in one registry.
"""
from __future__ import annotations

import math

import numpy as np

from gruv_hpc.dataset.transforms import audio_to_blocks


def loop_stats(frames: np.ndarray, threshold: float = 0.95, min_run: int = 8, min_lag: int = 1) -> dict:
    """Generation loops: step t is 'looping' when it is within cosine similarity ``threshold`` of
    some frame at least ``min_lag`` steps earlier (any period, a fixed point included). A loop is
    ``min_run`` such steps in a row. Returns the first loop's onset step (None if never) and the
    fraction of steps in loops. (``loop_steps`` gives the two counts for a frame rate: with
    overlapping frames a step's neighbours are alike by construction, so the lag and the run are
    set in seconds, not steps.)"""
    n = len(frames)
    # Unit frames in float32, and the similarities a block of rows at a time: memory stays linear in
    # the length (a whole n x n matrix is 1 GB at --length-ratio 150).
    f = np.asarray(frames, dtype=np.float32)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    looping = np.zeros(n, bool)
    for a in range(0, n, 256):
        b = min(n, a + 256)
        sim = f[a:b] @ f[:b].T  # rows a..b-1 against every frame up to b-1
        sim[np.arange(b)[None, :] > np.arange(a, b)[:, None] - min_lag] = -np.inf  # only frames min_lag or more back
        looping[a:b] = sim.max(axis=1) >= threshold
    onset, in_loop, run = None, np.zeros(n, bool), 0
    for t in range(n):
        run = run + 1 if looping[t] else 0
        if run >= min_run:
            in_loop[t - run + 1: t + 1] = True
            if onset is None:
                onset = t - run + 1
    return {"loop_onset_step": onset, "loop_fraction": float(in_loop.mean()) if n else 0.0,
            "loop_threshold": threshold, "loop_min_run": min_run, "loop_min_lag": min_lag}


LOOP_RUN_S = 2.0   # a loop lasts this long: 8 of the paper's 0.25 s blocks
LOOP_LAG_S = 0.25  # and repeats frames at least this far back: one of the paper's blocks


def loop_steps(step_s: float) -> dict:
    """``loop_stats``' min_run and min_lag for frames ``step_s`` seconds apart: LOOP_RUN_S and
    LOOP_LAG_S in steps, so a loop means the same on any transform (the paper's blocks: 8 and 1,
    as before; a 16 ms hop: 125 and 16, where its neighbours, overlapping, no longer count)."""
    return {"min_run": max(8, round(LOOP_RUN_S / step_s)), "min_lag": max(1, round(LOOP_LAG_S / step_s))}


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


def _nearest_pool(run) -> dict:
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


def nearest_train(run, gen: np.ndarray) -> dict | None:
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
