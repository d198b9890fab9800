"""DIR/pipeline.json: each submission of a pipeline, its stages and their jobs (typed records).

It is read and written here and nowhere else, always whole and atomically (``gruv pipeline
status`` may read it while a submission rewrites it). The format (version 1)::

    {"version": 1,
     "submissions": [{"time", "executor", "host", "pid", "file", "overrides", "stage", "canary"?,
                      "preprocess": {"state", "tasks"?, "array"?, "merge"?, "n_tasks"?, "ran"?},
                      "train": {"submitted"?, "skipped"?, "job_ids"?, "dependency"?, "live"?, "failed"?},
                      "analysis": {"job"?, "skipped"?, "dependency"?, "why"?, "ran"?}}]}

A stage's record holds only the keys that stage came to (a key absent or None: not known), so
files written before these records were typed read as they are.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

from gruv_hpc.errors import GruvError
from gruv_hpc.fsio import atomic_write_json
from gruv_hpc.paths import PipelinePaths

VERSION = 1


def _to_json(rec) -> dict:
    return {f.name: getattr(rec, f.name) for f in fields(rec) if getattr(rec, f.name) is not None}


def _from_json(cls, d):
    if not isinstance(d, dict):
        raise TypeError(f"{cls.__name__}: expected an object, got {d!r}")
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class PreprocessStage:
    # complete: built before, of the same plan; live: a queued build of the same plan runs;
    # submitted: queued now; built: built here, now
    state: str | None = None
    tasks: dict[str, str] | int | None = None  # queued: {task: job id}; built here: how many tasks
    array: str | None = None  # the tasks' job array (None: every task had finished before)
    merge: str | None = None  # the merge job, after the array
    n_tasks: int | None = None
    ran: list[int] | None = None  # built here: the tasks run now

    def to_json(self) -> dict:
        return _to_json(self)


@dataclass
class TrainStage:
    submitted: list[str] | None = None  # the runs submitted (or run here)
    skipped: dict[str, str] | None = None  # run: why not
    job_ids: list[str] | None = None  # queued: the new runs' jobs
    dependency: str | None = None  # queued: what they wait for (Slurm's --dependency)
    live: list[str] | None = None  # queued: every run's job that may still run (the analysis waits for them)
    failed: list[str] | None = None  # run here: the runs that failed

    def to_json(self) -> dict:
        return _to_json(self)


@dataclass
class AnalysisStage:
    job: str | None = None  # queued: its job (None: none submitted)
    skipped: str | None = None  # why no analysis runs
    dependency: str | None = None
    why: str | None = None  # why it runs
    ran: bool | None = None  # run here
    # Decided by a queueing scheduler: the record always names its job, None or not (read back:
    # "job" is a key of the record).
    queued: bool = field(default=False, compare=False)

    def to_json(self) -> dict:
        d = _to_json(self)
        del d["queued"]
        if self.queued:
            d.setdefault("job", None)
        return d

    @classmethod
    def from_json(cls, d) -> "AnalysisStage":
        rec = _from_json(cls, {k: v for k, v in d.items() if k != "queued"} if isinstance(d, dict) else d)
        rec.queued = "job" in d
        return rec


@dataclass
class Submission:
    time: float
    executor: str  # the resolved kind: slurm, local, debug
    host: str
    pid: int
    file: str  # the pipeline file, resolved
    overrides: list[str] = field(default_factory=list)
    stage: str = "preprocess"  # the stage under way: preprocess, train, analysis; then submitted or done
    preprocess: PreprocessStage = field(default_factory=PreprocessStage)
    train: TrainStage = field(default_factory=TrainStage)
    analysis: AnalysisStage = field(default_factory=AnalysisStage)
    canary: str | None = None  # queued: the canary's job, which every stage waits for (afterok)
    canaries: list[str] = field(default_factory=list)  # all of them: one per resource set of the runs

    def to_json(self) -> dict:
        return {"time": self.time, "executor": self.executor, "host": self.host, "pid": self.pid, "file": self.file,
                "overrides": list(self.overrides), "stage": self.stage, "preprocess": self.preprocess.to_json(),
                "train": self.train.to_json(), "analysis": self.analysis.to_json(),
                **({"canary": self.canary} if self.canary else {}),
                **({"canaries": list(self.canaries)} if len(self.canaries) > 1 else {})}

    @classmethod
    def from_json(cls, d: dict) -> "Submission":
        return cls(time=float(d["time"]), executor=str(d["executor"]), host=d.get("host") or "",
                   pid=int(d.get("pid") or 0), file=d.get("file") or "", overrides=list(d.get("overrides") or []),
                   stage=d.get("stage") or "preprocess",
                   preprocess=_from_json(PreprocessStage, d.get("preprocess") or {}),
                   train=_from_json(TrainStage, d.get("train") or {}),
                   analysis=AnalysisStage.from_json(d.get("analysis") or {}), canary=d.get("canary"),
                   canaries=list(d.get("canaries") or ([d["canary"]] if d.get("canary") else [])))


@dataclass
class PipelineState:
    paths: PipelinePaths
    submissions: list[Submission] = field(default_factory=list)
    version: int = VERSION

    @property
    def last(self) -> Submission | None:
        return self.submissions[-1] if self.submissions else None

    def save(self) -> None:
        atomic_write_json(self.paths.state, {"version": self.version,
                                             "submissions": [s.to_json() for s in self.submissions]})


def load_state(paths: PipelinePaths) -> PipelineState:
    """The pipeline's state; an empty one where nothing was submitted yet."""
    try:
        raw = json.loads(paths.state.read_text())
    except FileNotFoundError:
        return PipelineState(paths)
    except (OSError, ValueError) as e:
        raise GruvError(f"{paths.state}: cannot read the pipeline state ({e})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("submissions"), list):
        raise GruvError(f"{paths.state}: not a pipeline state file")
    try:
        if int(raw.get("version", VERSION)) > VERSION:
            raise GruvError(f"{paths.state}: format version {raw['version']}; this gruv-hpc reads version {VERSION}")
        return PipelineState(paths, [Submission.from_json(s) for s in raw["submissions"]], int(raw.get("version", VERSION)))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise GruvError(f"{paths.state}: not a pipeline state file ({type(e).__name__}: {e})") from None
