"""The on-disk dataset format, in one place: manifest, shard layout, normalization stats.

A dataset directory (format version 2) holds::

    manifest.json           written last; a directory without it is not a (complete) dataset
    stats.npz               per-artist moments of the *train* split, float64 (see below)
    shards/<artist>-<split>-<task>-<k>.h5

Each shard holds one split of one artist. Its ``blocks`` dataset (n, S) stores each song's block
sequence once, as the stored half of the spectrum (``transforms.blocks_to_stored``: S = N values
per block, ``params.storage_dim``, in ``params.dtype``, float32 or float16); the model's features
(``params.feature_dim`` = D values, 2N for ``fft``) are a gather with signs over it
(``Transform.expansion``), done by whoever reads. Clip ``k`` of a segment is the window
``blocks[o + k*C : o + k*C + C + 1]`` (x = the first C blocks, y = the last C: the target at step
t is block t + 1). Segments start on a chunk boundary and the chunk height divides C, so reading
one clip touches only about one clip's bytes. A segment is ``[song id, first row, clips, first
clip of the song]``.

``stats.npz`` holds, for each artist (``artists``, in manifest order), the count, mean and M2
(sum of squared deviations) of its train blocks over the S stored values: ``count`` (A,) int64,
``mean`` and ``m2`` (A, S) float64. The statistics of any selection of artists are their exact
pooled moments (``load_stats``), so a run normalizes with the statistics of the artists it trains
on, whatever else the dataset holds.

This module does not import torch, so the CLI's data commands start fast.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gruv_hpc import swap
from gruv_hpc.errors import DatasetError  # noqa: F401  (re-exported)
FORMAT = "gruv-hpc-spectral"
VERSION = 2
MANIFEST = "manifest.json"
STATS = "stats.npz"
SHARD_DIR = "shards"
# The parameters a training config can pin; a mismatch is an error that names the key.
PARAM_KEYS = ("sample_rate", "block_size", "hop", "clip_blocks", "transform", "feature_dim")


def aside_path(data_dir: str | Path) -> Path:
    """Where ``gruv preprocess`` moves the dataset it replaces, for the moment of the swap."""
    return swap.aside_path(Path(data_dir))


class RunningStats:
    """Per-dimension count, mean and M2, streamed in float64 (Chan et al.'s parallel update).

    ``combine`` is the same update with another set of moments, so moments of parts (songs,
    tasks, artists) pool exactly into those of the whole."""

    def __init__(self, dim: int, n: int = 0, mean: np.ndarray | None = None, m2: np.ndarray | None = None):
        self.n = int(n)
        self.mean = np.zeros(dim) if mean is None else np.array(mean, dtype=np.float64)
        self.m2 = np.zeros(dim) if m2 is None else np.array(m2, dtype=np.float64)

    def update(self, x: np.ndarray) -> None:
        if len(x) == 0:
            return
        x = x.astype(np.float64)
        mb = x.mean(axis=0)
        self.combine(RunningStats(len(mb), len(x), mb, ((x - mb) ** 2).sum(axis=0)))

    def combine(self, other: "RunningStats") -> None:
        if other.n == 0:
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean += delta * (other.n / n)
        self.m2 += other.m2 + delta**2 * (self.n * other.n / n)
        self.n = n

    def std(self) -> np.ndarray:
        std = np.sqrt(self.m2 / max(self.n, 1))
        # Dimensions that never vary would divide by ~0.
        floor = 1e-6 * float(std.max()) if self.n else 1.0
        return np.where(std > floor, std, 1.0)


def sha256_file(path: str | Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def chunk_rows(clip_blocks: int, row_bytes: int, max_bytes: int = 512 * 1024) -> int:
    """The largest divisor of clip_blocks whose chunk fits in max_bytes (at least 1)."""
    best = 1
    for r in range(1, clip_blocks + 1):
        if clip_blocks % r == 0 and r * row_bytes <= max_bytes:
            best = r
    return best


def load_manifest(data_dir: str | Path) -> dict:
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST
    if not data_dir.is_dir():
        if aside_path(data_dir).is_dir():
            raise DatasetError(f"{data_dir}: dataset directory does not exist, but {aside_path(data_dir)} does: a "
                               "`gruv preprocess` stopped while swapping datasets; run it again (it puts the previous "
                               "dataset back), or rename that directory back")
        raise DatasetError(f"{data_dir}: dataset directory does not exist")
    if not path.exists():
        raise DatasetError(f"{path}: no manifest; {data_dir} is not a dataset, or its preprocessing did not finish")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from e
    if m.get("format") != FORMAT:
        raise DatasetError(f"{path}: format is {m.get('format')!r}, expected {FORMAT!r}")
    if m.get("version") != VERSION:
        raise DatasetError(f"{path}: dataset format version {m.get('version')!r}, this gruv-hpc reads version {VERSION}; "
                           f"re-run `gruv preprocess ... --out {data_dir} --overwrite` to rebuild it")
    for key in ("params", "songs", "shards", "stats", "artists"):
        if key not in m:
            raise DatasetError(f"{path}: missing key {key!r}")
    # Datasets made before hops were recorded frame without overlap or window.
    m["params"].setdefault("hop", m["params"].get("block_size"))
    m["params"].setdefault("window", "none")
    return m


def check_params(manifest: dict, wanted: dict, source: str = "config") -> None:
    """Raise naming the first parameter where ``wanted`` (None = accept any) differs from the dataset."""
    for key in PARAM_KEYS:
        want = wanted.get(key)
        have = manifest["params"].get(key)
        if want is not None and want != have:
            raise DatasetError(f"dataset parameter {key!r} is {have!r}, but the {source} asks for {want!r}")


def artist_moments(data_dir: str | Path, manifest: dict) -> dict[str, RunningStats]:
    """Each artist's train moments over the stored values, as written by ``gruv preprocess``."""
    path = Path(data_dir) / manifest["stats"]["file"]
    ensure_verified(data_dir, manifest, [manifest["stats"]["file"]])
    try:
        # Our own handle: np.load leaks the one it opens when the file is not a zip (a
        # ResourceWarning after the one-line error).
        with open(path, "rb") as fh, np.load(fh) as z:
            artists, count, mean, m2 = list(z["artists"]), z["count"], z["mean"], z["m2"]
    except Exception as e:  # noqa: BLE001 - BadZipFile, pickle refusals, ...: all mean "not our stats file"
        raise DatasetError(f"{path}: cannot read normalization stats ({type(e).__name__}: {e})") from e
    s = manifest["params"]["storage_dim"]
    if artists != manifest["artists"] or count.shape != (len(artists),) or mean.shape != (len(artists), s) \
            or m2.shape != mean.shape:
        raise DatasetError(f"{path}: stats hold artists {artists} with mean shape {mean.shape}; the manifest expects "
                           f"{manifest['artists']} and ({len(manifest['artists'])}, {s})")
    return {a: RunningStats(s, int(count[i]), mean[i], m2[i]) for i, a in enumerate(artists)}


# The default of TrainConfig.std_floor: see floored_std.
STD_FLOOR = 0.1


def floored_std(var: np.ndarray, std: np.ndarray, live: np.ndarray, rel: float) -> np.ndarray:
    """The per-dimension scale of the model's features, (D,): the std of each feature, but at
    least ``rel`` times the corpus's own spread (the RMS std over its ``live`` features, those not
    always zero), then all rescaled by one factor so that predicting the train mean still scores
    exactly 1 on train. ``rel`` = 0 is the paper's exact z-scoring.

    Why: z-scoring gives every feature the same weight, so a feature the train songs hardly use
    (a band above their encoder's cutoff, std ~1e-4 of the largest) weighs 1e8 times the others
    on a dev song encoded with more bandwidth: one such song made predicting the train mean score
    104.9 instead of about 1. With the floor (0.1: 20 dB under the corpus's RMS spread) a feature
    quieter than that is weighted by its energy instead, and codec noise cannot dominate the loss."""
    if rel <= 0 or not live.any():
        return std
    rms = float(np.sqrt(var[live].mean()))
    s = np.where(live, np.maximum(np.sqrt(var), rel * rms), 1.0)  # the raw std: not RunningStats.std's 1.0
    scale = float(np.sqrt((var[live] / s[live] ** 2).sum() / len(s)))  # the train mean's loss with s, to be 1
    return s * scale if scale > 0 else s


def load_stats(data_dir: str | Path, manifest: dict, artists: list[str] | None = None,
               std_floor: float = STD_FLOOR) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), float64, over the model's D features: the train statistics of ``artists``
    (None or empty: all), pooled exactly from the per-artist moments; ``std`` floored relative to
    their spread (``floored_std``; ``std_floor`` = 0: the paper's z-scoring). The stats are stored
    raw, so the floor is a run's choice, applied here."""
    from gruv_hpc.dataset.transforms import from_params
    chosen = select_artists(manifest, artists)
    per_artist = artist_moments(data_dir, manifest)
    pooled = RunningStats(manifest["params"]["storage_dim"])
    for a in chosen:
        pooled.combine(per_artist[a])
    if pooled.n == 0:
        raise DatasetError(f"{Path(data_dir) / manifest['stats']['file']}: no train blocks for {', '.join(chosen)}")
    idx, sign = from_params(manifest["params"]).expansion()
    # A mirrored value is the stored one times +-1: same variance, mean times the sign. Values that
    # are always zero (sign 0) get mean 0 and std 1, as the std floor gives any constant value.
    mean = pooled.mean[idx] * sign
    std = np.where(sign != 0, pooled.std()[idx], 1.0)
    var = np.where(sign != 0, (pooled.m2 / max(pooled.n, 1))[idx], 0.0)
    return mean, floored_std(var, std, sign != 0, std_floor)


@dataclass
class ClipIndex:
    """Where every clip of a selection lives: shard file and first block."""

    shard_files: list[Path]
    shard_bytes: list[int]
    shard_of_clip: np.ndarray  # int32, index into shard_files
    start_of_clip: np.ndarray  # int64, first block row
    song_of_clip: np.ndarray  # int64, song id
    clip_of_song: np.ndarray  # int64, which clip of its song (0 = the song's first)
    end_of_clip: np.ndarray  # int64, one past the last block row of the clip's segment

    def __len__(self) -> int:
        return len(self.start_of_clip)


def select_artists(manifest: dict, artists: list[str] | None) -> list[str]:
    have = manifest["artists"]
    if not artists:
        return list(have)
    missing = [a for a in artists if a not in have]
    if missing:
        raise DatasetError(f"artist(s) {', '.join(missing)} not in the dataset; it has: {', '.join(have)}")
    return list(artists)


def clip_index(data_dir: str | Path, manifest: dict, split: str, artists: list[str] | None = None) -> ClipIndex:
    """Build the clip list from the manifest alone: no shard is opened (safe before fork)."""
    if split not in ("train", "dev"):
        raise DatasetError(f"split must be 'train' or 'dev', not {split!r}")
    chosen = set(select_artists(manifest, artists))
    cb = manifest["params"]["clip_blocks"]
    files, sizes, shard_ids, starts, songs, nth, ends = [], [], [], [], [], [], []
    for shard in manifest["shards"]:
        if shard["split"] != split or shard["artist"] not in chosen:
            continue
        k = len(files)
        files.append(Path(data_dir) / shard["file"])
        sizes.append(shard["bytes"])
        for song_id, offset, n_clips, first_clip in shard["segments"]:
            starts.append(offset + cb * np.arange(n_clips, dtype=np.int64))
            shard_ids.append(np.full(n_clips, k, np.int32))
            songs.append(np.full(n_clips, song_id, np.int64))
            nth.append(first_clip + np.arange(n_clips, dtype=np.int64))
            ends.append(np.full(n_clips, offset + n_clips * cb + 1, np.int64))
    cat = lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt)  # noqa: E731
    return ClipIndex(files, sizes, cat(shard_ids, np.int32), cat(starts, np.int64), cat(songs, np.int64),
                     cat(nth, np.int64), cat(ends, np.int64))


# ---------------------------------------------------------------------------------------------
# Verifying what is read

# The files of a dataset whose sha256 matched the manifest in this process, per (dataset directory,
# manifest mtime): a dataset is hashed at most once per process however many readers open it, and
# a rebuilt one (a new manifest) is hashed again. Forked DataLoader workers inherit it.
_VERIFIED: dict[tuple[str, int], set[str]] = {}


def _verified_set(data_dir: str | Path) -> set[str]:
    data_dir = Path(data_dir).resolve()
    try:
        mtime = (data_dir / MANIFEST).stat().st_mtime_ns
    except OSError:
        mtime = -1
    return _VERIFIED.setdefault((str(data_dir), mtime), set())


def _expected_files(manifest: dict) -> dict[str, dict]:
    """{relative file: its manifest record (sha256, bytes)} for the stats and every shard."""
    files = {manifest["stats"]["file"]: manifest["stats"]}
    files.update({sh["file"]: sh for sh in manifest["shards"]})
    return files


def verify_file(data_dir: str | Path, manifest: dict, rel: str) -> None:
    """Raise a one-line DatasetError naming the file unless its size and sha256 are the manifest's."""
    rec = _expected_files(manifest).get(rel)
    path = Path(data_dir) / rel
    if rec is None:
        raise DatasetError(f"{path}: not listed in {Path(data_dir) / MANIFEST}")
    if not path.exists():
        raise DatasetError(f"{path}: missing (listed in {Path(data_dir) / MANIFEST})")
    size = path.stat().st_size
    if rec.get("bytes") is not None and size != rec["bytes"]:
        raise DatasetError(f"{path}: truncated or modified: {size} bytes, the manifest says {rec['bytes']}")
    if not rec.get("sha256"):
        raise DatasetError(f"{path}: the manifest records no sha256 for it; rebuild the dataset (gruv preprocess)")
    have = sha256_file(path)
    if have != rec["sha256"]:
        raise DatasetError(f"{path}: damaged or modified: sha256 {have[:16]}..., the manifest says "
                           f"{rec['sha256'][:16]}...; rebuild the dataset (gruv preprocess ... --overwrite)")


def ensure_verified(data_dir: str | Path, manifest: dict, files: list[str] | None = None) -> None:
    """Check ``files`` (relative paths; None: the stats and every shard) against the manifest's
    sha256, each at most once per process (``_VERIFIED``)."""
    done = _verified_set(data_dir)
    for rel in (list(_expected_files(manifest)) if files is None else files):
        if rel not in done:
            verify_file(data_dir, manifest, rel)
            done.add(rel)


def verify(data_dir: str | Path, deep: bool = True) -> dict:
    """``gruv dataset verify``: every file's sha256 against the manifest (never cached), then
    (``deep``) every song's content hash recomputed from its shard rows, which is what the
    dataset id is made of. Returns {"files", "bytes", "songs"}; raises on the first mismatch."""
    data_dir = Path(data_dir)
    m = load_manifest(data_dir)
    files = _expected_files(m)
    for rel in files:
        verify_file(data_dir, m, rel)
    songs = 0
    if deep:
        used = [s for s in m["songs"] if not s.get("skipped")]
        unhashed = [s for s in used if not s.get("content_sha256")]
        if unhashed:  # nothing to compare their rows with: not an OK
            raise DatasetError(f"{data_dir / MANIFEST}: {len(unhashed)} of {len(used)} songs record no content_sha256 "
                               f"(e.g. {unhashed[0].get('path')}; a manifest from before it, or edited), so their rows "
                               f"cannot be checked; the files alone: gruv dataset verify --quick {data_dir}; to check "
                               "the rows, rebuild the dataset (gruv preprocess ... --overwrite)")
        recomputed = {a: RunningStats(m["params"]["storage_dim"]) for a in m["artists"]}
        for song_id, h in song_content_hashes(data_dir, m, recomputed).items():
            song = m["songs"][song_id]
            if song.get("content_sha256") and song["content_sha256"] != h:
                raise DatasetError(f"{data_dir / MANIFEST}: song {song.get('path')}: its rows in the shards hash to "
                                   f"{h[:16]}..., the manifest says {song['content_sha256'][:16]}...")
            songs += 1
        _check_stats(data_dir, m, recomputed)
    _verified_set(data_dir).update(files)
    return {"files": len(files), "bytes": sum(int(r.get("bytes") or 0) for r in files.values()), "songs": songs}


def _check_stats(data_dir: Path, manifest: dict, recomputed: dict[str, RunningStats]) -> None:
    """stats.npz against the train rows it was pooled from (its sha256 only binds it to the
    manifest, which a rewrite can update too). Counts exactly; mean and M2 to float64 rounding
    (the tasks pooled them in another order)."""
    stored = artist_moments(data_dir, manifest)
    path = Path(data_dir) / manifest["stats"]["file"]
    for a, r in recomputed.items():
        st = stored[a]
        scale = float(np.abs(r.m2).max()) or 1.0
        if st.n != r.n or not np.allclose(st.mean, r.mean, rtol=1e-6, atol=1e-9) or \
                not np.allclose(st.m2, r.m2, rtol=1e-6, atol=1e-9 * scale):
            raise DatasetError(f"{path}: artist {a}'s train statistics (count {st.n}) are not those of its train rows "
                               f"in the shards (count {r.n}): rewritten or damaged; rebuild the dataset "
                               "(gruv preprocess ... --overwrite)")


def song_content_hashes(data_dir: str | Path, manifest: dict,
                        moments: dict[str, RunningStats] | None = None) -> dict[int, str]:
    """{song id: sha256 of the song's stored blocks in order}, read back from the shards: its
    segments sorted by first clip, the block a segment shares with the previous one taken once.
    The same bytes ``gruv preprocess`` hashed while writing (``content_sha256``), whatever shards
    and tasks they were written to."""
    import h5py
    cb = manifest["params"]["clip_blocks"]
    parts: dict[int, list[tuple[int, str, int, int]]] = {}
    split_of = {sh["file"]: (sh["split"], sh["artist"]) for sh in manifest["shards"]}
    for sh in manifest["shards"]:
        for song_id, offset, n_clips, first_clip in sh["segments"]:
            parts.setdefault(int(song_id), []).append((int(first_clip), sh["file"], int(offset), int(n_clips)))
    out = {}
    handles: dict[str, h5py.File] = {}
    try:
        for song_id, segs in sorted(parts.items()):
            h = hashlib.sha256()
            for first_clip, rel, offset, n_clips in sorted(segs):
                if rel not in handles:
                    try:
                        handles[rel] = h5py.File(Path(data_dir) / rel, "r")
                    except OSError as e:
                        raise DatasetError(f"{Path(data_dir) / rel}: not a readable shard ({e})") from e
                rows = handles[rel]["blocks"][offset + (1 if first_clip else 0): offset + n_clips * cb + 1]
                h.update(np.ascontiguousarray(rows).tobytes())
                if moments is not None and split_of[rel][0] == "train":  # as preprocess pooled them
                    moments[split_of[rel][1]].update(np.asarray(rows, dtype=np.float64))
            out[song_id] = h.hexdigest()
    finally:
        for f in handles.values():
            f.close()
    return out


def dataset_id(manifest: dict) -> str:
    """The identity of a dataset's content, not of its path or of how it was built: a hash over
    its parameters, artists and songs (artist, source file hash, split, clip counts, and the hash
    of the song's stored blocks, ``content_sha256``). Shard files are left out: a build with
    ``--jobs N`` cuts the same blocks into other shards than ``--jobs 1``, and pools the stats in
    another order (the last bits of the float64 moments differ), so the id is the same for both.
    The shard and stats hashes bind the files to the manifest instead (``ensure_verified``; the
    trainer verifies before it takes the id), and ``verify`` binds the songs' hashes to the rows.
    A dataset moved elsewhere keeps its id; another corpus, split or storage gets another.

    Manifests written before ``content_sha256`` existed keep their old id (shard hashes included)."""
    songs = [s for s in manifest["songs"] if not s.get("skipped")]
    if songs and all(s.get("content_sha256") for s in songs):
        ident = {"params": manifest["params"], "artists": manifest["artists"],
                 "songs": [[s["artist"], s["sha256"], s["split"], s.get("clips"), s.get("dev_clips"),
                            s["content_sha256"]] for s in songs]}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    ident = {"params": manifest["params"], "artists": manifest["artists"],
             "songs": [[s["artist"], s["sha256"], s["split"]] for s in songs],
             "shards": [sh["sha256"] for sh in manifest["shards"]]}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
