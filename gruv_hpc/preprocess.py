"""Corpus folders -> sharded HDF5 spectral dataset (``gruv preprocess``).

Songs are decoded, transformed and written one at a time, in batches of blocks, so peak memory
depends on the longest song, never on the corpus. Shards are written under a temporary name and
renamed when complete; stats and the manifest are written last, so an interrupted run never
leaves a directory that reads as a complete dataset.
"""
from __future__ import annotations

import json
import shutil
import time
import warnings
import zlib
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .audio import AudioError, load_mono
from .features import audio_to_blocks, blocks_to_features
from .config import PreprocessConfig
from .fsio import atomic_write_text
from .manifest import FORMAT, MANIFEST, SHARD_DIR, STATS, VERSION, DatasetError, chunk_rows, sha256_file
from .progress import progress as progress_bar

BATCH_BLOCKS = 64  # blocks transformed per FFT call: big enough to amortize, small enough for cache


class RunningStats:
    """Per-dimension mean/variance, streamed in float64 (Chan et al.'s parallel update)."""

    def __init__(self, dim: int):
        self.n = 0
        self.mean = np.zeros(dim)
        self.m2 = np.zeros(dim)

    def update(self, x: np.ndarray) -> None:
        if len(x) == 0:
            return
        x = x.astype(np.float64)
        nb = len(x)
        mb = x.mean(axis=0)
        m2b = ((x - mb) ** 2).sum(axis=0)
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * (nb / n)
        self.m2 += m2b + delta**2 * (self.n * nb / n)
        self.n = n

    def std(self) -> np.ndarray:
        std = np.sqrt(self.m2 / max(self.n, 1))
        # Dimensions that never vary (the imaginary part of the DC bin) would divide by ~0.
        floor = 1e-6 * float(std.max()) if self.n else 1.0
        return np.where(std > floor, std, 1.0)


class ShardWriter:
    """Appends song segments to numbered shards of one (artist, split), renaming each when closed."""

    def __init__(self, out: Path, artist: str, split: str, cfg: PreprocessConfig, dim: int):
        self.out, self.artist, self.split, self.cfg, self.dim = out, artist, split, cfg, dim
        self.rows = chunk_rows(cfg.clip_blocks, dim)
        clip_bytes = (cfg.clip_blocks + 1) * dim * 4
        cap = max(1, int(cfg.shard_mb * 2**20 // clip_bytes))
        self.capacity = min(cap, cfg.shard_clips) if cfg.shard_clips > 0 else cap
        self.records: list[dict] = []
        self.file = None
        self.k = 0

    def _open(self):
        name = f"{self.artist}-{self.split}-{self.k:04d}.h5"
        self.final = self.out / SHARD_DIR / name
        self.tmp = self.final.with_name(name + ".partial")
        self.file = h5py.File(self.tmp, "w")
        self.blocks = self.file.create_dataset(
            "blocks", shape=(0, self.dim), maxshape=(None, self.dim), dtype="f4", chunks=(self.rows, self.dim))
        self.segments: list[tuple[int, int, int]] = []
        self.clips = 0

    def room(self) -> int:
        if self.file is None:
            self._open()
        return self.capacity - self.clips

    def add_segment(self, song_id: int, n_clips: int) -> h5py.Dataset:
        """Reserve rows for ``n_clips`` clips (n*C + 1 blocks); returns (dataset, first row)."""
        assert 0 < n_clips <= self.room()
        start = -(-self.blocks.shape[0] // self.rows) * self.rows  # align to a chunk boundary
        n = n_clips * self.cfg.clip_blocks + 1
        self.blocks.resize(start + n, axis=0)
        self.segments.append((song_id, start, n_clips))
        self.clips += n_clips
        return self.blocks, start

    def close(self) -> None:
        if self.file is None:
            return
        self.file.create_dataset("segments", data=np.array(self.segments, dtype=np.int64).reshape(-1, 3))
        self.file.attrs.update({"format": FORMAT, "version": VERSION, "artist": self.artist, "split": self.split,
                                "clip_blocks": self.cfg.clip_blocks, "feature_dim": self.dim})
        n_blocks = self.blocks.shape[0]
        self.file.close()
        self.file = None
        self.tmp.replace(self.final)
        self.records.append({
            "file": f"{SHARD_DIR}/{self.final.name}", "artist": self.artist, "split": self.split,
            "clips": self.clips, "blocks": n_blocks, "bytes": self.final.stat().st_size,
            "sha256": sha256_file(self.final), "segments": [list(s) for s in self.segments],
        })
        self.k += 1


def parse_sources(specs: list[str]) -> dict[str, Path]:
    sources: dict[str, Path] = {}
    for spec in specs:
        artist, sep, d = spec.partition("=")
        if not sep or not artist or not d:
            raise DatasetError(f"source {spec!r}: expected ARTIST=DIR")
        if artist in sources:
            raise DatasetError(f"artist {artist!r} is given twice")
        if any(c in artist for c in "/\\ ") or artist.startswith("."):
            raise DatasetError(f"artist name {artist!r} must not contain '/', '\\' or spaces")
        path = Path(d)
        if not path.is_dir():
            raise DatasetError(f"source {spec!r}: {d} is not a directory")
        sources[artist] = path
    if not sources:
        raise DatasetError("no sources given; expected ARTIST=DIR [ARTIST=DIR ...]")
    return sources


def list_songs(root: Path) -> list[Path]:
    """Every non-hidden file under root, sorted; what is not audio is found out (and recorded) later."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


def assign_splits(n: int, artist: str, cfg: PreprocessConfig) -> list[str]:
    """Song-level, deterministic split: a seeded permutation per artist, dev_fraction of songs to dev."""
    rng = np.random.default_rng([cfg.seed, zlib.crc32(artist.encode())])
    n_dev = int(round(cfg.dev_fraction * n))
    if n >= 2 and cfg.dev_fraction > 0:
        n_dev = min(max(n_dev, 1), n - 1)
    splits = ["train"] * n
    for i in rng.permutation(n)[:n_dev]:
        splits[i] = "dev"
    return splits


def _prepare_out(out: Path, params: dict, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        mpath = out / MANIFEST
        if mpath.exists():
            old = json.loads(mpath.read_text()).get("params", {})
            diff = [k for k in params if old.get(k) != params[k]]
            if diff and not overwrite:
                raise DatasetError(
                    f"{out} already holds a dataset with other parameters ({', '.join(f'{k}: {old.get(k)!r} -> {params[k]!r}' for k in diff)}); "
                    "pass --overwrite to replace it")
        elif not overwrite and any(p.name not in (SHARD_DIR, STATS) for p in out.iterdir()):
            raise DatasetError(f"{out} is not empty and holds no gruv dataset; pass --overwrite to write into it")
        # The manifest goes first: from here on the directory does not read as complete.
        mpath.unlink(missing_ok=True)
        shutil.rmtree(out / SHARD_DIR, ignore_errors=True)
        (out / STATS).unlink(missing_ok=True)
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)


def preprocess(sources: dict[str, Path], out: str | Path, cfg: PreprocessConfig, overwrite: bool = False,
               progress: bool = True) -> dict:
    """Build the dataset; returns the manifest. Raises DatasetError when nothing usable was found."""
    cfg.validate()
    out = Path(out)
    params = cfg.params()
    dim = params["feature_dim"]
    _prepare_out(out, params, overwrite)

    plan = []
    for artist, root in sources.items():
        files = list_songs(root)
        for path, split in zip(files, assign_splits(len(files), artist, cfg)):
            plan.append((artist, path, split))
    if not plan:
        raise DatasetError(f"no files found under {', '.join(str(p) for p in sources.values())}")

    stats = RunningStats(dim)
    writers: dict[tuple[str, str], ShardWriter] = {}
    all_writers: list[ShardWriter] = []
    songs = []
    t0, audio_s = time.time(), 0.0
    min_blocks = cfg.clip_blocks + 1
    bar = progress_bar(plan, unit="song", disable=not progress, desc="preprocess")
    for song_id, (artist, path, split) in enumerate(bar):
        rec = {"id": song_id, "artist": artist, "path": str(path), "split": split, "sha256": None,
               "duration_s": None, "clips": 0, "skipped": None}
        songs.append(rec)
        try:
            rec["sha256"] = sha256_file(path)
            audio = load_mono(path, cfg.sample_rate)
        except (AudioError, OSError) as e:
            rec["skipped"] = str(e)
            warnings.warn(f"skipping {path}: {e}", stacklevel=1)
            continue
        rec["duration_s"] = len(audio) / cfg.sample_rate
        blocks = audio_to_blocks(audio, cfg.block_size)
        n_clips = (len(blocks) - 1) // cfg.clip_blocks
        if n_clips < 1:
            rec["skipped"] = (f"shorter than one clip: {rec['duration_s']:.2f} s, needs "
                              f"{min_blocks * cfg.block_size / cfg.sample_rate:.2f} s")
            warnings.warn(f"skipping {path}: {rec['skipped']}", stacklevel=1)
            continue
        rec["clips"] = n_clips
        key = (artist, split)
        if key not in writers:
            # Songs come artist by artist: close the previous artist's shards as soon as we move on.
            for k in [k for k in writers if k[0] != artist]:
                writers.pop(k).close()
            writers[key] = ShardWriter(out, artist, split, cfg, dim)
            all_writers.append(writers[key])
        w = writers[key]
        done = 0
        while done < n_clips:
            if w.room() == 0:
                w.close()
            take = min(w.room(), n_clips - done)
            ds, row = w.add_segment(song_id, take)
            b0, b1 = done * cfg.clip_blocks, (done + take) * cfg.clip_blocks + 1
            for s in range(b0, b1, BATCH_BLOCKS):
                e = min(s + BATCH_BLOCKS, b1)
                feats = blocks_to_features(blocks[s:e], cfg.transform)
                ds[row + s - b0: row + e - b0] = feats
                if split == "train":
                    # The boundary block shared by two segments is counted once.
                    stats.update(feats[1:] if (s == b0 and done > 0) else feats)
            done += take
        audio_s += rec["duration_s"]
        bar.set_postfix(hours=f"{audio_s / 3600:.2f}")
    bar.close()
    for w in writers.values():
        w.close()
    shards = [r for w in all_writers for r in w.records]

    used = [s for s in songs if not s["skipped"]]
    if not used:
        raise DatasetError("every file was skipped; no dataset written. Reasons:\n" +
                           "\n".join(f"  {s['path']}: {s['skipped']}" for s in songs))
    if stats.n == 0:
        raise DatasetError("no song landed in the train split; add songs or lower dev_fraction")
    tmp = out / f".{STATS}.tmp.npz"
    np.savez(tmp, mean=stats.mean, std=stats.std(), count=np.array(stats.n))
    tmp.replace(out / STATS)
    manifest = {
        "format": FORMAT, "version": VERSION, "tool_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "params": params, "artists": list(sources),
        "stats": {"file": STATS, "blocks": int(stats.n), "sha256": sha256_file(out / STATS)},
        "songs": songs, "shards": shards,
        "summary": {
            "songs": len(used), "skipped": len(songs) - len(used), "clips": sum(s["clips"] for s in used),
            "train_clips": sum(s["clips"] for s in used if s["split"] == "train"),
            "dev_clips": sum(s["clips"] for s in used if s["split"] == "dev"),
            "hours": audio_s / 3600, "wall_s": time.time() - t0,
        },
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    return manifest
