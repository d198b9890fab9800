"""Training: one loop, read top to bottom (``_train``), and the ``Trainer`` it drives.

Runs unchanged as one process, under torchrun, or under srun (rank and world size from the
standard environment; see ``distributed``). Resumes automatically from the newest loadable
checkpoint in RUN_DIR: a requeued job just starts again. Only rank 0 writes anything (the
``Checkpointer`` and the ``RunLogger`` know which rank they are on; the loop does not).

The pieces live beside it: ``jobcontrol`` (stop signals), ``rundir`` (the run directory's checks,
records and lock), ``data`` (sampler and loaders), ``runlog`` (metrics, TensorBoard, heartbeat),
``optim`` (the optimizer registry), ``state`` (``TrainState``), ``step`` (one training step).
``StopFlag``, ``EXIT_STOPPED``, ``TrainState``, ``ResumableSampler``, ``build_data`` and
``make_optimizer`` are importable from here too.
"""
from __future__ import annotations

import dataclasses
import errno
import math
import os
import time
import traceback
import warnings
import weakref
from pathlib import Path
from typing import Sequence

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from gruv_hpc import jobenv
from gruv_hpc.config import ConfigError, to_dict
from gruv_hpc.dataset.clips import DatasetHandle
from gruv_hpc.dataset.manifest import dataset_id
from gruv_hpc.errors import TrainingError
from gruv_hpc.lock import LockedError
from gruv_hpc.paths import RunPaths
from gruv_hpc.training import distributed
from gruv_hpc.training.checkpoint import (RANK, Checkpointer, derive_seed, git_info, pack, rng_state, seed_everything,
                                          set_rng_state, unpack)
from gruv_hpc.training.config import TrainConfig, command_line, resolve
from gruv_hpc.training.data import ResumableSampler, build_data  # noqa: F401 (ResumableSampler: re-exported)
from gruv_hpc.training.distributed import Dist
from gruv_hpc.training.hooks import EpochEnd, EpochHook, run_hooks
from gruv_hpc.training.jobcontrol import EXIT_STOPPED, StopFlag  # noqa: F401 (EXIT_STOPPED: re-exported)
from gruv_hpc.training.model import GRUVModel
from gruv_hpc.training.optim import make_optimizer
from gruv_hpc.training.rundir import (check_orphan_checkpoints, check_run_dir, lock_run_dir, record_error,
                                      record_start, reserve_error_space)
from gruv_hpc.training.runlog import RunLogger, peak_mem_mb
from gruv_hpc.training.schedule import lr_at
from gruv_hpc.training.state import TrainState
from gruv_hpc.training.step import (TrainStep, conform_optimizer, optimizer_flags, set_lr, step_graph_mode,
                                    wants_capturable)


# ---------------------------------------------------------------------------------------------
# The trainer: model, optimizer, data and state, and one epoch of training

class Trainer:
    def __init__(self, cfg: TrainConfig, paths: RunPaths, d: Dist, stop: StopFlag, dataset: DatasetHandle,
                 git: dict | None = None):
        self.cfg, self.paths, self.d, self.stop = cfg, paths, d, stop
        self.data = build_data(cfg, d, dataset)
        try:
            self.model = GRUVModel.from_config(cfg).to(d.device)
        except (RuntimeError, MemoryError) as e:  # e.g. hidden=100000000: weights beyond any memory
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"hidden={cfg.hidden}, layers={cfg.layers}: cannot allocate the model on {d.device} "
                              f"({msg[:200]})") from e
        # The step: replayed from one CUDA graph or eager (training/step.py); the graph on CUDA
        # wants the optimizer in its capturable form.
        self.step_mode = step_graph_mode(cfg.step_graph, d.device, d.world, cfg.optimizer, cfg.lr_schedule)
        self.optimizer = make_optimizer(cfg, self.model.parameters(), capturable=wants_capturable(self.step_mode, d.device))
        self._optimizer_flags = optimizer_flags(self.optimizer)
        self.lr_now = cfg.lr  # the lr of the last update, as a number (a capturable optimizer's is a device tensor)
        self.ddp = DDP(self.model, device_ids=[d.device.index] if d.device.type == "cuda" else None) \
            if d.world > 1 else self.model
        self.train_step = TrainStep(self.model, self.optimizer, mode=self.step_mode, device=d.device,
                                    grad_clip=cfg.grad_clip, amp=cfg.amp, full_batch=self.data.local_bs, forward=self.ddp,
                                    free=cfg.rollout_frames, free_noise=cfg.rollout_noise)
        if self.step_mode == "graph" and d.is_main:
            what = (f"the whole training step replayed from one CUDA graph on {d.device}" if d.device.type == "cuda"
                    else "the graph path's buffers, without a capture (the CPU)")
            print(f"step: {what} (step_graph={cfg.step_graph}; eager turns it off)", flush=True)
        self.amp = torch.autocast("cuda", dtype=torch.bfloat16) if (d.device.type == "cuda" and cfg.amp) \
            else torch.autocast("cpu", enabled=False)
        self.state = TrainState()
        self.ckpt = Checkpointer(paths, cfg.ckpt_every_epochs, cfg.ckpt_every_min, cfg.keep_last, enabled=d.is_main)
        self.log = RunLogger(paths, cfg, enabled=d.is_main)
        self.log.effective["amp"] = bool(cfg.amp and d.device.type == "cuda")  # bf16 autocast runs on CUDA only
        self.git = git
        # What a checkpoint holds, by name: each part has state_dict/load_state_dict. New state is
        # one more entry here (and a format version where old checkpoints need upgrading).
        self.parts = {"model": self.model, "optimizer": self.optimizer, "train": self.state,
                      "ranks": _RankParts(self)}
        # The train loss since the last flush, summed on the device: no sync per step.
        # float64: sums of float32 losses are then exact, so an epoch's train loss does not depend on
        # where a stop and resume split the log interval's sums
        self._loss = torch.zeros((), dtype=torch.float64, device=d.device)
        self._loss_n = 0

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The whole training state: every registered part, and what the run was (its config,
        git origin and world size). Collective: every rank's own part (its loss sums and RNG
        states) is gathered, so a resumed multi-rank run continues exactly."""
        return pack(self.parts, {"world_size": self.d.world, "config": to_dict(self.cfg), "git": self.git})

    def load_state_dict(self, sd: dict) -> None:
        unpack(self.parts, sd)
        # this process's device flags, not the checkpoint's; the lr as it was saved (a scheduled
        # one is set again before the next step), a constant one exactly cfg.lr: a capturable
        # optimizer saved it as a float32 tensor, 0.0010000000474974513 for 1e-3
        self.lr_now = conform_optimizer(self.optimizer, self._optimizer_flags)
        if self.cfg.lr_schedule == "constant":
            self.lr_now = self.cfg.lr
            set_lr(self.optimizer, self.lr_now)

    def resume(self) -> Path | None:
        """Load the newest loadable checkpoint of the run directory, as ``cfg.resume`` says."""
        restarts = jobenv.restart_count()
        if self.cfg.resume == "never" and restarts > 0:
            # A requeued job (preempted, timed out, a node failure) must go on: resume=never is
            # the first start's policy, or every requeue would throw away what the last one did.
            print(f"resume=never applies to the first start only; this is restart {restarts} of Slurm job "
                  f"{jobenv.job_id()}: resuming", flush=True)
        elif self.cfg.resume == "never":
            moved = self.ckpt.discard()
            if moved:
                print(f"resume=never: the run starts over; its old files are in {moved}", flush=True)
            return None
        sd, path = self.ckpt.load_latest(map_location=self.d.device)
        if sd is not None:
            self.load_state_dict(sd)
            return path
        unreadable = self.ckpt.unreadable()
        if unreadable or self.cfg.resume == "require":
            # Starting over silently would throw away the run's history (and metrics.jsonl with it).
            why = (f"none of its {len(unreadable)} checkpoint(s) loads (set aside in {self.paths.unreadable})"
                   if unreadable else "it has no checkpoint, and resume=require")
            raise TrainingError(f"{self.paths.root}: {why}. To start this run over, start it once by hand: "
                                f"{command_line(self.cfg, self.paths.root, resume='never')} (its old files are "
                                "moved aside, not deleted), or use a new run directory")
        return None

    def save(self, is_best: bool = False) -> None:
        """Checkpoint now (between two steps). Collective; rank 0 writes."""
        bad = [n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise TrainingError(f"non-finite weights in {', '.join(bad[:3])}; not checkpointing. "
                                f"The last good checkpoint stays in {self.paths.ckpt_dir}")
        self.ckpt.save(self.state_dict(), self.state.step, is_best)

    # -- training ----------------------------------------------------------------------------
    def _flush_loss(self) -> None:
        """Move the on-device loss sum to the host: the one sync per log interval, and where a
        NaN is caught before anything is saved."""
        if self._loss_n == 0:
            return
        v = self._loss.item()
        if not math.isfinite(v):
            bad = self.data.train_set.scan_bad_values() if self.data.train_set is not None else []
            why = (f"the data is damaged: {'; '.join(bad)}" if bad else
                   "the train data holds no non-finite or extreme values, so the model diverged (try a lower lr "
                   "or grad_clip)")
            raise TrainingError(f"loss became {v} near step {self.state.step} (epoch {self.state.epoch + 1}); "
                                f"stopping; {why}. The last good checkpoint stays in {self.paths.ckpt_dir}")
        self.log.train_loss(v / self._loss_n, self.state.step)
        self.log.heartbeat(self.state)
        self.state.loss_sum += v
        self.state.loss_n += self._loss_n
        self._loss.zero_()
        self._loss_n = 0

    def _check_point(self) -> tuple[bool, bool]:
        """(stop now, checkpoint now). One process checks every step. Several agree only once per
        log interval (one small all-reduce): any rank's signal stops every rank at the same step,
        otherwise DDP would deadlock, and rank 0's clock decides the mid-epoch checkpoint."""
        stop, due = self.stop.requested, self.d.is_main and self.ckpt.due_mid_epoch()
        if self.d.world == 1:
            return stop, due
        if self.state.step % self.cfg.log_every_steps:
            return False, False
        return tuple(self.d.any(stop, due))

    def train_epoch(self) -> dict | None:
        """Train the rest of the current epoch. Returns its stats, or None when a stop was
        requested: the state is then at a step boundary, ready to be saved."""
        cfg, d, st, data = self.cfg, self.d, self.state, self.data
        data.sampler.set_epoch(st.epoch)  # a new shuffle each epoch, the same on every rank and on resume
        data.sampler.skip = st.pos * data.local_bs
        self.model.train()
        t0, epoch_time, frames = time.time(), 0.0, 0
        grad_norm = torch.zeros((), device=d.device)

        def tick():  # training time only: checkpoint writes and evaluation are left out
            nonlocal t0, epoch_time
            now = time.time()
            st.train_time, epoch_time, t0 = st.train_time + now - t0, epoch_time + now - t0, now

        for blk in data.train_loader:
            if st.pos >= data.steps_per_epoch:
                break
            stop, save = self._check_point()
            if stop:
                tick()
                return None
            if save:
                tick()
                self.save()
                t0 = time.time()
            win, y = data.to_window(blk, d.device)
            inp, drop_last = self._inputs(win)  # the data's window itself unless an option against loops is on
            if cfg.lr_schedule != "constant":  # constant leaves the lr as built: the paper's step, untouched
                self.lr_now = lr_at(cfg, st.step, data.steps_per_epoch)  # a pure function of the checkpointed step
                set_lr(self.optimizer, self.lr_now)
            # rollout_noise's draws: from a generator of (seed, rank, step), another stream than _inputs'
            free_kw = {"generator": self._generator(stream=1)} if cfg.rollout_frames and cfg.rollout_noise > 0 else {}
            loss, norm = self.train_step(inp, y, drop_last, **free_kw)  # forward, backward, clip, update: one graph or eager
            if norm is not None:
                grad_norm = norm
            elif st.pos + 1 == data.steps_per_epoch:  # logged once an epoch: no norm over every gradient per step
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
            self._loss += loss.detach()
            self._loss_n += 1
            st.step, st.pos, frames = st.step + 1, st.pos + 1, frames + y.shape[0] * y.shape[1] * d.world
            if st.step % cfg.log_every_steps == 0:
                self._flush_loss()
        self._flush_loss()
        tick()
        return {"grad_norm": float(grad_norm), "frames_per_s": frames / max(epoch_time, 1e-9), "epoch_s": epoch_time}

    # -- options against generation loops (docs/generation.md) --------------------------------
    def own_input_prob(self) -> float:
        """Scheduled sampling's probability at this point of training: own_input_prob, ramped up
        linearly over own_input_ramp_epochs (a function of the step, so a resumed run agrees)."""
        cfg = self.cfg
        if cfg.own_input_ramp_epochs <= 0:
            return cfg.own_input_prob
        done = self.state.epoch + self.state.pos / self.data.steps_per_epoch
        return cfg.own_input_prob * min(1.0, done / cfg.own_input_ramp_epochs)

    def _generator(self, stream: int = 0) -> torch.Generator:
        """A generator seeded by (seed, rank, step) alone (and ``stream``, for draws of another
        purpose): the noise and the choices of a step are the same on a resumed run, whatever else
        drew random numbers before it."""
        import numpy as np
        key = [self.cfg.seed, self.d.rank, self.state.step] + ([stream] if stream else [])
        seed = int(np.random.SeedSequence(key).generate_state(1)[0])
        return torch.Generator(device=self.d.device).manual_seed(seed)

    @torch.no_grad()
    def _inputs(self, win: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The step's model input and whether the model drops its last frame (``drop_last``): the
        data's window (frames 0..C of each clip, the model reading 0..C-1) when both options are
        off, untouched and with no random number drawn (the paper's method, bitwise); else the
        inputs x (frames 0..C-1) as the options make them. The targets are never changed.

        own_input_prob p: each input frame t >= 1 is, with probability p, the model's own
        prediction of frame t from frames 0..t-1 instead of the data. The predictions come from
        one teacher-forced pass without gradients over the clip, and the step then trains on the
        mixture: the parallel form of scheduled sampling (Duckworth et al. 2019), one extra forward
        pass a step instead of C sequential ones. input_noise sigma: Gaussian noise of that sigma
        is then added to every input frame."""
        cfg = self.cfg
        p = self.own_input_prob() if cfg.own_input_prob > 0 else 0.0
        if p <= 0 and cfg.input_noise <= 0:
            return win, True
        x = win[:, :-1]
        g = self._generator()
        if p > 0:
            with self.amp:
                own, _ = self.model(x)
            use = torch.rand(x.shape[0], x.shape[1] - 1, 1, device=x.device, generator=g) < p
            x = torch.cat([x[:, :1], torch.where(use, own[:, :-1].float(), x[:, 1:])], dim=1)
        if cfg.input_noise > 0:
            x = x + cfg.input_noise * torch.randn(x.shape, device=x.device, generator=g)
        return x, False

    @torch.no_grad()
    def evaluate(self) -> tuple[float, dict[str, float]]:
        """Mean L2 loss over every dev clip (each counted once across ranks), and the same per
        artist ({artist: loss}, artists with dev clips only). Runs the unwrapped model: ranks may
        see unequal batch counts, which DDP's forward would wait on. Draws no random numbers, and
        the per-artist sums ride in the one all-reduce the total needs."""
        self.model.eval()
        artists = self.data.dev_set.artists
        n_a = len(artists)
        # [total loss, clips, loss per artist (n_a), clips per artist (n_a)]
        total = torch.zeros(2 + 2 * n_a, dtype=torch.float64, device=self.d.device)
        seen = 0
        for blk in self.data.dev_loader:
            win, y = self.data.to_window(blk, self.d.device)
            with self.amp:
                pred, _ = self.model(win, drop_last=True)
            total[0] += torch.nn.functional.mse_loss(pred.float(), y, reduction="sum").double() / y[0].numel()
            total[1] += y.shape[0]
            per_clip = (pred.float() - y).square().flatten(1).sum(1).double() / y[0].numel()
            who = self.data.dev_artist[seen: seen + y.shape[0]]
            seen += y.shape[0]
            total[2: 2 + n_a].index_add_(0, who, per_clip)
            total[2 + n_a:].index_add_(0, who, torch.ones_like(per_clip))
        self.d.all_reduce_(total)
        self.model.train()
        t = total.tolist()
        by_artist = {a: t[2 + i] / t[2 + n_a + i] for i, a in enumerate(artists) if t[2 + n_a + i] > 0}
        return (t[0] / t[1] if t[1] > 0 else float("nan")), by_artist

    def end_epoch(self, stats: dict, dev_loss: float, dev_by_artist: dict | None = None) -> tuple[dict, bool]:
        """Close the epoch in the state; returns its metrics line and whether it is the best on dev."""
        st = self.state
        train_loss = self.d.mean(st.loss_sum / max(st.loss_n, 1))
        st.epoch, st.pos, st.loss_sum, st.loss_n = st.epoch + 1, 0, 0.0, 0
        is_best = dev_loss < st.best_dev
        st.best_dev = min(st.best_dev, dev_loss)
        line = {"epoch": st.epoch, "step": st.step, "train_loss": train_loss, "dev_loss": dev_loss,
                "best_dev_loss": st.best_dev, "dev_loss_by_artist": dev_by_artist or {},
                "lr": self.lr_now, **stats,
                "train_time_s": st.train_time, "wall": time.time(), "peak_mem_mb": peak_mem_mb(self.d.device)}
        st.history.append(line)
        return line, is_best


class _RankParts:
    """Every rank's own state (its loss sums since the last epoch and its RNG states), gathered
    into a list in a checkpoint; on load each rank takes its own entry."""

    def __init__(self, trainer: "Trainer"):
        # A proxy, not the trainer: a trainer -> parts -> trainer cycle would keep the trainer, and
        # with it DDP's reducer and its hold on the process group, alive until the cyclic collector
        # ran, or until interpreter exit, where gloo's threads then die mid-finalization
        # ("terminate called without an active exception", seen once on rank 1 under srun).
        self.t = weakref.proxy(trainer)

    def state_dict(self) -> list:
        # The loss summed on the device since the last log flush goes in as it is, not flushed
        # into loss_sum: a resumed run then groups its float32 sums exactly as an uninterrupted
        # one does, and logs the same train losses to the last bit.
        t = self.t
        pending = float(t._loss.item()) if t._loss_n else 0.0
        if not math.isfinite(pending):
            t._flush_loss()  # raises, naming the step (and any damaged shard)
        return t.d.gather({**t.state.rank_state_dict(), "pending_loss": pending, "pending_n": t._loss_n,
                           "rng": rng_state()})

    def load_state_dict(self, ranks: list) -> None:
        d, st = self.t.d, self.t.state
        mine = ranks[d.rank] if len(ranks) == d.world else None
        if mine is None:
            warnings.warn(f"the checkpoint was written by {len(ranks)} ranks, this run has {d.world}: "
                          "per-rank loss sums and RNG states start afresh", stacklevel=2)
            return
        st.load_rank_state_dict(mine)
        self.t._loss.fill_(mine.get("pending_loss", 0.0))  # (checkpoints before format 3 flushed it)
        self.t._loss_n = int(mine.get("pending_n", 0))
        set_rng_state(mine["rng"])


# ---------------------------------------------------------------------------------------------
# The run

_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def main(cfg: TrainConfig, run_dir: str | Path, stop: StopFlag | None = None, hooks: Sequence[EpochHook] = ()) -> dict:
    """Train (or resume) the run in ``run_dir``; ``hooks`` run at each epoch's end (training/hooks.py:
    the entry point builds them, e.g. generation's TensorBoard sampler). Returns a status dict:
    {"status": "done"|"stopped", "epoch": ..., ...}. Raises on errors (and records them in error.txt)."""
    paths = RunPaths(run_dir)
    if paths.root.exists() and not paths.root.is_dir():
        raise ConfigError(f"run directory {paths.root}: exists and is not a directory")
    is_main = int(os.environ.get("RANK", "0")) == 0
    d = lock = None
    try:
        if not cfg.data:
            raise ConfigError("data: no dataset given (gruv train --data DATA_DIR, or data=... )")
        cfg = dataclasses.replace(cfg, data=str(Path(cfg.data).expanduser().resolve()))  # jobs run from elsewhere
        dataset = DatasetHandle(cfg.data, cfg.artists, std_floor=cfg.std_floor)  # the one read of the manifest and stats
        world = int(os.environ.get("WORLD_SIZE", "1"))
        cfg = resolve(cfg, dataset.manifest, world, gpus=torch.cuda.device_count())
        d = distributed.setup(cfg.device, tf32=cfg.amp)
        lock = lock_run_dir(paths, d)
        result = _train(cfg, dataset, paths, d, stop or StopFlag(), tuple(hooks))
    except LockedError:
        raise  # the run directory is another process's: write nothing into it
    except BaseException as e:
        if is_main and not isinstance(e, KeyboardInterrupt):
            try:
                paths.root.mkdir(parents=True, exist_ok=True)
            except OSError:
                pass
            record_error(paths, traceback.format_exc())
        if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
            raise TrainingError(f"cannot write {e.filename or paths.root}: {e.strerror}. The last good "
                                f"checkpoint stays in {paths.ckpt_dir}; the reason is in {paths.error}") from e
        raise
    finally:
        if lock:
            lock.release()
    distributed.teardown(d)
    return result


def _train(cfg: TrainConfig, dataset: DatasetHandle, paths: RunPaths, d: Dist, stop: StopFlag,
           hooks: tuple = ()) -> dict:
    origin = {"id": dataset_id(dataset.manifest), "path": cfg.data}
    old = check_run_dir(paths, cfg, origin)
    if old is None and cfg.resume != "never" and paths.step_ckpts():
        check_orphan_checkpoints(paths, cfg)
    git = git_info() if d.is_main else None  # saved by rank 0 only
    if d.is_main:
        paths.error.unlink(missing_ok=True)
        done = paths.done_epochs()
        if done is not None and done < cfg.epochs:
            paths.done.unlink()  # finished an earlier, lower target: it is not done with this one
        reserve_error_space(paths)
        record_start(paths, cfg, origin, old, d, git)
    # Each rank its own stream of (seed, rank); the data order comes from the sampler's (seed, epoch), not these.
    seed_everything(derive_seed(cfg.seed, RANK, d.rank))
    t = Trainer(cfg, paths, d, stop, dataset, git)
    t.ckpt.clean_temp()
    resumed_from = t.resume()  # from the run directory, never from a flag
    t.log.start(t.state, resumed_from)
    st = t.state
    try:
        while st.epoch < cfg.epochs:
            stats = t.train_epoch()
            if stats is None:  # stopped on request, between two steps: save, and let the caller requeue
                t.save()
                t.log.heartbeat(st, force=True)
                return {"status": "stopped", "signal": stop.signal, "epoch": st.epoch, "step": st.step, "pos": st.pos}
            line, is_best = t.end_epoch(stats, *t.evaluate())
            if d.is_main and hooks:  # before the checkpoint: their numbers are in its history
                run_hooks(hooks, EpochEnd(st.epoch, cfg.epochs, t.model, cfg, d.device, t.data.dev_set, t.log.writer),
                          line)
            if t.ckpt.due_at_epoch_end(st.epoch, cfg.epochs, is_best):
                t.save(is_best)
            t.log.epoch(line)
            t.log.heartbeat(st, force=True)  # once an epoch whatever the rate limit: the last one is exact
        t.log.done(st)
        return {"status": "done", **(st.history[-1] if st.history else {})}
    finally:
        t.log.close()

