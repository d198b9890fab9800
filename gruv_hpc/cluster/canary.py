"""The canary (``gruv sweep submit --canary``, ``gruv pipeline submit --canary``): one short job on
a compute node, with the training jobs' resources and [slurm] setup lines, that the job arrays
wait behind (``--dependency=afterok:<canary>``). A broken environment then costs one small job,
not a grid: the canary fails, and Slurm cancels what waits on it (kill-on-invalid-dep).

It proves, on the node, what a training job needs at its start:

- every setup line succeeds. A training job's script runs them as written and goes on after one
  that fails (a ``conda activate`` that failed leaves the wrong environment, and the jobs fail
  later, each on its own); the canary's script stops at the first one that exits non-zero, and
  its log names the line;
- gruv_hpc and torch import (the submitting interpreter, as the training jobs run it);
- the dataset opens, its train clips read and checked against the manifest's sha256 (a pipeline
  whose dataset is not built yet: the corpus folders are listed instead);
- one optimizer step of a tiny model of the runs' cell on the device the runs get (cuda where
  the job has GPUs, else cpu).

Under a foreground scheduler (local) the canary runs first, here, and the runs start only when it
passed.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gruv_hpc.cluster.config import SlurmConfig
from gruv_hpc.cluster.scheduler import Dependency, Scheduler
from gruv_hpc.errors import GruvError

CANARY_TIME_MIN = 20  # opening a large dataset checks its shards' sha256: minutes, not hours


def canary_config(cfg: SlurmConfig) -> SlurmConfig:
    """``cfg``'s resources and setup lines for one short job, each setup line followed by a check
    that stops the job (with the line named in its log) when it exited non-zero."""
    setup = []
    for line in cfg.setup:
        said = shlex.quote(f"gruv canary: setup line failed: {line}")
        setup += [line, f'_gruv_rc=$?; if [ "$_gruv_rc" -ne 0 ]; then echo {said} "(exit $_gruv_rc)" >&2; '
                        f'exit "$_gruv_rc"; fi']
    t = min(cfg.time_min, CANARY_TIME_MIN)
    return dataclasses.replace(cfg, time_min=t, signal_delay_s=min(cfg.signal_delay_s, 30, t * 60 - 1), requeue=False,
                               max_num_timeout=0, array_parallelism=1, setup=setup)


@dataclass(frozen=True)
class CanaryJob:
    """The canary's work on the node (see the module's text). Returns what it found; raises,
    naming what is missing, when the node cannot train."""
    data: str | None  # the dataset; None: not built yet (then ``folders`` are listed)
    device: str  # cuda or cpu
    cell: str
    folders: tuple[str, ...] = ()

    def __call__(self) -> dict:
        t0 = time.time()
        import torch

        import gruv_hpc
        from gruv_hpc.training.model import GRUVModel
        found = {"host": socket.gethostname(), "python": sys.executable, "torch": torch.__version__,
                 "gruv_hpc": str(Path(gruv_hpc.__file__).parent), "device": self.device}
        if self.device == "cuda" and not torch.cuda.is_available():
            raise GruvError(f"canary on {found['host']}: the job has GPUs but torch {torch.__version__} sees no CUDA "
                            f"device (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, "
                            f"torch.version.cuda={torch.version.cuda})")
        device = torch.device(self.device)
        for folder in self.folders:
            try:
                found.setdefault("folders", {})[folder] = len(os.listdir(folder))
            except OSError as e:
                raise GruvError(f"canary on {found['host']}: cannot read {folder}: {e.strerror}") from None
        if self.data:
            from gruv_hpc.dataset.clips import DatasetHandle
            clips = DatasetHandle(self.data).split("train")
            if len(clips) == 0:
                raise GruvError(f"canary on {found['host']}: {self.data} has no train clips")
            x, y = (torch.as_tensor(t)[None].to(device) for t in clips[0])
            found["dataset"], found["train_clips"] = self.data, len(clips)
        else:
            x = torch.randn(1, 8, 16, device=device)
            y = torch.roll(x, -1, dims=1)
        model = GRUVModel(x.shape[-1], 8, self.cell).to(device)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
        loss = torch.nn.functional.mse_loss(model(x)[0], y)
        loss.backward()
        opt.step()
        if not torch.isfinite(loss.detach()):
            raise GruvError(f"canary on {found['host']}: the training step's loss is {loss.item()}")
        found["loss"], found["wall_s"] = loss.item(), round(time.time() - t0, 2)
        print(f"gruv canary: OK {found}", flush=True)
        return found


def submit_canary(sched: Scheduler, cfg: SlurmConfig, job: CanaryJob, folder: Path, name: str,
                  after: Dependency | None = None, say=print) -> str | None:
    """Queue the canary (a queueing scheduler: returns its job id, for the arrays' afterok), or
    run it here and wait (a foreground one: returns None, raises GruvError when it failed)."""
    ccfg = canary_config(cfg)
    [j] = sched.submit([job], ccfg, folder, f"{name}-canary", after)
    if not sched.foreground:
        say(f"canary: job {j.job_id} ({ccfg.time_min} min at most); the jobs below wait for it to succeed "
            f"(afterok); its log: {folder}/{j.job_id}_0_log.out")
        return str(j.job_id)
    say(f"canary: checking the environment here ({job.device}) before the runs ...")
    try:
        found = j.result()
    except Exception as e:  # noqa: BLE001 - reported as one line; nothing else starts
        raise GruvError(f"canary failed, nothing else started: {_error_line(str(e))} (its log: "
                        f"{folder}/{j.job_id}_0_log.err)") from None
    say(f"canary: OK ({found['wall_s']} s)")
    return None


def _error_line(text: str) -> str:
    """The exception line of a submitit failure's text (a traceback, then the log paths)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errs = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b", ln)]
    return (errs or lines or ["(no message)"])[-1]


def canary_device(run_device: str, gpus: int | None) -> str:
    """The device a run will train on, as the canary tests it: ``run_device`` is the run's
    TrainConfig.device; ``gpus`` the GPUs its job gets (None: a scheduler that does not allocate,
    so only device=cuda says cuda)."""
    if run_device == "cpu":
        return "cpu"
    if gpus is None:
        return "cuda" if run_device == "cuda" else "cpu"
    return "cuda" if gpus > 0 else "cpu"


def after_canary(after: Dependency | None, canary: str | list[str] | None) -> Dependency | None:
    """``after`` with the canary's job (or each of several) added to its afterok."""
    ids = [canary] if isinstance(canary, str) else [c for c in canary or () if c]
    if not ids:
        return after
    after = after or Dependency()
    return Dependency(after_ok=(*after.after_ok, *ids), after_any=after.after_any)


def canary_sets(runs: list, resources, sched: Scheduler) -> list[tuple[SlurmConfig, str, object]]:
    """One canary per distinct resource set of ``runs``: [(resources, device, its first run)].
    ``resources(run)``: the run's job resources ([slurm] with the [[slurm.when]] rules that select
    it). A queueing scheduler gets one per set (another partition, other GPUs or setup lines are
    another node and environment); a foreground one runs every set on this machine, so one per
    device it trains on."""
    sets: list[tuple[SlurmConfig, str, object]] = []
    for run in runs:
        cfg = resources(run)
        device = canary_device(run.config.get("device", "auto"), cfg.gpus_per_node if sched.allocates else None)
        if not any((d == device) if sched.foreground else (c == cfg) for c, d, _ in sets):
            sets.append((cfg, device, run))
    return sets


def failed_canary(sched: Scheduler, ids: list[str], logs: Path) -> str | None:
    """The first of ``ids`` (a submission's canaries) that ended without succeeding, in words:
    which job, how it ended, its log's last line, its log; None when none did (yet). What waits on
    it was cancelled (kill-on-invalid-dep), and status says this rather than a bare CANCELLED."""
    ids = [i for i in ids if i]
    infos = sched.states(ids) if ids else {}
    from gruv_hpc.cluster.scheduler import ACTIVE
    bad = [(i, infos[i].state) for i in ids if i in infos and infos[i].state not in (*ACTIVE, "COMPLETED")]
    if not bad:
        return None
    i, st = bad[0]
    err = Path(logs) / f"{i}_0_log.err"
    try:
        last = next((ln.strip() for ln in reversed(err.read_text(errors="replace").splitlines()) if ln.strip()), "")
    except OSError:
        last = ""
    return f"its canary, job {i}, ended {st}" + (f": {last}" if last else "") + f" (its log: {err})"
