"""Submitting a sweep: which runs need a job now (and why the others do not), then the jobs,
as Slurm job arrays (one sbatch call per array) or through submitit's local/debug executors."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from ..config import RUNTIME_KEYS, SlurmConfig, diff
from ..errors import ConfigError
from ..fsio import atomic_write_text
from ..paths import SweepPaths
from . import slurm
from .slurm import ACTIVE
from .spec import Run, Sweep, load_sweep, validate
from .state import JobRecord, RunRecord, SweepState, load_state, submit_lock
from .status import run_state, slurm_infos


def executor_kind(executor: str) -> str:
    """The executor that will run the jobs; auto: Slurm where a cluster answers, else local."""
    if executor == "auto":
        return "slurm" if slurm.slurm_available() else "local"
    if executor not in ("slurm", "local", "debug"):
        raise ConfigError(f"executor must be auto, slurm, local or debug, not {executor!r}")
    return executor


def _executor(kind: str, paths: SweepPaths, cfg: SlurmConfig, name: str):
    import submitit
    if kind == "slurm":
        ex = submitit.SlurmExecutor(folder=paths.logs, max_num_timeout=cfg.max_num_timeout)
        params = dict(job_name=name, time=cfg.time_min, nodes=cfg.nodes, ntasks_per_node=cfg.tasks_per_node,
                      cpus_per_task=cfg.cpus_per_task, mem=f"{int(cfg.mem_gb * 1024)}MB",
                      array_parallelism=cfg.array_parallelism, signal_delay_s=cfg.signal_delay_s,
                      setup=list(cfg.setup), additional_parameters={**({"requeue": True} if cfg.requeue else {}),
                                                                    **cfg.additional})
        if cfg.gpus_per_node:
            params["gpus_per_node"] = cfg.gpus_per_node
        for k in ("partition", "account", "qos", "constraint"):
            if getattr(cfg, k):
                params[k] = getattr(cfg, k)
        ex.update_parameters(**params)
        return ex
    if kind == "local":
        ex = submitit.LocalExecutor(folder=paths.logs, max_num_timeout=cfg.max_num_timeout)
        ex.update_parameters(timeout_min=cfg.time_min, tasks_per_node=1, gpus_per_node=0)
        return ex
    return submitit.DebugExecutor(folder=paths.logs)


def sbatch_preview(sweep: Sweep, paths: SweepPaths) -> str:
    from submitit.slurm.slurm import _make_sbatch_string
    s = sweep.slurm
    kw = dict(job_name=sweep.path.stem, time=s.time_min, nodes=s.nodes, ntasks_per_node=s.tasks_per_node,
              cpus_per_task=s.cpus_per_task, mem=f"{int(s.mem_gb * 1024)}MB", array_parallelism=s.array_parallelism,
              signal_delay_s=s.signal_delay_s, setup=list(s.setup), map_count=len(sweep.runs),
              additional_parameters={**({"requeue": True} if s.requeue else {}), **s.additional},
              gpus_per_node=s.gpus_per_node or None, partition=s.partition, account=s.account, qos=s.qos,
              constraint=s.constraint)
    return _make_sbatch_string(command=f"{sys.executable} -u -m submitit.core._submit {paths.logs}",
                               folder=paths.logs, **kw)


def plan(sweep: Sweep, state: SweepState) -> tuple[list[Run], dict[str, str]]:
    """Which runs to submit now, and why each other run is left alone."""
    infos = slurm_infos(state)
    todo, skipped = [], {}
    for run in sweep.runs:
        old = state.runs.get(run.name)
        if old:
            d = diff(old.config, run.config, ignore=RUNTIME_KEYS)
            if d:
                raise ConfigError(f"run {run.name} in {state.paths.root} was submitted with another config "
                                  f"({'; '.join(d)}); use a new sweep directory, or restore the old values")
        job = old.job if old else None
        st = run_state(state.run_paths(run.name), job, infos)
        if st == "COMPLETED":
            skipped[run.name] = "done"
        elif st in ACTIVE:
            skipped[run.name] = f"job {job.job_id} is {st}"
        else:
            todo.append(run)
    return todo, skipped


def submit(sweep_file, sweep_dir, executor: str = "auto", dry_run: bool = False, overrides=(), max_parallel: int = 2,
           progress: bool = True, out=print) -> dict:
    """Validate, then submit what needs submitting. Returns {"submitted": [...], "skipped": {...}}."""
    sweep = load_sweep(sweep_file, overrides)
    paths = SweepPaths(Path(sweep_dir).resolve())
    kind = executor_kind(executor)
    if dry_run:
        if Path(sweep.data).exists():  # a dry run also works away from the data (e.g. on a laptop)
            validate(sweep, paths.root, kind)
        for run in sweep.runs:
            out(f"{run.name}: {json.dumps(run.grid)}")
        out(f"# {len(sweep.runs)} runs; the sbatch script of the job array:")
        out(sbatch_preview(sweep, paths))
        return {"submitted": [], "skipped": {}, "runs": [r.name for r in sweep.runs]}
    validate(sweep, paths.root, kind)
    with submit_lock(paths.root):
        state = load_state(paths.root)
        todo, skipped = plan(sweep, state)
        for name, why in skipped.items():
            out(f"skip {name}: {why}")
        atomic_write_text(paths.spec, sweep.text)
        for run in sweep.runs:
            rec = state.runs.setdefault(run.name, RunRecord(run.config, run.grid))
            rec.config = {**rec.config, **{k: run.config[k] for k in RUNTIME_KEYS}}
            rec.run_dir = str(paths.run(run.name).root)
        sub = {"time": time.time(), "executor": kind, "runs": [r.name for r in todo], "job_ids": [],
               "overrides": list(overrides), "file": str(sweep.path), "file_sha256": hashlib.sha256(sweep.text.encode()).hexdigest()}
        state.submissions.append(sub)
        state.slurm = dataclasses.asdict(sweep.slurm)
        state.save()
        if not todo:
            out("nothing to submit")
            return {"submitted": [], "skipped": skipped, "executor": kind}
        if kind == "slurm":
            jobs = _submit_slurm(todo, sweep, paths)
            for run, job in zip(todo, jobs):
                state.runs[run.name].jobs.append(JobRecord(job.job_id, kind, time.time()))
                sub["job_ids"].append(job.job_id)
            state.save()
            arrays = sorted({j.job_id.split("_")[0] for j in jobs})
            out(f"submitted {len(todo)} run(s) as {len(arrays)} job array(s): {', '.join(arrays)}")
        else:
            _run_locally(todo, sweep, paths, kind, state, sub, max_parallel, progress, out)
    return {"submitted": [r.name for r in todo], "skipped": skipped, "executor": kind}


def _submit_slurm(todo: list[Run], sweep: Sweep, paths: SweepPaths):
    from ..launcher import TrainJob
    jobs = []
    limit = max(1, slurm.max_array_size())  # task indices 0 .. MaxArraySize - 1
    for i in range(0, len(todo), limit):
        chunk = todo[i:i + limit]
        ex = _executor("slurm", paths, sweep.slurm, sweep.path.stem)
        with ex.batch():  # one sbatch call per array
            for run in chunk:
                jobs.append(ex.submit(TrainJob(str(paths.run(run.name).root), run.config)))
    return jobs


def _run_locally(todo, sweep, paths, kind, state, sub, max_parallel, progress, out) -> None:
    """submitit's local executor, at most ``max_parallel`` runs at a time; blocks until all end."""
    from tqdm import tqdm

    from ..launcher import TrainJob
    threads = max(1, (os.cpu_count() or 1) // max(1, max_parallel))
    ex = _executor(kind, paths, sweep.slurm, sweep.path.stem)
    pending, running, failed = list(todo), [], []
    bar = tqdm(total=len(todo), unit="run", desc="sweep", disable=not progress)
    while pending or running:
        while pending and len(running) < max(1, max_parallel):
            run = pending.pop(0)
            job = ex.submit(TrainJob(str(paths.run(run.name).root), run.config, threads=threads))
            pid = int(job.job_id) if kind == "local" else None  # a LocalJob's id is its process's pid
            state.runs[run.name].jobs.append(JobRecord(str(job.job_id), kind, time.time(), pid))
            sub["job_ids"].append(str(job.job_id))
            state.save()
            running.append((run, job))
            if kind == "debug":
                break
        time.sleep(0.2 if kind != "debug" else 0)
        for run, job in list(running):
            if job.done():
                running.remove((run, job))
                try:
                    job.result()
                except Exception as e:  # noqa: BLE001 - reported, the other runs go on
                    failed.append(run.name)
                    out(f"run {run.name} failed: {str(e).strip().splitlines()[-1] if str(e).strip() else e}")
                bar.update(1)
        bar.set_postfix(running=len(running), failed=len(failed))
    bar.close()
