"""The run-directory and sweep-directory layouts, defined in one place (importable without torch).

Every path the trainer, the training job (``training.job.TrainJob``), generation, status and
analysis use comes from ``RunPaths`` or ``SweepPaths``: a requeued job cannot look for its checkpoint under another name
than the one it was saved as, and no module spells ``sweep.json`` itself.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

STEP_RE = re.compile(r"^step_(\d{10})\.pt$")


def ckpt_step(path: Path) -> int:
    return int(STEP_RE.match(path.name).group(1))


@dataclass(frozen=True)
class RunPaths:
    root: Path

    def __init__(self, root):
        object.__setattr__(self, "root", Path(root))

    config = property(lambda s: s.root / "config.json")
    metrics = property(lambda s: s.root / "metrics.jsonl")
    done = property(lambda s: s.root / "done.json")
    error = property(lambda s: s.root / "error.txt")
    cancelled = property(lambda s: s.root / "cancelled.json")  # a user stopped it (gruv sweep cancel, Ctrl-C)
    preempted = property(lambda s: s.root / "preempted.json")  # gruv sweep preempt's last signal: job, requeues
    tb = property(lambda s: s.root / "tb")
    ckpt_dir = property(lambda s: s.root / "checkpoints")
    best = property(lambda s: s.root / "checkpoints" / "best.pt")
    lock = property(lambda s: s.root / ".lock")  # held by the one process that trains this run
    # Rewritten by rank 0 at each log interval (time, step, epoch, batch, job): its age says whether
    # training is alive, where a checkpoint's age says only what a stop would lose.
    heartbeat = property(lambda s: s.root / "heartbeat.json")
    # Disk blocks set aside while there is space, so that the reason of a failure can still be
    # written into error.txt when the disk is full (see train.record_error).
    error_reserve = property(lambda s: s.root / ".error.reserve")
    unreadable = property(lambda s: s.root / "checkpoints" / "unreadable")  # set aside, never deleted

    def discarded(self, stamp: str) -> Path:
        return self.root / f"discarded-{stamp}"

    def step_ckpt(self, step: int) -> Path:
        return self.ckpt_dir / f"step_{step:010d}.pt"

    def step_ckpts(self) -> list[Path]:
        """Step checkpoints, newest first."""
        if not self.ckpt_dir.is_dir():
            return []
        return sorted((p for p in self.ckpt_dir.iterdir() if STEP_RE.match(p.name)), reverse=True)

    def done_epochs(self) -> int | None:
        """The epoch a finished training reached (done.json), None when it has not finished."""
        try:
            return int(json.loads(self.done.read_text())["final"].get("epoch", 0))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def recorded_dataset(self) -> dict | None:
        """The dataset the run trained on, as its config.json records it ({"id", "path"}), None
        before its first start (or when config.json is unreadable: the trainer itself says why)."""
        try:
            d = json.loads(self.config.read_text()).get("dataset")
        except (OSError, ValueError, AttributeError):
            return None
        return d if isinstance(d, dict) else None

    def newest_ckpt_mtime(self) -> float | None:
        c = self.step_ckpts()
        return c[0].stat().st_mtime if c else None

    def last_heartbeat(self) -> dict | None:
        """heartbeat.json as training last wrote it ({"time", "step", "epoch", "batch", "job"}), or
        None when there is none (or it is not one: a reader shows "-", never fails on it)."""
        try:
            hb = json.loads(self.heartbeat.read_text())
        except (OSError, ValueError):
            return None
        return hb if isinstance(hb, dict) and number(hb.get("time")) is not None else None


@dataclass(frozen=True)
class SweepPaths:
    """SWEEP_DIR: ``sweep.json`` (the state: each run's config and jobs), ``sweep.toml`` (the file
    as last submitted), ``runs/<name>/`` (run directories), ``logs/`` (submitit's job folder)."""
    root: Path

    def __init__(self, root):
        object.__setattr__(self, "root", Path(root))

    state = property(lambda s: s.root / "sweep.json")
    spec = property(lambda s: s.root / "sweep.toml")
    runs = property(lambda s: s.root / "runs")
    logs = property(lambda s: s.root / "logs")
    lock = property(lambda s: s.root / ".lock")

    def run(self, name: str) -> RunPaths:
        return RunPaths(self.runs / name)


def read_run_config(path: Path) -> dict:
    """A run's config.json, or one line naming it when it is damaged (a torn copy, an edit): that
    was a raw JSONDecodeError from train and generate alike."""
    from gruv_hpc.errors import ConfigError
    try:
        rec = json.loads(path.read_bytes())
        if not isinstance(rec, dict) or not isinstance(rec.get("config"), dict):
            raise ValueError("it holds no \"config\" object")
        return rec
    except ValueError as e:  # (JSONDecodeError and UnicodeDecodeError are ValueErrors)
        raise ConfigError(f"{path}: not a run's config.json ({str(e).splitlines()[0][:120]}); move it aside (mv {path} "
                          f"{path}.bad) and run the run's `gruv train` command again: it checks that command against "
                          "the newest checkpoint's config and writes config.json anew") from None


class NotText(str):
    """A line of a JSONL file that is not UTF-8 (a flipped bit, a foreign writer): kept in its place
    so that ``metrics_problem`` names it, where the whole file could not be read before."""


def read_jsonl(path: Path) -> list[dict]:
    """Lines of a JSONL file; a torn last line (a kill mid-write) is ignored, a line that is not
    UTF-8 is a ``NotText``."""
    if not path.exists():
        return []
    out = []
    for raw in path.read_bytes().splitlines():
        try:
            line = raw.decode()
        except UnicodeDecodeError:
            out.append(NotText(raw.decode(errors="replace")))
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def metrics_problem(records: list) -> str | None:
    """The first line of a run's metrics.jsonl records that is not an epoch line as training
    writes it (an int ``epoch``, numbers ``train_loss`` and ``dev_loss``), or None. A reader lists
    and skips a damaged run instead of failing on it."""
    for i, h in enumerate(records, 1):
        if isinstance(h, NotText):
            return f"line {i} is not UTF-8 text"
        if not isinstance(h, dict):
            return f"line {i} is {type(h).__name__}, not an object"
        if not isinstance(h.get("epoch"), int) or isinstance(h.get("epoch"), bool):
            return f"line {i}: epoch is {h.get('epoch')!r}, not an integer"
        for k in ("train_loss", "dev_loss"):
            v = h.get(k)
            if k not in h:
                return f"line {i} has no {k}"
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return f"line {i}: {k} is {v!r}, not a number"
    return None


def number(v) -> float | None:
    """v if it is a number (not a bool), else None: what a status table shows of a damaged value."""
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


@dataclass(frozen=True)
class BuildPaths:
    """What a dataset build keeps beside its ``out`` directory (the same filesystem, so that the
    finished dataset goes in by renames): ``.NAME.lock`` (flock of the one writer),
    ``.NAME.staging/`` (the dataset being built: plan, task records, shards; resumed by the next
    build of the same plan), ``.NAME.jobs/`` (submitit's folder for a Slurm build: job logs)."""
    out: Path

    def __init__(self, out):
        object.__setattr__(self, "out", Path(out))

    lock = property(lambda s: s.out.with_name(f".{s.out.name}.lock"))
    staging = property(lambda s: s.out.with_name(f".{s.out.name}.staging"))
    jobs = property(lambda s: s.out.with_name(f".{s.out.name}.jobs"))


@dataclass(frozen=True)
class PipelinePaths:
    """A pipeline's DIR: ``data/`` (the dataset), ``sweep/`` (a sweep directory), ``report/`` (the
    analysis), ``pipeline.json`` (each submission's stages and jobs), ``pipeline.toml`` (the file
    as last submitted), ``logs/`` (submitit's folder for the preprocess and analysis jobs)."""
    root: Path

    def __init__(self, root):
        object.__setattr__(self, "root", Path(root))

    data = property(lambda s: s.root / "data")
    sweep = property(lambda s: SweepPaths(s.root / "sweep"))
    report = property(lambda s: s.root / "report")
    report_index = property(lambda s: s.root / "report" / "index.html")
    # The report is written here and renamed into place whole (a killed analysis leaves the old one).
    state = property(lambda s: s.root / "pipeline.json")
    spec = property(lambda s: s.root / "pipeline.toml")
    logs = property(lambda s: s.root / "logs")
    lock = property(lambda s: s.root / ".lock")


def name_part(key: str, value) -> str:
    """A grid value as it appears in a run's name (runs are named by their grid values: h512, lr0.01)."""
    short = {"hidden": "h", "layers": "l", "batch_size": "b", "lr": "lr", "seed": "s", "epochs": "e"}
    if key == "artists":
        return "+".join(value) if value else "all"
    if key in ("cell", "optimizer", "transform", "predict", "head"):
        return str(value)
    if key == "data":
        return Path(value).name
    return f"{short.get(key, key)}{value}"
