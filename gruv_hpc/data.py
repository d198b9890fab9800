"""Reading a dataset back: a torch Dataset of normalized (x, y) clips."""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from .manifest import DatasetError, check_params, clip_index, load_manifest, load_stats


class ClipDataset(Dataset):
    """(x, y) float32 normalized clips of shape (C, D); y is x shifted by one block.

    HDF5 handles are opened lazily, per process (keyed by pid), so a DataLoader that forks its
    workers never shares a handle across fork. Only the manifest and stats are read up front.
    """

    def __init__(self, data_dir: str | Path, split: str, artists: list[str] | None = None,
                 expect: dict | None = None, normalize: bool = True, as_blocks: bool = False):
        self.data_dir = Path(data_dir)
        self.manifest = load_manifest(self.data_dir)
        if expect:
            check_params(self.manifest, expect)
        self.params = self.manifest["params"]
        self.clip_blocks = self.params["clip_blocks"]
        self.index = clip_index(self.data_dir, self.manifest, split, artists)
        self.split = split
        mean, std = load_stats(self.data_dir, self.manifest)
        self.mean = mean.astype(np.float32)
        self.inv_std = (1.0 / std).astype(np.float32)
        self.normalize = normalize
        # as_blocks: items are the raw (C + 1, D) windows; the training loop normalizes whole
        # batches on its device and slices x and y out of them (no copy of the shared C blocks).
        self.as_blocks = as_blocks
        self._files: dict[int, h5py.File] = {}
        self._pid = None

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self):
        # Pickled into spawn/forkserver DataLoader workers: never carry open HDF5 handles.
        d = dict(self.__dict__)
        d["_files"], d["_pid"] = {}, None
        return d

    def _shard(self, k: int) -> h5py.Dataset:
        if self._pid != os.getpid():  # first use in this process (e.g. a freshly forked worker)
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(k)
        if f is None:
            path = self.index.shard_files[k]
            if not path.exists():
                raise DatasetError(f"shard {path} is missing")
            size = path.stat().st_size
            if size != self.index.shard_bytes[k]:
                raise DatasetError(f"shard {path} is truncated or was modified: {size} bytes, manifest says {self.index.shard_bytes[k]}")
            try:
                # No chunk cache: every read is a whole clip, straight into its destination buffer.
                f = h5py.File(path, "r", rdcc_nbytes=0)
                f["blocks"]
            except (OSError, KeyError) as e:
                raise DatasetError(f"shard {path} is corrupt: {e}") from e
            self._files[k] = f
        return f["blocks"]

    def raw_blocks(self, i: int, out: np.ndarray | None = None, n: int | None = None) -> np.ndarray:
        """The unnormalized feature blocks of clip i: its C + 1, or ``n`` from the clip's start
        (read straight into ``out`` if given)."""
        k = int(self.index.shard_of_clip[i])
        start, n = int(self.index.start_of_clip[i]), n or self.clip_blocks + 1
        try:
            ds = self._shard(k)
            if start + n > ds.shape[0]:
                raise DatasetError(f"shard {self.index.shard_files[k]} is truncated: clip at row {start} is incomplete")
            if out is None:
                return ds[start: start + n]
            ds.read_direct(out, source_sel=np.s_[start: start + n])
            return out
        except OSError as e:
            raise DatasetError(f"shard {self.index.shard_files[k]} is corrupt: {e}") from e

    def __getitems__(self, idxs: list[int]):
        """A whole batch at once (DataLoader uses this): with as_blocks, one (B, C + 1, D) tensor
        read directly into its final buffer, with no per-item tensors and no collate copy."""
        if not self.as_blocks:
            return [self[i] for i in idxs]
        out = np.empty((len(idxs), self.clip_blocks + 1, self.params["feature_dim"]), np.float32)
        for k, i in enumerate(idxs):
            self.raw_blocks(int(i), out[k])
        return torch.from_numpy(out)

    def __getitem__(self, i: int):
        blk = self.raw_blocks(i)
        if self.as_blocks:
            return torch.from_numpy(blk)
        if self.normalize:
            blk = (blk - self.mean) * self.inv_std
        t = torch.from_numpy(np.ascontiguousarray(blk, dtype=np.float32))
        return t[:-1], t[1:]

    def normalizer(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(shift, scale) on ``device`` with raw * scale + shift = (raw - mean) / std: one fused pass."""
        return torch.from_numpy(-self.mean * self.inv_std).to(device), torch.from_numpy(self.inv_std).to(device)


def batch_collate(batch):
    """collate_fn for as_blocks datasets: __getitems__ already returned the stacked batch."""
    return batch
