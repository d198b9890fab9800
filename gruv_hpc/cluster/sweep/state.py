"""SWEEP_DIR/sweep.json: each run's config and jobs, and the submission history.

It is read and written here and nowhere else, always whole and atomically: ``gruv sweep status``
or a report may read it while a submission rewrites it. The format (version 1)::

    {"version": 1,
     "runs": {NAME: {"config": {...}, "grid": {...}, "run_dir": "...",
                     "jobs": [{"job_id": "123_4", "executor": "slurm", "submitted": 1700000000.0, "pid": 4321?}]}},
     "submissions": [{"time", "executor", "runs", "job_ids", "overrides", "file", "file_sha256"}],
     "slurm": {SlurmConfig as last submitted}}
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from gruv_hpc.errors import GruvError
from gruv_hpc.fsio import atomic_write_json
from gruv_hpc.lock import Lock
from gruv_hpc.paths import RunPaths, SweepPaths

VERSION = 1


@dataclass
class JobRecord:
    job_id: str  # Slurm: "123" or an array task "123_4"; local: the controller's pid
    executor: str  # slurm, local or debug
    submitted: float  # time.time() at submission
    pid: int | None = None  # local executor: the process that runs the job, to tell whether it lives


@dataclass
class RunRecord:
    config: dict  # the resolved TrainConfig
    grid: dict = field(default_factory=dict)
    jobs: list[JobRecord] = field(default_factory=list)
    run_dir: str | None = None  # None: SWEEP_DIR/runs/NAME

    @property
    def job(self) -> JobRecord | None:
        """The last job; earlier ones are history."""
        return self.jobs[-1] if self.jobs else None


@dataclass
class SweepState:
    paths: SweepPaths
    runs: dict[str, RunRecord] = field(default_factory=dict)
    submissions: list[dict] = field(default_factory=list)
    slurm: dict | None = None
    version: int = VERSION

    def run_paths(self, name: str) -> RunPaths:
        """Always SWEEP_DIR/runs/NAME, derived rather than read from the stored ``run_dir``: a sweep
        directory moved or copied elsewhere reads its own runs, not the old place's."""
        return self.paths.run(name)

    def save(self) -> None:
        runs = {name: {"config": r.config, "grid": r.grid, "jobs": [_job_json(j) for j in r.jobs], "run_dir": r.run_dir}
                for name, r in self.runs.items()}
        atomic_write_json(self.paths.state, {"version": self.version, "runs": runs, "submissions": self.submissions,
                                             "slurm": self.slurm})


def _job_json(j: JobRecord) -> dict:
    d = dataclasses.asdict(j)
    if d["pid"] is None:
        del d["pid"]
    return d


def load_state(sweep_dir, must_exist: bool = False) -> SweepState:
    """The sweep's state; an empty one where nothing was submitted yet (``must_exist``: an error
    saying the directory is not a sweep's)."""
    paths = SweepPaths(sweep_dir)
    try:
        raw = json.loads(paths.state.read_text())
    except FileNotFoundError:
        if must_exist:
            raise GruvError(f"{paths.root}: not a sweep directory (no {paths.state.name}: nothing was submitted there)") from None
        return SweepState(paths)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GruvError(f"{paths.state}: cannot read the sweep state ({e})") from None
    try:
        if raw.get("version", VERSION) > VERSION:
            raise GruvError(f"{paths.state}: format version {raw['version']}; this gruv-hpc reads version {VERSION}")
        runs = {str(name): RunRecord(config=dict(r["config"]), grid=dict(r.get("grid") or {}),
                                     jobs=[JobRecord(str(j["job_id"]), str(j["executor"]), float(j.get("submitted") or 0),
                                                     int(j["pid"]) if j.get("pid") else None) for j in r.get("jobs") or []],
                                     run_dir=r.get("run_dir"))
                for name, r in raw["runs"].items()}
        return SweepState(paths, runs, list(raw.get("submissions") or []), raw.get("slurm"), int(raw.get("version", VERSION)))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise GruvError(f"{paths.state}: not a sweep state file ({type(e).__name__}: {e})") from None


def submit_lock(sweep_dir) -> Lock:
    """One submission per sweep directory at a time; a second one fails at once, told which
    process holds it (gruv_hpc.lock: a killed submitter leaves no stale lock). A local submission
    holds it until its runs end; ``gruv sweep cancel`` does not need it."""
    paths = SweepPaths(sweep_dir)
    return Lock(paths.lock, f"sweep {paths.root} (a submission)")
