"""What a rank trains and evaluates on: the sampler that resumes mid-epoch, and the loaders
(``build_data``): the dataset resident in device memory when it fits, else streamed from the
HDF5 shards (``dataset.resident``); the same batches in the same order either way."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, DistributedSampler

from gruv_hpc.dataset import resident
from gruv_hpc.dataset.clips import ClipDataset, DatasetHandle, Normalizer, batch_collate
from gruv_hpc.dataset.manifest import DatasetError
from gruv_hpc.training.checkpoint import DATA_ORDER, derive_seed
from gruv_hpc.training.config import TrainConfig, available_cpus, resolve_workers
from gruv_hpc.training.distributed import Dist


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can skip the samples an interrupted epoch already consumed, and
    whose shuffle is seeded by ``derive_seed(seed, DATA_ORDER, epoch)``: DistributedSampler's own
    ``seed + epoch`` gives seed 2's epoch e the permutation of seed 1's epoch e + 1, so the seeds
    of a grid would not be independent replicates."""

    skip = 0

    def __iter__(self):
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(derive_seed(self.seed, DATA_ORDER, self.epoch))
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        if self.drop_last:
            order = order[: self.total_size]
        else:  # pad to a multiple of the ranks, as DistributedSampler does
            order = (order * (-(-self.total_size // max(n, 1))))[: self.total_size]
        return iter(order[self.rank: self.total_size: self.num_replicas][self.skip:])

    def __len__(self):
        return self.num_samples - self.skip


@dataclass
class Data:
    train_loader: DataLoader
    dev_loader: DataLoader
    sampler: ResumableSampler
    local_bs: int
    steps_per_epoch: int
    normalize: Normalizer
    dev_set: ClipDataset  # the TensorBoard sample seeds from it
    train_set: ClipDataset | None = None  # to name a damaged shard when the loss turns non-finite
    # The artist (an index into dev_set.artists) of each of this rank's dev clips, in the order
    # the dev loader yields them: evaluate() splits the dev loss by artist.
    dev_artist: torch.Tensor | None = None

    def to_window(self, blk: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored (B, C + 1, S) windows -> the normalized window (B, C + 1, D), whose blocks 0..C-1
        are the input (the model drops the last after its input affine: ``drop_last``), and the
        targets y = blocks 1..C (a view)."""
        win = self.normalize(blk.to(device, non_blocking=True))  # expanded on the device
        return win, win[:, 1:]


def _log(msg: str) -> None:
    print(msg, flush=True)


def build_data(cfg: TrainConfig, d: Dist, dataset: DatasetHandle) -> Data:
    train_set = dataset.split("train", as_blocks=True)
    dev_set = dataset.split("dev", as_blocks=True)
    if len(train_set) == 0:
        raise DatasetError(f"{cfg.data}: the train split has no clips for artists {cfg.artists or 'all'}")
    local_bs = cfg.batch_size // d.world
    sampler = ResumableSampler(train_set, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed, drop_last=True)
    # Dev: every clip exactly once across ranks (DistributedSampler would pad with repeats).
    dev_indices = range(d.rank, len(dev_set), d.world)
    cpus = available_cpus()
    workers = resolve_workers(cfg.workers, d.device.type, cpus)
    log = _log if d.is_main else (lambda _: None)
    log(f"data loading: workers={cfg.workers} -> {workers} per rank (device {d.device.type}, {cpus} CPUs per process)")
    # The same batches either way: resident in device memory, or streamed by a DataLoader.
    loaders = resident.build_loaders(cfg.data_on_device, d.device, d.world, train_set, dev_set, dev_indices, sampler,
                                     local_bs, workers, log=log)
    if loaders:
        train_loader, dev_loader = loaders
    else:
        kw = dict(num_workers=workers, pin_memory=d.device.type == "cuda", persistent_workers=workers > 0,
                  collate_fn=batch_collate)
        train_loader = DataLoader(train_set, batch_size=local_bs, sampler=sampler, drop_last=True, **kw)
        dev_loader = DataLoader(torch.utils.data.Subset(dev_set, dev_indices), batch_size=local_bs, shuffle=False, **kw)
    steps = len(sampler) // local_bs
    if cfg.limit_train_batches:
        steps = min(steps, cfg.limit_train_batches)
    if steps == 0:
        raise DatasetError(f"{cfg.data}: {len(train_set)} train clips give no full batch of {cfg.batch_size}")
    # Both loaders yield the dev clips in dev_indices' order.
    dev_artist = torch.from_numpy(dev_set.clip_artists()[list(dev_indices)]).to(d.device)
    return Data(train_loader, dev_loader, sampler, local_bs, steps, dataset.normalizer(d.device), dev_set, train_set,
                dev_artist)
