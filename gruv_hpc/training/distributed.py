"""The distributed environment, set up in one place: one process per GPU (or per CPU rank).

A run starts unchanged as one process, under torchrun, under plain ``srun``, or as a submitit job
with several tasks. torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
under Slurm, ``export_env`` derives the same variables from Slurm's (``jobenv``: no ``scontrol``).
It writes ``os.environ``, so only entry points call it (``gruv train`` and ``training.job.TrainJob``),
and say so.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gruv_hpc import jobenv
from gruv_hpc.errors import TrainingError


def export_env(env=os.environ) -> None:
    """Under Slurm with several tasks (and no torchrun), set torchrun's variables from Slurm's:
    RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK (the node rank) and, unless set
    already, MASTER_ADDR (the node list's first name) and MASTER_PORT."""
    e = jobenv.detect(env)
    if not isinstance(e, jobenv.Slurm) or e.world <= 1:
        return
    env.update(RANK=str(e.rank), WORLD_SIZE=str(e.world), LOCAL_RANK=str(e.local_rank),
               LOCAL_WORLD_SIZE=str(e.local_world), GROUP_RANK=str(e.node_rank))
    env.setdefault("MASTER_ADDR", e.main_address)
    env.setdefault("MASTER_PORT", str(e.main_port))


def cuda_device(e: jobenv.JobEnv, visible: int) -> int:
    """The GPU of this process: its local rank, when this node shows at least one GPU per task.
    More tasks on a node than GPUs would put two ranks on one GPU (slow, or out of memory much
    later): refused here, at start, naming the node and both counts."""
    if e.local_world > visible:
        raise TrainingError(
            f"node {e.node_name}: {e.local_world} training tasks but {visible} visible GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); give each task its own "
            "GPU: slurm.gpus_per_node = slurm.tasks_per_node (or fewer torchrun --nproc-per-node)")
    return e.local_rank


def prefer_huge_pages(env=os.environ) -> None:
    """Let torch back large CPU tensors with transparent huge pages (``THP_MEM_ALLOC_ENABLE``),
    unless the environment already says otherwise. A training step allocates several fresh
    batch-sized buffers (the gathered clips, the normalized batch, activations and gradients):
    with 4 KiB pages each 28 MB buffer cost ~6 800 page faults a step, with huge pages ~450.
    torch reads the variable at its first large allocation, so entry points call this first."""
    env.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def flush_denormals() -> bool:
    """Flush subnormal floats (below 1.2e-38) to zero on the CPU.
    A trained recurrent model's saturated gates and their gradients fall into that range, and the
    CPU takes a slow microcode path for every such operand: the demo's LSTM H=128 epochs grew from
    1.4 s to 2.6 s as it trained, and ran at 0.5 s with flushing, to the same dev loss in every
    printed digit. The flag is per thread and torch's intra-op threads copy it when they start, so
    entry points call this before torch's first parallel operation. Returns False where the CPU
    has no such mode."""
    return torch.set_flush_denormal(True)


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process with side effects (files, TensorBoard, stdout)."""
        return self.rank == 0

    def any(self, *flags: bool) -> list[bool]:
        """Each flag OR-ed over the ranks: one small all-reduce (and a sync) per call."""
        if self.world == 1:
            return list(flags)
        t = torch.tensor([float(f) for f in flags], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def mean(self, v: float) -> float:
        if self.world == 1:
            return v
        t = torch.tensor([v], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank (picklable objects)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def setup(device: str = "auto", tf32: bool = True) -> Dist:
    """Read the rank from the environment, pick the device, start the process group.
    NCCL on GPUs, gloo on CPUs."""
    e = jobenv.Torchrun.detect(os.environ) or jobenv.Local.detect(os.environ)  # what the entry point exported
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(cuda_device(e, torch.cuda.device_count()))
        dev = torch.device("cuda", torch.cuda.current_device())
        if tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
    else:
        dev = torch.device("cpu")
    if e.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=e.rank, world_size=e.world)
    return Dist(e.rank, e.world, e.local_rank, dev)


def teardown(d: Dist) -> None:
    """Wait for every rank, then tear the group down on all of them together: a rank that exits
    while a peer's gloo connection is still open can abort that peer ("terminate called without
    an active exception")."""
    if d.world > 1 and dist.is_initialized():
        # Whatever still holds the group (a DDP reducer in a reference cycle, say) is freed now,
        # while the interpreter is whole, and not in its finalization after the group is gone.
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
