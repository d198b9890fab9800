"""A shard being written: one artist's split, bounded in size, closed into place (``ShardWriter``)."""
from __future__ import annotations

import io
import os
from pathlib import Path

import h5py
import numpy as np

from gruv_hpc.dataset.config import PreprocessConfig
from gruv_hpc.dataset.manifest import (
    FORMAT,
    SHARD_DIR,
    VERSION,
    chunk_rows,
    sha256_file,
)

BATCH_BLOCKS = 64  # blocks transformed per FFT call: big enough to amortize, small enough for cache
FLOAT16_MAX = float(np.finfo(np.float16).max)


class _WriteGuard(io.FileIO):
    """The file HDF5 writes a shard through. HDF5 does not survive a failed write (closing the
    file afterwards crashes the process), so a failed write is recorded here and reported to
    HDF5 as done; the writer checks ``error`` after each write and gives up cleanly."""

    error: OSError | None = None

    def write(self, b) -> int:
        if self.error is None:
            try:
                return super().write(b)
            except OSError as e:
                self.error = e
        return memoryview(b).nbytes


class ShardWriter:
    """Appends song segments to numbered shards of one (artist, split), renaming each when closed."""

    def __init__(self, staging: Path, task: int, artist: str, split: str, cfg: PreprocessConfig, dim: int):
        self.staging, self.task, self.artist, self.split, self.cfg, self.dim = staging, task, artist, split, cfg, dim
        itemsize = np.dtype(cfg.dtype).itemsize
        self.rows = chunk_rows(cfg.clip_blocks, dim * itemsize)
        clip_bytes = (cfg.clip_blocks + 1) * dim * itemsize
        cap = max(1, int(cfg.shard_mb * 2**20 // clip_bytes))
        self.capacity = min(cap, cfg.shard_clips) if cfg.shard_clips > 0 else cap
        self.records: list[dict] = []
        self.file = self.raw = None
        self.k = 0

    def _open(self):
        name = f"{self.artist}-{self.split}-{self.task:03d}-{self.k:04d}.h5"
        self.final = self.staging / SHARD_DIR / name
        self.tmp = self.final.with_name(name + ".partial")
        self.raw = _WriteGuard(self.tmp, "w+")
        self.file = h5py.File(self.raw, "w")
        self.blocks = self.file.create_dataset(
            "blocks", shape=(0, self.dim), maxshape=(None, self.dim), dtype=self.cfg.dtype, chunks=(self.rows, self.dim))
        self.segments: list[tuple[int, int, int, int]] = []
        self.clips = 0

    def check(self) -> None:
        if self.raw is not None and self.raw.error is not None:
            e = self.raw.error
            raise OSError(e.errno, e.strerror, str(self.tmp))

    def room(self) -> int:
        if self.file is None:
            self._open()
        return self.capacity - self.clips

    def add_segment(self, song_id: int, n_clips: int, first_clip: int) -> tuple[h5py.Dataset, int]:
        """Reserve rows for ``n_clips`` clips (n*C + 1 blocks); returns (dataset, first row)."""
        assert 0 < n_clips <= self.room()
        start = -(-self.blocks.shape[0] // self.rows) * self.rows  # align to a chunk boundary
        n = n_clips * self.cfg.clip_blocks + 1
        self.blocks.resize(start + n, axis=0)
        self.segments.append((song_id, start, n_clips, first_clip))
        self.clips += n_clips
        return self.blocks, start

    def close(self) -> None:
        if self.file is None:
            return
        self.file.create_dataset("segments", data=np.array(self.segments, dtype=np.int64).reshape(-1, 4))
        self.file.attrs.update({"format": FORMAT, "version": VERSION, "artist": self.artist, "split": self.split,
                                "clip_blocks": self.cfg.clip_blocks, "storage_dim": self.dim})
        n_blocks = self.blocks.shape[0]
        self.file.close()
        self.file = None
        self.check()
        self.raw.flush()
        os.fsync(self.raw.fileno())
        self.raw.close()
        self.raw = None
        self.tmp.replace(self.final)
        self.records.append({
            "file": f"{SHARD_DIR}/{self.final.name}", "artist": self.artist, "split": self.split,
            "clips": self.clips, "blocks": n_blocks, "bytes": self.final.stat().st_size,
            "sha256": sha256_file(self.final), "segments": [list(s) for s in self.segments],
        })
        self.k += 1

    def abort(self) -> None:
        """Drop the shard being written (after an error)."""
        if self.file is not None:
            try:
                self.file.close()  # safe: a failed write never reached HDF5 (see _WriteGuard)
            except Exception:  # noqa: BLE001 - the original error is what gets reported
                pass
            self.file = None
        if self.raw is not None:
            self.raw.close()
            self.raw = None
            self.tmp.unlink(missing_ok=True)
