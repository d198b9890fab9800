"""What a run reports, rank 0 only: metrics.jsonl, TensorBoard (scalars, HParams), heartbeat.json,
done.json and its own log lines (stdout)."""
from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import torch

from gruv_hpc import jobenv
from gruv_hpc.config import to_dict
from gruv_hpc.fsio import atomic_write_json, atomic_write_text, dumps, temp_name
from gruv_hpc.paths import RunPaths
from gruv_hpc.training.config import RUNTIME_KEYS, TrainConfig
from gruv_hpc.training.state import TrainState


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

    def epoch(self, line: dict) -> None:
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


def peak_mem_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
