"""Reading a dataset back: a ``DatasetHandle`` (the dataset opened once per process) and the
torch Dataset of its normalized (x, y) clips.

Shards hold the stored half of each block's spectrum (S values, float32 or float16); the model
sees D features (2N for ``fft``). ``Normalizer`` normalizes a whole batch in the stored space and
expands it to D on the training device, so only the stored bytes are read and moved.
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from gruv_hpc.dataset.manifest import (STD_FLOOR, DatasetError, check_params, clip_index, ensure_verified,
                                       load_manifest, load_stats, select_artists)
from gruv_hpc.dataset.transforms import from_params


def expansion_runs(index: np.ndarray, sign: np.ndarray) -> list[tuple[int, int, int, int, int]]:
    """``expansion`` as a few runs (d0, d1, s0, step, sign): features[d0:d1] = sign *
    stored[s0], stored[s0 + step], ... (step +-1; sign 0: zeros). The full DFT's layout is five
    runs: Re up, Re mirrored, Im of DC, Im up, Im mirrored and negated."""
    runs, d, n = [], 0, len(index)
    while d < n:
        e, sg = d + 1, int(sign[d])
        step = int(index[e] - index[d]) if e < n and sign[e] == sg and abs(int(index[e]) - int(index[d])) == 1 else 1
        while e < n and sign[e] == sg and (sg == 0 or index[e] - index[e - 1] == step):
            e += 1
        runs.append((d, e, int(index[d]), step, sg))
        d = e
    return runs


class Normalizer:
    """Stored rows (..., S) of any float dtype -> normalized model features (..., D), float32,
    on one device. Normalizing comes first, in the stored space (S values, not D): a mirrored
    feature is +-1 times a stored value, so its (x - mean) / std is +-1 times the stored value's.
    The expansion is then a few contiguous copies (``expansion_runs``): on a CPU from numpy views
    (a reversed view costs nothing there, unlike a gather or ``torch.flip``), on a GPU in torch."""

    def __init__(self, index: np.ndarray, sign: np.ndarray, mean: np.ndarray, std: np.ndarray, device="cpu"):
        """index, sign: ``features.expansion``; mean, std: of the D features (``load_stats``)."""
        up = np.nonzero(sign > 0)[0]
        d_of_stored = np.empty(int(index.max()) + 1, np.int64)
        d_of_stored[index[up]] = up  # every stored value is some feature with sign +1
        self.device = torch.device(device)
        self.scale = torch.from_numpy((1.0 / std[d_of_stored]).astype(np.float32)).to(self.device)
        self.shift = torch.from_numpy((-mean[d_of_stored] / std[d_of_stored]).astype(np.float32)).to(self.device)
        self.runs, self.dim = expansion_runs(index, sign), len(index)

    CPU_ROWS = 16  # rows normalized at a time on a CPU: they stay in cache for the copies that follow

    def __call__(self, stored: torch.Tensor) -> torch.Tensor:
        lead, s = stored.shape[:-1], stored.shape[-1]
        stored = stored.reshape(-1, s)
        if stored.device.type == "cpu":
            # numpy throughout: single-threaded ops on cached rows, where many small multi-threaded
            # torch ops would wait on each other whenever the cores are busy; its large buffers get
            # huge pages, so a fresh batch costs few page faults.
            st, scale, shift = stored.numpy(), self.scale.numpy(), self.shift.numpy()
            out = np.empty((len(st), self.dim), np.float32)
            rows = np.empty((self.CPU_ROWS, s), np.float32)
            for r0 in range(0, len(st), self.CPU_ROWS):
                r = rows[: min(self.CPU_ROWS, len(st) - r0)]
                np.multiply(st[r0: r0 + len(r)], scale, out=r)
                np.add(r, shift, out=r)
                self.expand_numpy(r, out[r0: r0 + len(r)])
            return torch.from_numpy(out).view(*lead, self.dim)
        # float16 is cast here, after the transfer: it moved half the bytes
        return self.expand_torch(torch.addcmul(self.shift, stored.float(), self.scale)).view(*lead, self.dim)

    def expand_numpy(self, a: np.ndarray, o: np.ndarray | None = None) -> np.ndarray:
        """(R, S) -> (R, D) float32 (into ``o`` if given), each run one copy from a (reversed) view."""
        o = np.empty((a.shape[0], self.dim), np.float32) if o is None else o
        for d0, d1, s0, step, sg in self.runs:
            n = d1 - d0
            src = a[:, s0: s0 + n] if step == 1 else a[:, s0 - n + 1: s0 + 1][:, ::-1]
            if sg == 0:
                o[:, d0:d1] = 0
            elif sg > 0:
                o[:, d0:d1] = src
            else:
                np.negative(src, out=o[:, d0:d1])
        return o

    def expand_torch(self, t: torch.Tensor) -> torch.Tensor:
        """(R, S) -> (R, D) on t's device (a GPU's flip is cheap)."""
        o = torch.empty(t.shape[0], self.dim, device=t.device)
        for d0, d1, s0, step, sg in self.runs:
            n = d1 - d0
            src = t[:, s0: s0 + n] if step == 1 else t[:, s0 - n + 1: s0 + 1].flip(1)
            o[:, d0:d1] = src if sg > 0 else -src if sg < 0 else 0
        return o


class DatasetHandle:
    """A dataset opened once: its manifest, its transform, and the train statistics of the artists
    a run uses (all when it names none). Open it once per process and hand it down: the splits
    (``split``), the normalizer (``normalizer``), generation and analysis all read from it rather
    than from the directory again."""

    def __init__(self, data_dir: str | Path, artists: list[str] | None = None, expect: dict | None = None,
                 std_floor: float = STD_FLOOR, manifest: dict | None = None):
        """``std_floor``: TrainConfig.std_floor, the run's choice of the std's floor
        (``manifest.floored_std``; 0: the paper's z-scoring). ``manifest``: the directory's manifest
        when the caller has read it already (handles of one dataset for several artists share it)."""
        self.path = Path(data_dir)
        self.manifest = manifest if manifest is not None else load_manifest(self.path)
        if expect:
            check_params(self.manifest, expect)
        self.params = self.manifest["params"]
        self.artists = select_artists(self.manifest, artists)
        self.transform = from_params(self.params)
        self.mean, self.std = load_stats(self.path, self.manifest, self.artists, std_floor)  # float64, (D,)
        self.expand_index, self.sign = self.transform.expansion()

    def split(self, split: str, normalize: bool = True, as_blocks: bool = False) -> "ClipDataset":
        return ClipDataset(self, split, normalize=normalize, as_blocks=as_blocks)

    def normalizer(self, device) -> Normalizer:
        """Normalizes and expands batches of stored rows (as_blocks items) on ``device``."""
        return Normalizer(self.expand_index, self.sign, self.mean, self.std, device)


class ClipDataset(Dataset):
    """(x, y) float32 normalized clips of shape (C, D); y is x shifted by one block.

    Normalized with the train statistics of the artists it is built for (all when ``artists`` is
    empty), whichever split it serves. HDF5 handles are opened lazily, per process (keyed by pid),
    so a DataLoader that forks its workers never shares a handle across fork. Up front, the
    manifest and stats are read and the shards it serves are checked against the manifest's
    sha256 (once per process: ``manifest.ensure_verified``), so damaged data is never trained on.
    """

    def __init__(self, data: str | Path | DatasetHandle, split: str, artists: list[str] | None = None,
                 expect: dict | None = None, normalize: bool = True, as_blocks: bool = False,
                 std_floor: float = STD_FLOOR):
        """``data``: a dataset directory, or a ``DatasetHandle`` already open (then ``artists``,
        ``expect`` and ``std_floor`` are the handle's)."""
        handle = data if isinstance(data, DatasetHandle) else DatasetHandle(data, artists, expect, std_floor)
        self.handle = handle
        self.data_dir, self.manifest, self.params = handle.path, handle.manifest, handle.params
        self.clip_blocks = self.params["clip_blocks"]
        self.artists = handle.artists
        self.index = clip_index(self.data_dir, self.manifest, split, self.artists)
        ensure_verified(self.data_dir, self.manifest, [str(f.relative_to(self.data_dir)) for f in self.index.shard_files])
        self.split = split
        self.mean, self.std = handle.mean, handle.std
        self.transform = handle.transform
        self.expand_index, self.sign = handle.expand_index, handle.sign
        self._cpu_normalizer = None
        self.normalize = normalize
        # as_blocks: items are the stored (C + 1, S) windows; the training loop expands and
        # normalizes whole batches on its device (Normalizer) and slices x and y out of them.
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
        """The stored rows of clip i, (n, S) in the stored dtype: its C + 1, or ``n`` from the
        clip's start (read straight into ``out`` if given)."""
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
        out = np.empty((len(idxs), self.clip_blocks + 1, self.params["storage_dim"]), self.params["dtype"])
        for k, i in enumerate(idxs):
            self.raw_blocks(int(i), out[k])
        return torch.from_numpy(out)

    def clip_artists(self) -> np.ndarray:
        """Each clip's artist, as an index into ``self.artists`` (int64, one per clip): from the
        manifest, which names the artist of every shard. No shard is opened."""
        of_file = {Path(self.data_dir) / sh["file"]: sh["artist"] for sh in self.manifest["shards"]}
        shard_artist = np.array([self.artists.index(of_file[f]) for f in self.index.shard_files], np.int64)
        return shard_artist[self.index.shard_of_clip] if len(shard_artist) else np.zeros(0, np.int64)

    def features(self, i: int, n: int | None = None) -> np.ndarray:
        """The unnormalized model features of clip i, (n, D) float32: its C + 1 blocks, or ``n``
        from the clip's start."""
        return np.take(self.raw_blocks(i, n=n).astype(np.float32), self.expand_index, axis=-1) * self.sign

    def __getitem__(self, i: int):
        if self.as_blocks:
            return torch.from_numpy(self.raw_blocks(i))
        if self.normalize:
            if self._cpu_normalizer is None:
                self._cpu_normalizer = self.normalizer("cpu")
            t = self._cpu_normalizer(torch.from_numpy(self.raw_blocks(i)))
        else:
            t = torch.from_numpy(self.features(i))
        return t[:-1], t[1:]

    EXTREME = 1e4  # a normalized value this far out (in standard deviations) is damage, not music

    def scan_bad_values(self) -> list[str]:
        """Each shard this dataset serves that holds a non-finite stored value, or one more than
        EXTREME standard deviations out once normalized: "<file>: row r, value v", one per shard.
        Called when a loss turns non-finite, to tell damaged data from a diverging model."""
        norm = self.normalizer("cpu")
        scale, shift = norm.scale.numpy().astype(np.float64), norm.shift.numpy().astype(np.float64)
        found = []
        for k, path in enumerate(self.index.shard_files):
            ds = self._shard(k)
            for r0 in range(0, ds.shape[0], 4096):
                rows = ds[r0: r0 + 4096].astype(np.float64)
                with np.errstate(all="ignore"):
                    z = np.abs(rows * scale + shift)
                bad = ~np.isfinite(rows) | ~(z <= self.EXTREME)
                if bad.any():
                    r, c = np.argwhere(bad)[0]
                    found.append(f"{path}: row {r0 + r}, value {rows[r, c]:g}")
                    break
        return found

    def normalizer(self, device) -> Normalizer:
        """Normalizes and expands batches of stored rows (as_blocks items) on ``device``."""
        return self.handle.normalizer(device)


def batch_collate(batch):
    """collate_fn for as_blocks datasets: __getitems__ already returned the stacked batch."""
    return batch
