"""Training: one loop, read top to bottom (``_train``), and the pieces it is made of.

Runs unchanged as one process, under torchrun, or under srun (rank and world size from the
standard environment; see ``distributed``). Resumes automatically from the newest loadable
checkpoint in RUN_DIR: a requeued job just starts again. Only rank 0 writes anything (the
``Checkpointer`` and the ``RunLogger`` know which rank they are on; the loop does not).
"""
from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import resource
import signal
import time
import traceback
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

from gruv_hpc import jobenv
from gruv_hpc.training import distributed
from gruv_hpc.dataset import resident
from gruv_hpc.training.checkpoint import (DATA_ORDER, RANK, Checkpointer, derive_seed, git_info, pack, rng_state,
                                          seed_everything, set_rng_state, unpack)
from gruv_hpc.training.config import RUNTIME_KEYS, TrainConfig, available_cpus, resolve, resolve_workers
from gruv_hpc.config import ConfigError, diff, to_dict
from gruv_hpc.dataset.clips import ClipDataset, DatasetHandle, Normalizer, batch_collate
from gruv_hpc.training.distributed import Dist
from gruv_hpc.training.schedule import lr_at
from gruv_hpc.training.step import (TrainStep, conform_optimizer, optimizer_flags, set_lr, step_graph_mode,
                                    wants_capturable)
from gruv_hpc.errors import TrainingError
from gruv_hpc.fsio import atomic_write_json, atomic_write_text, dumps, temp_name
from gruv_hpc.lock import Lock, LockedError
from gruv_hpc.dataset.manifest import DatasetError, dataset_id
from gruv_hpc.training.model import GRUVModel
from gruv_hpc.paths import RunPaths


# Exit status of a run stopped by a signal after writing its checkpoint: sysexits' EX_TEMPFAIL,
# "temporary failure, try again" (running the same command again resumes).
EXIT_STOPPED = 75


def stop_line(res: dict, requeue: bool) -> str:
    """What a stopped run says in its own log (stdout: the job's log file), from ``main``'s
    "stopped" result: which signal, where in training, the checkpoint written, and whether a
    requeue follows (the preemption signal under submitit) or the process just exits."""
    sig = res.get("signal") or "request"
    sig = sig[3:] if sig.startswith("SIG") else sig
    return (f"stop signal {sig} at epoch {res['epoch'] + 1} batch {res['pos']}: checkpoint step {res['step']} written, "
            + ("exiting for requeue" if requeue else "exiting"))


def preempt_signal() -> signal.Signals:
    """The preemption signal: USR2, or what SUBMITIT_PREEMPT_SIGNAL names (as submitit reads it)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    sig = getattr(signal, "SIG" + name, None)
    if sig is None:
        raise ConfigError(f"SUBMITIT_PREEMPT_SIGNAL={name!r} is not a signal name (e.g. USR2)")
    return sig


def stop_signals() -> list[signal.Signals]:
    """What a job is told to stop with: TERM (scancel, srun, torchrun, kill), INT (Ctrl-C), HUP
    (a closed terminal) and the preemption signal (Slurm's --signal, submitit's requeue)."""
    return list(dict.fromkeys([signal.SIGTERM, signal.SIGINT, signal.SIGHUP, preempt_signal()]))


class StopFlag:
    """Set from a signal handler; the loop checks it between optimizer steps, never inside one,
    so the checkpoint it then writes is always a consistent (model, optimizer, position) state.
    A second signal of the same kind is passed on to the handler that was there before (a second
    Ctrl-C aborts at once)."""

    def __init__(self):
        self.requested = False
        self.signal: str | None = None
        self._previous: dict = {}

    def request(self, signum=None, frame=None):
        if signum is not None and self.signal == signal.Signals(signum).name:
            previous = self._previous.get(signum, signal.SIG_DFL)
            signal.signal(signum, previous)
            if callable(previous):
                previous(signum, frame)
            else:
                os.kill(os.getpid(), signum)
            return
        self.requested = True
        self.signal = signal.Signals(signum).name if signum is not None else "request"

    def install(self, signals=None) -> "StopFlag":
        for sig in signals or stop_signals():
            self._previous[sig] = signal.signal(sig, self.request)
        return self


@dataclass
class TrainState:
    """Everything but the model and the optimizer that a resumed run needs to go on exactly as if
    it had never stopped. The one definition of the checkpoint's training state: ``state_dict``
    and ``load_state_dict`` follow the fields, so a new field is saved and restored by itself."""
    epoch: int = 0                 # epochs finished
    step: int = 0                  # optimizer steps taken
    pos: int = 0                   # batches of the current epoch taken
    best_dev: float = math.inf
    history: list = field(default_factory=list)  # one metrics line per finished epoch
    train_time: float = 0.0        # seconds of training steps (evaluation and checkpoint writes excluded)
    # This rank's own: every rank saves and restores its own values.
    loss_sum: float = 0.0          # train loss summed over this epoch's steps so far
    loss_n: int = 0

    PER_RANK = ("loss_sum", "loss_n")

    def state_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.PER_RANK}

    def rank_state_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.PER_RANK}

    def load_state_dict(self, shared: dict) -> None:
        for f in fields(self):
            if f.name not in self.PER_RANK:
                setattr(self, f.name, shared[f.name])

    def load_rank_state_dict(self, mine: dict) -> None:
        for k in self.PER_RANK:
            setattr(self, k, mine[k])


def make_optimizer(cfg: TrainConfig, params, capturable: bool = False):
    """The optimizer, with the fewest kernel launches its device allows. On CUDA: the multi-tensor
    (foreach) update, one launch per op for all parameters instead of one per parameter (torch's
    RMSprop has no fused kernel; Adam's fused one is one launch in all). On the CPU the
    per-parameter loop, as it always was (foreach is a GPU optimization there; the CPU runs the
    bit-for-bit same arithmetic it always did, which the bitwise-resume tests pin).

    ``capturable``: the form a step replayed from a CUDA graph needs (training/step.py): the step
    counter and the lr (a 0-dim tensor, which ``step.set_lr`` writes) on the device. The same
    update; torch's capturable RMSprop divides by -lr where the other multiplies by it, so the
    weights agree to float32 rounding, not bitwise, with the other form. SGD has no capturable
    form: its lr stays a number (a graph bakes it in, so only a constant lr: config.graph_unsupported)."""
    params = list(params)
    cuda = bool(params) and all(p.is_cuda for p in params)
    lr = torch.tensor(float(cfg.lr), dtype=torch.float32, device=params[0].device) \
        if capturable and cfg.optimizer != "sgd" else cfg.lr
    if cfg.optimizer == "rmsprop":
        # Keras' RMSprop (the original code's): rho 0.9, eps 1e-7. torch's alpha is rho.
        opt = torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7, foreach=cuda or capturable, capturable=capturable)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, capturable=capturable, **({"fused": True} if cuda else {"foreach": False}))
    else:
        return torch.optim.SGD(params, lr=lr, momentum=0.9, foreach=cuda)
    if capturable:  # its steps outside a capture (the warm-up, a partial batch) are meant: not worth torch's warning
        opt._warned_capturable_if_run_uncaptured = True
    return opt


# ---------------------------------------------------------------------------------------------
# Data

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


# ---------------------------------------------------------------------------------------------
# What a run reports

class RunLogger:
    """metrics.jsonl, TensorBoard, heartbeat.json and stdout. Rank 0 only: on other ranks every
    method does nothing."""

    # The heartbeat is rewritten at each log interval, but not more often than this: with a tiny
    # model a log interval can take milliseconds.
    HEARTBEAT_MIN_S = 1.0

    def __init__(self, paths: RunPaths, cfg: TrainConfig, enabled: bool):
        self.paths, self.cfg, self.enabled, self.writer = paths, cfg, enabled, None
        self._beat = 0.0
        self.effective: dict = {}  # config values as they take effect here (amp: on CUDA only), for HParams

    def start(self, state: TrainState, resumed_from: Path | None) -> None:
        if not self.enabled:
            return
        # metrics.jsonl is rebuilt from the checkpoint: no line for work that was lost.
        atomic_write_text(self.paths.metrics, "".join(dumps(h) + "\n" for h in state.history))
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(self.paths.tb), purge_step=state.step + 1 if resumed_from else None)
        _write_hparams(self.writer, self.cfg, self.effective)
        if resumed_from:
            # the epoch under way, 1-based, as the stop line names it
            print(f"resumed from {resumed_from} (epoch {state.epoch + 1}, step {state.step}, batch {state.pos} of the "
                  "epoch)", flush=True)
        restarts = jobenv.restart_count()
        if restarts:  # Slurm requeued this job (a preemption, a time limit, a node failure): say so in its own log
            print(f"resumed after requeue {restarts} from step {state.step}" if resumed_from else
                  f"restarted after requeue {restarts} with no checkpoint to resume from: training from step 0",
                  flush=True)
        self.heartbeat(state, force=True)

    def train_loss(self, loss: float, step: int) -> None:
        if self.enabled:
            self.writer.add_scalar("loss/train_step", loss, step)

    def heartbeat(self, state: TrainState, force: bool = False) -> None:
        """Rewrite heartbeat.json: when training was last seen alive, and where (the epoch under
        way, 1-based, and the batches done in it). ``gruv sweep status`` shows its age. Not fsynced
        (a lost heartbeat costs nothing; a checkpoint's write is the one that must survive), and a
        failed write never stops training: a full disk is reported by the next checkpoint."""
        now = time.time()
        if not self.enabled or (not force and now - self._beat < self.HEARTBEAT_MIN_S):
            return
        self._beat = now
        path = self.paths.heartbeat
        tmp = temp_name(path)
        try:
            tmp.write_text(dumps({"time": now, "step": state.step, "epoch": state.epoch + 1, "batch": state.pos,
                                  "epochs": self.cfg.epochs, "job": jobenv.task_job_id()}))
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)

    def epoch(self, line: dict, model, device, dev_set: ClipDataset) -> None:
        """Called after the epoch's checkpoint: a metrics line is never ahead of the saved state."""
        if not self.enabled:
            return
        cfg, w, step, epoch = self.cfg, self.writer, line["step"], line["epoch"]
        with open(self.paths.metrics, "a") as f:
            f.write(dumps(line) + "\n")
        # Per-epoch values on an epoch axis (step = epoch), so runs whose epochs take different
        # numbers of steps (artists with more or fewer clips, other batch sizes) line up; only
        # loss/train_step is on the optimizer-step axis. On resume, purge_step (the checkpoint's
        # step, never below its epoch) cuts nothing the checkpoint holds, and an epoch logged
        # again after a lost one replaces it (TensorBoard drops a tag's points from a step that
        # comes again). Each artist's dev loss has its own tag (and chart): losses of 105 and
        # 0.22 on one linear axis would flatten the smaller.
        for k in ("train_loss", "dev_loss", "best_dev_loss", "lr", "grad_norm", "frames_per_s", "peak_mem_mb"):
            w.add_scalar(f"epoch/{k}", line[k], epoch)
        for artist, v in line.get("dev_loss_by_artist", {}).items():
            w.add_scalar(f"epoch/dev_loss/{artist}", v, epoch)
        w.add_scalar("epoch/step", step, epoch)  # where the epoch ends on loss/train_step's axis
        w.flush()
        if cfg.gen_seconds > 0 and (epoch == cfg.epochs or (cfg.gen_every_epochs and epoch % cfg.gen_every_epochs == 0)):
            from gruv_hpc.generate import log_to_tensorboard
            log_to_tensorboard(w, model, cfg, epoch, device, dev_set)
        by = line.get("dev_loss_by_artist", {})
        each = f" ({', '.join(f'{a} {v:.5f}' for a, v in by.items())})" if len(by) > 1 else ""
        print(f"epoch {epoch}/{cfg.epochs} train {line['train_loss']:.5f} dev {line['dev_loss']:.5f}{each} "
              f"({line['frames_per_s']:.0f} frames/s)", flush=True)

    def done(self, state: TrainState) -> None:
        if self.enabled:
            atomic_write_json(self.paths.done, {"final": state.history[-1] if state.history else {},
                                                "best_dev_loss": state.best_dev})

    def close(self) -> None:
        if self.writer:
            self.writer.close()


# The HParams dashboard's metric columns: TensorBoard, given no experiment summary, makes one of
# every scalar tag of the runs (per-artist dev losses included) and shows each run's last value:
# epoch/best_dev_loss's last value is the best dev loss, epoch/dev_loss's the last one.
HPARAMS_METRICS = ("best_dev_loss", "dev_loss", "train_loss")


def _write_hparams(writer, cfg: TrainConfig, effective: dict | None = None) -> None:
    """Write the run's hparams into its own event file, so the HParams dashboard lists one row
    per run (add_hparams would make a separate sub-run). Only the session summaries are written,
    no experiment summary: TensorBoard then builds the experiment from every run's values and
    marks the hparams that differ between runs (the grid's axes) as differing."""
    from torch.utils.tensorboard.summary import hparams
    hp = {k: (",".join(v) if isinstance(v, list) else v) for k, v in {**to_dict(cfg), **(effective or {})}.items()
          if k not in RUNTIME_KEYS and v is not None}
    _, ssi, sei = hparams(hp, {f"epoch/{k}": 0 for k in HPARAMS_METRICS})
    for s in (ssi, sei):
        writer.file_writer.add_summary(s)


def _peak_mem_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# The trainer: model, optimizer, data and state, and one epoch of training

class Trainer:
    def __init__(self, cfg: TrainConfig, paths: RunPaths, d: Dist, stop: StopFlag, dataset: DatasetHandle,
                 git: dict | None = None):
        self.cfg, self.paths, self.d, self.stop = cfg, paths, d, stop
        self.data = build_data(cfg, d, dataset)
        try:
            self.model = GRUVModel(cfg.feature_dim, cfg.hidden, cfg.cell, cfg.layers).to(d.device)
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
                                    grad_clip=cfg.grad_clip, amp=cfg.amp, full_batch=self.data.local_bs, forward=self.ddp)
        if self.step_mode == "graph" and d.is_main:
            what = (f"the whole training step replayed from one CUDA graph on {d.device}" if d.device.type == "cuda"
                    else "the graph path's buffers, without a capture (the CPU)")
            _log(f"step: {what} (step_graph={cfg.step_graph}; eager turns it off)")
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
                                f"gruv train --run-dir {self.paths.root} resume=never (its old files are moved "
                                "aside, not deleted), or use a new run directory")
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
            loss, norm = self.train_step(inp, y, drop_last)  # forward, backward, clip, update: one graph or eager
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

    def _generator(self) -> torch.Generator:
        """A generator seeded by (seed, rank, step) alone: the noise and the choices of a step are
        the same on a resumed run, whatever else drew random numbers before it."""
        import numpy as np
        seed = int(np.random.SeedSequence([self.cfg.seed, self.d.rank, self.state.step]).generate_state(1)[0])
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
                "train_time_s": st.train_time, "wall": time.time(), "peak_mem_mb": _peak_mem_mb(self.d.device)}
        st.history.append(line)
        return line, is_best


class _RankParts:
    """Every rank's own state (its loss sums since the last epoch and its RNG states), gathered
    into a list in a checkpoint; on load each rank takes its own entry."""

    def __init__(self, trainer: "Trainer"):
        self.t = trainer

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

def check_run_dir(paths: RunPaths, cfg: TrainConfig, dataset: dict) -> dict | None:
    """A run directory belongs to one config and one dataset; never silently mix two runs.
    Returns what config.json holds (None for a new run)."""
    if not paths.config.exists():
        return None
    old = json.loads(paths.config.read_text())
    # A key the run's config predates had its default then (new options are off by default).
    was = {**{k: v for k, v in to_dict(TrainConfig()).items() if k not in old["config"]}, **old["config"]}
    d = diff(was, to_dict(cfg), ignore=RUNTIME_KEYS)
    if d:
        raise ConfigError(f"{paths.root} holds a run with another config ({'; '.join(d)}); "
                          "use a new run directory")
    was = old.get("dataset") or {}
    if was.get("id") and was["id"] != dataset["id"]:
        raise DatasetError(f"{paths.root} was trained on dataset {was['id']} ({was.get('path')}), but {cfg.data} "
                           f"is dataset {dataset['id']} (other songs, split or storage); resuming on it would mix "
                           "two datasets in one run. Use a new run directory, or the dataset it was trained on")
    return old


def record_start(paths: RunPaths, cfg: TrainConfig, dataset: dict, old: dict | None, d: Dist, git: dict) -> None:
    """config.json: the resolved config, the dataset's identity and where the code came from, plus
    one line per start (a requeue, a resume with more epochs or a moved dataset)."""
    start = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "git": git, "world_size": d.world,
             "device": d.device.type, "torch": torch.__version__, "host": os.uname().nodename,
             "slurm_job_id": jobenv.job_id()}
    rec = {"config": to_dict(cfg), "dataset": dataset, "git": (old or start)["git"], "world_size": d.world,
           "device": d.device.type, "torch": torch.__version__, "starts": [*(old or {}).get("starts", []), start]}
    atomic_write_json(paths.config, rec)


def record_error(paths: RunPaths, text: str) -> None:
    """error.txt, even on a full disk: the text goes into blocks reserved while there was space,
    which are then renamed into place (see reserve_error_space)."""
    data = text.encode()[-60_000:]
    try:
        fd = os.open(paths.error_reserve, os.O_WRONLY)
    except OSError:
        fd = None
    try:
        if fd is not None:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
            os.fsync(fd)
            os.close(fd)
            fd = None
            os.replace(paths.error_reserve, paths.error)
        else:
            paths.error.write_bytes(data)
    except OSError:
        pass  # nothing more can be done; the exception itself still reaches the caller
    finally:
        if fd is not None:
            os.close(fd)


def reserve_error_space(paths: RunPaths, size: int = 64 * 1024) -> None:
    if paths.error_reserve.exists():
        return
    try:
        fd = os.open(paths.error_reserve, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
    except OSError:
        paths.error_reserve.unlink(missing_ok=True)


def _lock_run_dir(paths: RunPaths, d: Dist) -> Lock | None:
    """Rank 0 takes the run directory's lock; if it is held (an old copy of a requeued job is
    still running, or someone started the run twice) every rank stops before writing anything."""
    lock, err = (Lock(paths.lock, f"run directory {paths.root}"), None) if d.is_main else (None, None)
    if lock:
        try:
            lock.acquire()
        except LockedError as e:
            err = e
    if d.any(err is not None)[0]:
        raise err or LockedError(f"run directory {paths.root} is in use (rank 0 could not lock it)")
    return lock


_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def main(cfg: TrainConfig, run_dir: str | Path, stop: StopFlag | None = None) -> dict:
    """Train (or resume) the run in ``run_dir``. Returns a status dict:
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
        lock = _lock_run_dir(paths, d)
        result = _train(cfg, dataset, paths, d, stop or StopFlag())
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


def _check_orphan_checkpoints(paths: RunPaths, cfg: TrainConfig) -> None:
    """A run directory with checkpoints but no config.json (deleted): the newest checkpoint's own
    config must be this one, or resuming would fail on the weights' shapes (and config.json,
    rewritten first, would then refuse the right command)."""
    from gruv_hpc.training.checkpoint import load_latest
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unreadable one is reported by the resume itself
        sd, path = load_latest(paths)
    if sd and isinstance(sd.get("config"), dict):
        d = diff(sd["config"], to_dict(cfg), ignore=RUNTIME_KEYS)
        if d:
            raise ConfigError(f"{paths.root} has no config.json, and its checkpoint {path.name} was trained with "
                              f"another config ({'; '.join(d)}); pass those values, or use a new run directory")


def _train(cfg: TrainConfig, dataset: DatasetHandle, paths: RunPaths, d: Dist, stop: StopFlag) -> dict:
    origin = {"id": dataset_id(dataset.manifest), "path": cfg.data}
    old = check_run_dir(paths, cfg, origin)
    if old is None and cfg.resume != "never" and paths.step_ckpts():
        _check_orphan_checkpoints(paths, cfg)
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
            if t.ckpt.due_at_epoch_end(st.epoch, cfg.epochs, is_best):
                t.save(is_best)
            t.log.epoch(line, t.model, d.device, t.data.dev_set)
            t.log.heartbeat(st, force=True)  # once an epoch whatever the rate limit: the last one is exact
        t.log.done(st)
        return {"status": "done", **(st.history[-1] if st.history else {})}
    finally:
        t.log.close()

