"""Training: one loop, read top to bottom.

Runs unchanged as one process, under torchrun, or under srun (rank and world size from the
standard environment). Resumes automatically from the newest loadable checkpoint in RUN_DIR.
Only rank 0 writes anything.
"""
from __future__ import annotations

import json
import math
import os
import random
import resource
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

from .checkpoint import RunPaths, clean_temp, git_info, load_latest, save_checkpoint
from .config import RUNTIME_KEYS, ConfigError, TrainConfig, diff, to_dict
from .data import ClipDataset, batch_collate
from .errors import TrainingError
from .fsio import atomic_write_text
from .manifest import PARAM_KEYS, DatasetError, check_params, load_manifest
from .model import GRUVModel




class StopFlag:
    """Set from a signal handler; the loop checks it between optimizer steps, never inside one,
    so the checkpoint it then writes is always a consistent (model, optimizer, position) state."""

    def __init__(self):
        self.requested = False

    def request(self, *_):
        self.requested = True


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can skip the samples an interrupted epoch already consumed."""

    skip = 0

    def __iter__(self):
        it = list(super().__iter__())
        return iter(it[self.skip:])

    def __len__(self):
        return self.num_samples - self.skip


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(cfg: TrainConfig) -> Dist:
    env = os.environ
    if "RANK" not in env and int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        # Plain srun: derive torchrun's variables from Slurm's.
        env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        if "MASTER_ADDR" not in env:
            import subprocess
            nodes = subprocess.run(["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]],
                                   capture_output=True, text=True, check=True).stdout.split()
            env["MASTER_ADDR"] = nodes[0]
            env["MASTER_PORT"] = str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
    rank, world, local = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but no GPU is visible")
    if use_cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
        if cfg.amp:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return Dist(rank, world, local, device)


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """Fill the dataset parameters the config left open; refuse ones that differ."""
    if not cfg.data:
        raise ConfigError("data: no dataset given (gruv train --data DATA_DIR, or data=... )")
    manifest = load_manifest(cfg.data)
    check_params(manifest, {k: getattr(cfg, k) for k in PARAM_KEYS})
    for k in PARAM_KEYS:
        setattr(cfg, k, manifest["params"][k])
    return cfg


def check_run_dir(paths: RunPaths, cfg: TrainConfig) -> None:
    """A run directory belongs to one config; never silently mix two runs."""
    if paths.config.exists():
        old = json.loads(paths.config.read_text())["config"]
        d = diff(old, to_dict(cfg), ignore=RUNTIME_KEYS)
        if d:
            raise ConfigError(f"{paths.root} holds a run with another config ({'; '.join(d)}); "
                              "use a new run directory")


def _rng_state() -> dict:
    np_state = np.random.get_state()
    st = {"python": random.getstate(), "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                                                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
          "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    random.setstate(_tuplify(st["python"]))
    n = st["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def _peak_mem_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_optimizer(cfg: TrainConfig, params):
    if cfg.optimizer == "rmsprop":
        # Keras' RMSprop (the original code's): rho 0.9, eps 1e-7... torch's alpha is rho.
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=0.9, eps=1e-7)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9)


def main(cfg: TrainConfig, run_dir: str | Path, stop: StopFlag | None = None) -> dict:
    """Train (or resume) the run in ``run_dir``. Returns a status dict:
    {"status": "done"|"stopped", "epoch": ..., ...}. Raises on errors (and records them in error.txt)."""
    stop = stop or StopFlag()
    d = setup_distributed(cfg)
    paths = RunPaths(run_dir)
    try:
        result = _train(cfg, paths, d, stop)
    except BaseException as e:
        if d.is_main and not isinstance(e, KeyboardInterrupt):
            paths.root.mkdir(parents=True, exist_ok=True)
            paths.error.write_text(traceback.format_exc())
        raise
    if d.world > 1 and dist.is_initialized():
        # Wait until rank 0 has written its last checkpoint and logs, then tear the group down on
        # every rank together: a rank that exits while a peer's gloo connection is still open can
        # abort that peer ("terminate called without an active exception").
        dist.barrier()
        dist.destroy_process_group()
    return result


def _train(cfg: TrainConfig, paths: RunPaths, d: Dist, stop: StopFlag) -> dict:
    cfg = resolve_config(cfg)
    check_run_dir(paths, cfg)
    git = git_info()
    if d.is_main:
        paths.root.mkdir(parents=True, exist_ok=True)
        paths.error.unlink(missing_ok=True)
        clean_temp(paths)
        if not paths.config.exists():  # atomic: other ranks read it in check_run_dir
            atomic_write_text(paths.config, json.dumps({"config": to_dict(cfg), "git": git, "world_size": d.world,
                                                       "device": d.device.type, "torch": torch.__version__}, indent=1))

    # Each rank its own seed offset; the data order comes from the sampler's (seed, epoch), not these.
    random.seed(cfg.seed + d.rank)
    np.random.seed(cfg.seed + d.rank)
    torch.manual_seed(cfg.seed + d.rank)

    train_set = ClipDataset(cfg.data, "train", cfg.artists, as_blocks=True)
    dev_set = ClipDataset(cfg.data, "dev", cfg.artists, as_blocks=True)
    if len(train_set) == 0:
        raise DatasetError(f"{cfg.data}: the train split has no clips for artists {cfg.artists or 'all'}")
    if cfg.batch_size % d.world:
        raise ConfigError(f"batch_size: {cfg.batch_size} is not divisible by the world size {d.world}")
    local_bs = cfg.batch_size // d.world
    sampler = ResumableSampler(train_set, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed, drop_last=True)
    loader_kw = dict(num_workers=cfg.workers, pin_memory=d.device.type == "cuda", persistent_workers=cfg.workers > 0,
                     collate_fn=batch_collate)
    train_loader = DataLoader(train_set, batch_size=local_bs, sampler=sampler, drop_last=True, **loader_kw)
    # Dev: every clip exactly once across ranks (DistributedSampler would pad with repeats).
    dev_loader = DataLoader(torch.utils.data.Subset(dev_set, range(d.rank, len(dev_set), d.world)),
                            batch_size=max(local_bs, 1), shuffle=False, **loader_kw)
    steps_per_epoch = len(sampler) // local_bs
    if cfg.limit_train_batches:
        steps_per_epoch = min(steps_per_epoch, cfg.limit_train_batches)
    if steps_per_epoch == 0:
        raise DatasetError(f"{cfg.data}: {len(train_set)} train clips give no full batch of {cfg.batch_size}")
    shift, scale = train_set.normalizer(d.device)

    def to_xy(blk):
        """Raw (B, C + 1, D) windows -> normalized x = blocks 0..C-1, y = blocks 1..C (views)."""
        blk = blk.to(d.device, non_blocking=True)
        blk = torch.addcmul(shift, blk, scale, out=blk)  # (raw - mean) / std in one pass, in place
        return blk[:, :-1], blk[:, 1:]

    model = GRUVModel(cfg.feature_dim, cfg.hidden, cfg.cell, cfg.layers).to(d.device)
    optimizer = make_optimizer(cfg, model.parameters())

    # Resume from the run directory, never from a flag: a requeued job just starts again.
    epoch, step, pos, best_dev, history = 0, 0, 0, math.inf, []
    loss_sum, loss_n, train_time = 0.0, 0, 0.0
    state, ckpt_path = load_latest(paths, map_location=d.device)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, step, pos = state["epoch"], state["step"], state["pos"]
        best_dev, history = state["best_dev"], state["history"]
        loss_sum, loss_n, train_time = state["loss_sum"], state["loss_n"], state["train_time"]
        if d.rank == 0:
            _set_rng_state(state["rng"])
        if d.is_main:
            print(f"resumed from {ckpt_path} (epoch {epoch}, step {step}, batch {pos} of the epoch)", flush=True)
    if d.is_main:  # metrics.jsonl is rebuilt from the checkpoint: no line for work that was lost
        paths.metrics.write_text("".join(json.dumps(h) + "\n" for h in history))

    ddp = DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None) if d.world > 1 else model
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if (d.device.type == "cuda" and cfg.amp) else torch.autocast("cpu", enabled=False)

    writer = None
    if d.is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(paths.tb), purge_step=step + 1 if state is not None else None)
        _write_hparams(writer, cfg)

    def checkpoint(is_best=False):
        """Save the full training state; only called between steps, on rank 0."""
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise TrainingError(f"non-finite weights in {', '.join(bad[:3])}; not checkpointing. "
                                f"The last good checkpoint stays in {paths.ckpt_dir}")
        st = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
              "pos": pos, "best_dev": best_dev, "history": history, "loss_sum": loss_sum, "loss_n": loss_n,
              "train_time": train_time, "rng": _rng_state(), "config": to_dict(cfg), "git": git,
              "world_size": d.world}
        save_checkpoint(paths, st, step, cfg.keep_last, is_best)

    def stop_agreed() -> bool:
        # Any rank's signal stops every rank at the same step; otherwise DDP would deadlock.
        if d.world == 1:
            return stop.requested
        t = torch.tensor([float(stop.requested)], device=d.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    acc = {"loss": torch.zeros((), device=d.device), "n": 0}

    def flush_loss() -> None:
        """Move the on-device loss sum to the host: the one sync per log interval, and where a
        NaN is caught before anything is saved."""
        nonlocal loss_sum, loss_n
        if acc["n"] == 0:
            return
        v = acc["loss"].item()
        if not math.isfinite(v):
            raise TrainingError(f"loss became {v} near step {step} (epoch {epoch + 1}); stopping. "
                                f"The last good checkpoint stays in {paths.ckpt_dir}")
        if writer:
            writer.add_scalar("loss/train_step", v / acc["n"], step)
        loss_sum, loss_n = loss_sum + v, loss_n + acc["n"]
        acc["loss"].zero_()
        acc["n"] = 0

    last_ckpt = time.time()
    while epoch < cfg.epochs:
        sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank and on resume
        sampler.skip = pos * local_bs
        model.train()
        t0, epoch_time, frames = time.time(), 0.0, 0  # epoch_time: training only, checkpoint writes excluded
        grad_norm = torch.zeros((), device=d.device)
        for blk in train_loader:
            if pos >= steps_per_epoch:
                break
            if stop_agreed():
                flush_loss()
                train_time += time.time() - t0
                if d.is_main:
                    checkpoint()
                    writer.close()
                return {"status": "stopped", "epoch": epoch, "step": step, "pos": pos}
            x, y = to_xy(blk)
            with amp:
                pred, _ = ddp(x)
            loss = torch.nn.functional.mse_loss(pred.float(), y)  # eq. 1, in normalized units
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
            optimizer.step()
            acc["loss"] += loss.detach()
            acc["n"] += 1
            step, pos, frames = step + 1, pos + 1, frames + x.shape[0] * x.shape[1] * d.world
            if step % cfg.log_every_steps == 0:
                flush_loss()
            if d.is_main and time.time() - last_ckpt > cfg.ckpt_every_min * 60 and pos < steps_per_epoch:
                flush_loss()
                train_time, epoch_time = train_time + time.time() - t0, epoch_time + time.time() - t0
                checkpoint()
                last_ckpt = t0 = time.time()
        flush_loss()
        train_time, epoch_time = train_time + time.time() - t0, epoch_time + time.time() - t0

        dev_loss = evaluate(model, dev_loader, d, amp, to_xy)  # unwrapped: ranks may see unequal batch counts
        train_loss = _mean_across_ranks(loss_sum / max(loss_n, 1), d)
        epoch, pos = epoch + 1, 0
        is_best = dev_loss < best_dev
        best_dev = min(best_dev, dev_loss)
        line = {"epoch": epoch, "step": step, "train_loss": train_loss, "dev_loss": dev_loss, "best_dev_loss": best_dev,
                "lr": optimizer.param_groups[0]["lr"], "grad_norm": float(grad_norm), "frames_per_s": frames / max(epoch_time, 1e-9),
                "epoch_s": epoch_time, "train_time_s": train_time, "wall": time.time(), "peak_mem_mb": _peak_mem_mb(d.device)}
        history.append(line)
        loss_sum, loss_n = 0.0, 0
        if d.is_main:
            if epoch % cfg.ckpt_every_epochs == 0 or epoch == cfg.epochs or is_best:
                checkpoint(is_best)
                last_ckpt = time.time()
            with open(paths.metrics, "a") as f:  # after the checkpoint: a line is never ahead of the state
                f.write(json.dumps(line) + "\n")
            # One x axis (the global step) for every tag, so purge_step on resume cuts them all.
            for k in ("train_loss", "dev_loss", "best_dev_loss"):
                writer.add_scalar(f"loss/{k[:-5]}", line[k], step)
            writer.add_scalar("opt/lr", line["lr"], step)
            writer.add_scalar("opt/grad_norm", line["grad_norm"], step)
            writer.add_scalar("perf/frames_per_s", line["frames_per_s"], step)
            writer.add_scalar("perf/peak_mem_mb", line["peak_mem_mb"], step)
            writer.add_scalar("epoch", epoch, step)
            writer.flush()
            if cfg.gen_seconds > 0 and (epoch == cfg.epochs or (cfg.gen_every_epochs and epoch % cfg.gen_every_epochs == 0)):
                from .generate import log_to_tensorboard
                log_to_tensorboard(writer, model, cfg, step, d.device)
            print(f"epoch {epoch}/{cfg.epochs} train {train_loss:.5f} dev {dev_loss:.5f} "
                  f"({line['frames_per_s']:.0f} frames/s)", flush=True)

    final = history[-1] if history else {}
    if d.is_main:
        atomic_write_text(paths.done, json.dumps({"final": final, "best_dev_loss": best_dev}, indent=1))
        writer.close()
    return {"status": "done", **final}


@torch.no_grad()
def evaluate(model, loader, d: Dist, amp, to_xy) -> float:
    """Mean L2 loss over every dev clip (each counted once across ranks)."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=d.device)
    for blk in loader:
        x, y = to_xy(blk)
        with amp:
            pred, _ = model(x)
        total[0] += torch.nn.functional.mse_loss(pred.float(), y, reduction="sum").double() / y[0].numel()
        total[1] += x.shape[0]
    if d.world > 1:
        dist.all_reduce(total)
    model.train()
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")


def _mean_across_ranks(v: float, d: Dist) -> float:
    if d.world == 1:
        return v
    t = torch.tensor([v], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return float(t.item()) / d.world


def _write_hparams(writer, cfg: TrainConfig) -> None:
    """Write the run's hparams into its own event file, so the HParams dashboard lists one row
    per run (add_hparams would make a separate sub-run) with the loss tags as its metrics."""
    from torch.utils.tensorboard.summary import hparams
    hp = {k: (",".join(v) if isinstance(v, list) else v) for k, v in to_dict(cfg).items()
          if k not in RUNTIME_KEYS and v is not None}
    exp, ssi, sei = hparams(hp, {"loss/dev": 0, "loss/train": 0, "loss/best_dev": 0})
    for s in (exp, ssi, sei):
        writer.file_writer.add_summary(s)
