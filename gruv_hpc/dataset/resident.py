"""A device-resident dataset: a run's train and dev clips loaded once into device memory, each
batch an on-device gather. No DataLoader, no worker processes, no host-to-device copy per step.

``data_on_device`` (a runtime key of TrainConfig):

- ``auto``: resident when the clips fit in ``FRACTION`` (25%) of the device's memory: of the
  *free* GPU memory on CUDA (``torch.cuda.mem_get_info``, before the model is built), of the
  *available* RAM on the CPU (``MemAvailable``), divided by the ranks there are on the CPU, since
  each rank holds its own copy. Otherwise the clips are streamed from the HDF5 shards.
- ``true``: resident whatever the fraction (an error only when the clips exceed the free memory).
- ``false``: streamed.

The resident clips are exactly what streaming yields: the raw stored blocks of each clip, as
``ClipDataset.__getitems__`` returns them (they are loaded through it, so their shards were checked
against the manifest's sha256 as streamed ones are), so ``data.Data.to_window``
(normalization, and whatever it does with the stored format) applies to both unchanged. The batches
are the same clips in the same order: the same ``DistributedSampler`` permutation per epoch, the
same skip on resume, the same ``drop_last``, the same dev order. On the CPU a run is bitwise equal
either way (tested), its checkpointed RNG state included.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence

import torch
from torch.utils.data import BatchSampler, DataLoader

from gruv_hpc.dataset.clips import batch_collate
from gruv_hpc.errors import ConfigError

FRACTION = 0.25  # of free GPU memory, or of available RAM over the CPU ranks


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _mem_available() -> int:
    """Available RAM in bytes: MemAvailable (Linux), else free pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def memory_budget(device: torch.device, world: int = 1) -> tuple[int, int, str]:
    """(budget, hard limit, description): FRACTION of the free GPU memory, or on the CPU of the
    available RAM over ``world`` ranks. The hard limit is what ``true`` may not exceed."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(FRACTION * free), free, f"{FRACTION:.0%} of {gib(free)} free GPU memory"
    avail = _mem_available() // max(world, 1)
    per = f" per rank ({world} ranks)" if world > 1 else ""
    return int(FRACTION * avail), avail, f"{FRACTION:.0%} of {gib(avail)} available RAM{per}"


class ResidentClips:
    """The clips ``indices`` of ``dataset`` as one (n, C + 1, W) tensor on ``device``: row k holds
    dataset item ``indices[k]``, exactly as ``dataset.__getitems__`` returns it."""

    def __init__(self, dataset, indices: Sequence[int], device: torch.device, probe: torch.Tensor,
                 workers: int = 0, chunk: int = 32):
        indices = list(indices)
        self.data = torch.empty((len(indices), *probe.shape[1:]), dtype=probe.dtype, device=device)
        if not indices:
            return
        # Read in chunks through the dataset's own batch reads (workers in parallel). Its own
        # generator: loading must not draw from the global RNG, which streaming does not either.
        loader = DataLoader(dataset, batch_size=chunk, sampler=indices, num_workers=workers,
                            collate_fn=batch_collate, pin_memory=device.type == "cuda", generator=torch.Generator())
        k = 0
        for blk in loader:
            self.data[k:k + len(blk)].copy_(blk)
            k += len(blk)
        if k != len(indices):
            raise RuntimeError(f"resident load read {k} clips of {len(indices)}")

    def __len__(self) -> int:
        return len(self.data)

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def gather(self, pos: torch.Tensor) -> torch.Tensor:
        """A new (len(pos), C + 1, W) tensor (the caller may normalize it in place). Advanced
        indexing: on the CPU it copies whole rows, ~4x faster than index_select here."""
        return self.data[pos]


class ResidentLoader:
    """Iterates like a ``DataLoader(batch_sampler=batches)`` with workers=0 over the resident clips:
    ``batches`` yields lists of positions (a BatchSampler over the run's sampler). Every batch of
    an epoch is gathered on the device with one index upload per epoch and no host sync."""

    def __init__(self, clips: ResidentClips, batches: Iterable[list[int]]):
        self.clips, self.batches = clips, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        # A DataLoader iterator draws its workers' base seed from the global RNG (one int64). The
        # same draw here keeps the RNG stream, and so any later random op and the checkpointed
        # RNG state, the same as streaming's (workers=0).
        torch.empty((), dtype=torch.int64).random_()
        batches = list(self.batches)  # the sampler's epoch and skip are read now, as a DataLoader does
        if not batches:
            return
        flat = torch.tensor([i for b in batches for i in b], dtype=torch.int64).to(self.clips.data.device)
        off = 0
        for b in batches:
            yield self.clips.gather(flat[off:off + len(b)])
            off += len(b)


def build_loaders(mode: str, device: torch.device, world: int, train_set, dev_set, dev_indices: Sequence[int],
                  sampler, local_bs: int, workers: int = 0,
                  log: Callable[[str], None] = print) -> tuple[ResidentLoader, ResidentLoader] | None:
    """The resident (train, dev) loaders, or None to stream. Logs the choice in one line."""
    stream = f"streaming from the HDF5 shards ({workers} DataLoader workers per rank)"
    if mode == "false":
        log(f"data: {stream} (data_on_device=false)")
        return None
    probe = train_set.__getitems__([0])
    if not (isinstance(probe, torch.Tensor) and probe.dim() >= 2 and probe.shape[0] == 1):
        log(f"data: {stream}: the dataset's batches are not tensors (data_on_device={mode})")
        return None
    per_clip = probe.numel() * probe.element_size()
    n_train, n_dev = len(train_set), len(dev_indices)
    need = (n_train + n_dev) * per_clip
    budget, limit, where = memory_budget(device, world)
    sizes = (f"{n_train} train + {n_dev} dev clips of {tuple(probe.shape[1:])} {str(probe.dtype).removeprefix('torch.')}"
             f" = {gib(need)}")
    if mode == "auto" and need > budget:
        log(f"data: {stream}: {sizes} > {where} (data_on_device=auto)")
        return None
    if need > limit:
        raise ConfigError(f"data_on_device=true: {sizes}, more than the {gib(limit)} there are on {device}")
    t0 = time.time()
    train = ResidentClips(train_set, range(n_train), device, probe, workers)
    dev = ResidentClips(dev_set, dev_indices, device, probe, workers)
    rel = "<=" if need <= budget else ">"
    log(f"data: resident on {device}: {sizes} {rel} {where} (data_on_device={mode}); loaded in {time.time() - t0:.1f} s")
    return (ResidentLoader(train, BatchSampler(sampler, local_bs, drop_last=True)),
            ResidentLoader(dev, BatchSampler(range(n_dev), local_bs, drop_last=False)))
