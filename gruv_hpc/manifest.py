"""The on-disk dataset format, in one place: manifest, shard layout, normalization stats.

A dataset directory holds::

    manifest.json           written last; a directory without it is not a (complete) dataset
    stats.npz               per-dimension mean/std of the *train* split, float64
    shards/<artist>-<split>-<k>.h5

Each shard holds one split of one artist. Its ``blocks`` dataset (n, D) float32 stores each
song's block sequence once; clip ``k`` of a segment is the window ``blocks[o + k*C : o + k*C + C + 1]``
(x = the first C blocks, y = the last C: the target at step t is block t + 1). Storing windows
instead of separate x and y halves the bytes. Segments start on a chunk boundary and the chunk
height divides C, so reading one clip touches only about one clip's bytes.

This module does not import torch, so the CLI's data commands start fast.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DatasetError  # noqa: F401  (re-exported)
FORMAT = "gruv-hpc-spectral"
VERSION = 1
MANIFEST = "manifest.json"
STATS = "stats.npz"
SHARD_DIR = "shards"
# The parameters a training config can pin; a mismatch is an error that names the key.
PARAM_KEYS = ("sample_rate", "block_size", "clip_blocks", "transform", "feature_dim")




def sha256_file(path: str | Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def chunk_rows(clip_blocks: int, feature_dim: int, max_bytes: int = 512 * 1024) -> int:
    """The largest divisor of clip_blocks whose chunk fits in max_bytes (at least 1)."""
    row = feature_dim * 4
    best = 1
    for r in range(1, clip_blocks + 1):
        if clip_blocks % r == 0 and r * row <= max_bytes:
            best = r
    return best


def load_manifest(data_dir: str | Path) -> dict:
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST
    if not data_dir.is_dir():
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
        raise DatasetError(f"{path}: format version {m.get('version')!r}, this gruv-hpc reads version {VERSION}")
    for key in ("params", "songs", "shards", "stats", "artists"):
        if key not in m:
            raise DatasetError(f"{path}: missing key {key!r}")
    return m


def check_params(manifest: dict, wanted: dict, source: str = "config") -> None:
    """Raise naming the first parameter where ``wanted`` (None = accept any) differs from the dataset."""
    for key in PARAM_KEYS:
        want = wanted.get(key)
        have = manifest["params"].get(key)
        if want is not None and want != have:
            raise DatasetError(f"dataset parameter {key!r} is {have!r}, but the {source} asks for {want!r}")


def load_stats(data_dir: str | Path, manifest: dict) -> tuple[np.ndarray, np.ndarray]:
    path = Path(data_dir) / manifest["stats"]["file"]
    try:
        with np.load(path) as z:
            mean, std = z["mean"], z["std"]
    except (OSError, KeyError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read normalization stats ({e})") from e
    d = manifest["params"]["feature_dim"]
    if mean.shape != (d,) or std.shape != (d,):
        raise DatasetError(f"{path}: stats have shape {mean.shape}, expected ({d},)")
    return mean, std


@dataclass
class ClipIndex:
    """Where every clip of a selection lives: shard file and first block."""

    shard_files: list[Path]
    shard_bytes: list[int]
    shard_of_clip: np.ndarray  # int32, index into shard_files
    start_of_clip: np.ndarray  # int64, first block row
    song_of_clip: np.ndarray  # int64, song id
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
    files, sizes, shard_ids, starts, songs, ends = [], [], [], [], [], []
    for shard in manifest["shards"]:
        if shard["split"] != split or shard["artist"] not in chosen:
            continue
        k = len(files)
        files.append(Path(data_dir) / shard["file"])
        sizes.append(shard["bytes"])
        for song_id, offset, n_clips in shard["segments"]:
            starts.append(offset + cb * np.arange(n_clips, dtype=np.int64))
            shard_ids.append(np.full(n_clips, k, np.int32))
            songs.append(np.full(n_clips, song_id, np.int64))
            ends.append(np.full(n_clips, offset + n_clips * cb + 1, np.int64))
    cat = lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt)  # noqa: E731
    return ClipIndex(files, sizes, cat(shard_ids, np.int32), cat(starts, np.int64), cat(songs, np.int64),
                     cat(ends, np.int64))


def dataset_id(manifest: dict) -> str:
    """The identity of a dataset's content, not of its path: a hash over its parameters, songs
    (artist, content hash, split) and shards (content hash). A dataset moved elsewhere keeps it;
    another corpus, or the same corpus split or stored differently, gets another."""
    ident = {"params": manifest["params"], "artists": manifest["artists"],
             "songs": [[s["artist"], s["sha256"], s["split"]] for s in manifest["songs"] if not s.get("skipped")],
             "shards": [sh["sha256"] for sh in manifest["shards"]]}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
