"""Submitting a sweep: which runs need a job now (and why the others do not), then the jobs,
through the executor's scheduler: queued as job arrays (Slurm: one sbatch call per array), or run
here in the foreground, a few at a time (local, debug)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from gruv_hpc.training.config import RUNTIME_KEYS, available_cpus, with_defaults
from gruv_hpc.config import diff
from gruv_hpc.errors import ConfigError, DatasetError, GruvError
from gruv_hpc.fsio import atomic_write_text
from gruv_hpc.paths import SweepPaths, number, read_jsonl
from gruv_hpc.cluster.config import SlurmConfig
from gruv_hpc.cluster.canary import CanaryJob, after_canary, canary_config, canary_sets, submit_canary
from gruv_hpc.cluster.executors import scheduler
from gruv_hpc.cluster.scheduler import ACTIVE, Dependency, Scheduler, log_path
from gruv_hpc.cluster.sweep.spec import Run, Sweep, load_sweep, validate
from gruv_hpc.cluster.sweep.state import JobRecord, RunRecord, SweepState, load_state, submit_lock
from gruv_hpc.cluster.sweep.status import mark_cancelled, run_state, sweep_infos


@dataclass
class RunPlan:
    """What a submission does with one run, and why: ``start`` (new), ``continue`` (from
    ``from_epoch`` to ``epochs``), ``skip`` (done, or its job lives), or ``fail`` (``error``: the
    submission is refused)."""
    run: Run
    action: str
    why: str = ""
    from_epoch: int = 0
    epochs: int = 0
    error: GruvError | None = None


def review(sweep: Sweep, state: SweepState) -> list[RunPlan]:
    """Each run's ``RunPlan``, reading only: what a submission would do and what a dry run shows."""
    infos = sweep_infos(state)
    plans = []
    for run in sweep.runs:
        old = state.runs.get(run.name)
        rp = state.run_paths(run.name)
        epochs = run.config["epochs"]
        error = _refusal(run, old, rp, sweep, state)
        if error:
            plans.append(RunPlan(run, "fail", str(error), epochs=epochs, error=error))
            continue
        job = old.job if old else None
        st = run_state(rp, job, infos, epochs, logs=state.paths.logs)
        at = _epochs_done(rp)
        if st == "COMPLETED":
            plans.append(RunPlan(run, "skip", "done", at, epochs))
        elif st in ACTIVE:
            plans.append(RunPlan(run, "skip", f"job {job.job_id} is {st}", at, epochs))
        elif at or rp.step_ckpts():
            plans.append(RunPlan(run, "continue", f"from epoch {at} -> {epochs}", at, epochs))
        else:
            plans.append(RunPlan(run, "start", f"epoch 0 -> {epochs}", 0, epochs))
    return plans


def plan(sweep: Sweep, state: SweepState) -> tuple[list[Run], dict[str, str]]:
    """Which runs to submit now, and why each other run is left alone; a run that may not go on
    (another config, another dataset) refuses the whole submission."""
    todo, skipped = [], {}
    for p in review(sweep, state):
        if p.error:
            raise p.error
        if p.action == "skip":
            skipped[p.run.name] = p.why
        else:
            todo.append(p.run)
    return todo, skipped


def _refusal(run: Run, old: RunRecord | None, rp, sweep: Sweep, state: SweepState) -> GruvError | None:
    """Why ``run`` may not be submitted to this sweep directory, or None: it was submitted with
    another config, or trained on another dataset than ``sweep.data`` (known once ``validate`` has
    read its manifest). Checked here, not only when the job starts hours later in the queue."""
    if old:
        d = diff(with_defaults(old.config), with_defaults(run.config), ignore=RUNTIME_KEYS)
        if d:
            return ConfigError(f"run {run.name} in {state.paths.root} was submitted with another config "
                               f"({'; '.join(d)}); use a new sweep directory, or restore the old values")
    was = rp.recorded_dataset()
    if sweep.dataset_id and was and was.get("id") and was["id"] != sweep.dataset_id:
        return DatasetError(f"run {run.name} was trained on dataset {was['id']} ({was.get('path')}), but {sweep.data} "
                            f"is dataset {sweep.dataset_id}; use a new sweep directory, or data= the dataset it was "
                            f"trained on")
    return None


def _epochs_done(rp) -> int:
    """The epochs a run has finished, from its metrics.jsonl (never ahead of its checkpoint: the
    trainer rewrites it from the checkpoint it resumes)."""
    last = next((h for h in reversed(read_jsonl(rp.metrics)) if isinstance(h, dict)), {})
    e = number(last.get("epoch"))
    return int(e) if e else 0


def first_start_only(run: Run, state: SweepState) -> Run:
    """resume=never is the policy of a run's first start, not of every job: a run submitted
    before (cancelled, failed, resubmitted to go on) resumes, as a requeued job does
    (``TrainJob``), instead of setting aside what it has done."""
    rec = state.runs.get(run.name)
    if run.config.get("resume") == "never" and rec is not None and rec.jobs:
        return dataclasses.replace(run, config={**run.config, "resume": "auto"})
    return run


def job_arrays(todo: list[Run], sched: Scheduler) -> list[list[Run]]:
    """The runs of each job array: one array per resources (a job array has one set: runs that
    [[slurm.when]] gives other resources go to another), and per MaxArraySize runs (task ids
    0 .. MaxArraySize - 1)."""
    limit = max(1, sched.max_array_size())
    groups: list[list[Run]] = []
    for run in todo:
        same = next((g for g in groups if g[0].slurm == run.slurm), None)
        if same is None:
            groups.append([run])
        else:
            same.append(run)
    return [g[i:i + limit] for g in groups for i in range(0, len(g), limit)]


def submit(sweep_file, sweep_dir, executor: str = "auto", dry_run: bool = False, overrides=(), max_parallel: int = 2,
           progress: bool = True, out=print, after: Dependency | None = None, canary: bool = False,
           check: bool = True) -> dict:
    """Validate, then submit what needs submitting. Returns {"submitted": [...], "skipped": {...}}.
    ``sweep_file`` may be a loaded Sweep; ``after`` holds its jobs back (a queueing scheduler's).
    ``canary``: a short job that proves the environment first (``cluster.canary``), the runs
    behind it. ``check``: the resources against the cluster (False: the caller checked them)."""
    if not isinstance(max_parallel, int) or max_parallel < 1:
        raise ConfigError(f"--max-parallel: must be >= 1, got {max_parallel}")
    sweep = sweep_file if isinstance(sweep_file, Sweep) else load_sweep(sweep_file, overrides)
    paths = SweepPaths(Path(sweep_dir).resolve())
    sched = scheduler(executor)
    kind = sched.kind
    checked = sched.check(sweep.requests()) if check else None  # before anything is queued, dry run or not
    if checked:
        out(checked)
    if dry_run:
        res = _dry_run(sweep, paths, sched, max_parallel, out, after)
        todo = [r for r in sweep.runs if r.name in res["todo"]]
        if canary and todo and not sched.foreground:
            sets = canary_sets(todo, sweep.resources, sched)
            for i, (cfg, _, run) in enumerate(sets):
                which = f" {i + 1} of {len(sets)}" if len(sets) > 1 else ""
                whose = f" (the runs with {run.name}'s resources)" if len(sets) > 1 else ""
                out(f"# the canary{which}, which the arrays wait for (afterok){whose}:")
                out(sched.script(canary_config(cfg), paths.logs, f"{sweep.path.stem}-canary", 1))
        return res
    validate(sweep, paths.root, kind)
    for note in sweep.notes:
        out(f"warning: {note}")
    with submit_lock(paths.root):
        state = load_state(paths.root)
        todo, skipped = plan(sweep, state)
        for name, why in skipped.items():
            out(f"skip {name}: {why}")
        # The canary first: a local one runs now (and raises when it fails), before anything is recorded.
        canaries = _canaries(sweep, sched, paths, todo, after, out) if canary and todo else []
        canary_ids = [c for _, c in canaries if c]
        atomic_write_text(paths.spec, sweep.text)
        for run in sweep.runs:
            rec = state.runs.setdefault(run.name, RunRecord(run.config, run.grid))
            rec.config = {**rec.config, **{k: run.config[k] for k in RUNTIME_KEYS}}
            rec.run_dir = str(paths.run(run.name).root)
        sub = {"time": time.time(), "executor": kind, "runs": [r.name for r in todo], "job_ids": [],
               "host": socket.gethostname(), "pid": os.getpid(),
               "overrides": list(overrides), "file": str(sweep.path), "file_sha256": hashlib.sha256(sweep.text.encode()).hexdigest()}
        if canary_ids:
            sub["canary"] = canary_ids[0]
            if len(canary_ids) > 1:
                sub["canaries"] = canary_ids  # one per resource set; each array waits for its own
        state.submissions.append(sub)
        state.slurm = dataclasses.asdict(sweep.slurm)
        state.save()
        if not todo:
            out("nothing to submit")
            return {"submitted": [], "skipped": skipped, "executor": kind}
        first = todo
        todo = [first_start_only(run, state) for run in todo]
        again = [a.name for a, b in zip(first, todo) if a is not b]
        if again:  # said, not silent: resume=never would otherwise be read as "start over"
            out(f"resume=never applies to a run's first start: {', '.join(again)} started before, so it resumes; "
                f"to start a run over, remove its run directory first ({paths.run(again[0]).root})")
        for run in todo:
            paths.run(run.name).cancelled.unlink(missing_ok=True)  # resubmitted: no longer cancelled
        failed: list[str] = []
        if not sched.foreground:
            try:
                arrays = job_arrays(todo, sched)
                todo = [run for runs in arrays for run in runs]  # the order of the jobs: array by array
                jobs = _submit_queued(sched, arrays, sweep, paths, after, canaries)
            except BaseException:
                state.submissions.remove(sub)  # refused (sbatch said no): not a submission
                state.save()
                if canary_ids:
                    sched.cancel(canary_ids)  # nothing waits for them
                raise
            for run, job in zip(todo, jobs):
                state.runs[run.name].jobs.append(JobRecord(job.job_id, kind, time.time()))
                sub["job_ids"].append(job.job_id)
            state.save()
            arrays = sorted({j.job_id.split("_")[0] for j in jobs})
            ids = [c for c in canary_ids if c]
            out(f"submitted {len(todo)} run(s) as {len(arrays)} job array(s): {', '.join(arrays)}" + (
                f"; they wait for canary job{'s' if len(ids) > 1 else ''} {', '.join(ids)} (afterok: they start only if "
                f"it succeeds; log{'s' if len(ids) > 1 else ''}: {', '.join(str(log_path(paths.logs, c)) for c in ids)})"
                if ids else ""))
        else:
            failed = _run_locally(todo, sweep, paths, sched, state, sub, max_parallel, progress, out)
    return {"submitted": [r.name for r in todo], "skipped": skipped, "executor": kind, "failed": failed}


def _canaries(sweep: Sweep, sched: Scheduler, paths: SweepPaths, todo: list[Run], after: Dependency | None,
              out) -> list[tuple[SlurmConfig, str | None]]:
    """Queue a canary per resource set of the runs (``canary_sets``: a [[slurm.when]] rule's other
    setup lines, GPUs or partition are proven too), or, locally, run each and wait. Returns
    [(resources, job id or None)]."""
    data = None if sweep.planned else sweep.data  # a pipeline's dataset is built after the canary
    paths.logs.mkdir(parents=True, exist_ok=True)
    return [(cfg, submit_canary(sched, cfg, CanaryJob(data, device, run.config["cell"]), paths.logs, sweep.path.stem,
                                after, out)) for cfg, device, run in canary_sets(todo, sweep.resources, sched)]


def _dry_run(sweep: Sweep, paths: SweepPaths, sched: Scheduler, max_parallel: int, out,
             after: Dependency | None = None) -> dict:
    """What submit() would do, down to the sbatch scripts, run by run: each run's values as it
    trains (command-line overrides applied), what becomes of it (start, continue from epoch E,
    skip, or fail, which refuses the submission) and why. Changes nothing."""
    kind = sched.kind
    # A dry run also works away from the data (e.g. on a laptop); a pipeline's planned dataset is
    # checked as planned.
    checked = sweep.planned is not None or Path(sweep.data).exists()
    if checked:
        validate(sweep, paths.root, kind, create=False)
    for note in sweep.notes:
        out(f"warning: {note}")
    if sweep.overrides:
        out(f"every run: {json.dumps(sweep.overrides)} (command line)")
    plans = review(sweep, load_state(paths.root))
    out(f"# {len(plans)} run(s), with the values they train with:")
    for p in plans:
        out(f"{p.run.name}: {json.dumps(p.run.grid)}")
    out(f"# what a submission to {paths.root} does with each:")
    for p in plans:
        out(f"{p.action} {p.run.name}: {p.why}")
    if not checked:
        out(f"# {sweep.data} is not here: the runs were not checked against the dataset (its parameters, artists "
            f"and id); a submission checks them")
    todo = [p.run for p in plans if p.action in ("start", "continue")]
    failing = [p for p in plans if p.action == "fail"]
    skipped = {p.run.name: p.why for p in plans if p.action == "skip"}
    scripts = []
    if not sched.foreground and todo:
        arrays = job_arrays(todo, sched)
        for i, runs in enumerate(arrays):
            scripts.append(sched.script(sweep.resources(runs[0]), paths.logs, sweep.path.stem, len(runs), after))
            out(f"# sbatch script {i + 1} of {len(arrays)}: {len(runs)} run(s), {runs[0].name} .. {runs[-1].name}")
            out(scripts[-1])
    elif todo:
        out(f"# {len(todo)} run(s) for the {kind} executor, at most {max_parallel} at a time, on this machine and in "
            f"the foreground: the submission returns when they end; job logs in {paths.logs}; no sbatch script")
    elif not failing:
        out("nothing to submit")
    if failing:
        out(f"# {len(failing)} run(s) would fail: the submission would be refused, nothing queued "
            f"({', '.join(p.run.name for p in failing)})")
    return {"submitted": [], "skipped": skipped, "runs": [r.name for r in sweep.runs], "todo": [r.name for r in todo],
            "failing": {p.run.name: p.why for p in failing},
            "plan": {p.run.name: {"action": p.action, "why": p.why, "from_epoch": p.from_epoch, "epochs": p.epochs}
                     for p in plans},
            "executor": kind, "scripts": scripts, "notes": list(sweep.notes)}


def _submit_queued(sched: Scheduler, arrays: list[list[Run]], sweep: Sweep, paths: SweepPaths,
                   after: Dependency | None = None, canaries: list[tuple[SlurmConfig, str | None]] = ()):
    """One sbatch call per array, each behind ``after`` and the canary of its resources."""
    from gruv_hpc.generation.tensorboard import training_hooks
    from gruv_hpc.training.job import TrainJob
    jobs = []
    for runs in arrays:
        res = sweep.resources(runs[0])
        mine = after_canary(after, [c for cfg, c in canaries if cfg == res])
        jobs += sched.submit([TrainJob(str(paths.run(run.name).root), run.config, hooks=training_hooks()) for run in runs],
                             res, paths.logs, sweep.path.stem, mine)
    return jobs


def _run_locally(todo, sweep, paths, sched: Scheduler, state, sub, max_parallel, progress, out) -> list[str]:
    """A foreground scheduler's jobs, at most ``max_parallel`` runs at a time; blocks until all end.
    Returns the runs that failed. Ctrl-C (or TERM) stops every running run at its next step
    boundary with a checkpoint, marks the rest cancelled, and says how to resume."""
    from gruv_hpc.generation.tensorboard import training_hooks
    from gruv_hpc.training.job import TrainJob
    from gruv_hpc.progress import progress as progress_bar
    threads = max(1, available_cpus() // max(1, max_parallel))  # the allocation's CPUs, not the host's
    inline = sched.inline  # each job runs inside this process: one at a time
    pending, running, failed = list(todo), [], []
    out(f"running {len(todo)} run(s) here, {max_parallel} at a time; this command returns when they end "
        f"(Ctrl-C stops them with a checkpoint). From another terminal: gruv sweep status {paths.root}")
    bar = progress_bar(total=len(todo), unit="run", desc="sweep", disable=not progress, interval_s=None)
    term = signal.signal(signal.SIGTERM, _raise_interrupt)  # gruv sweep cancel or kill: as Ctrl-C
    try:
        while pending or running:
            while pending and len(running) < max(1, max_parallel):
                run = pending.pop(0)
                rp = paths.run(run.name)
                if rp.cancelled.exists() and rp.cancelled.stat().st_mtime >= sub["time"]:
                    out(f"run {run.name}: cancelled before it started")
                    failed.append(run.name)
                    bar.update(1)
                    continue
                rp.cancelled.unlink(missing_ok=True)
                [job] = sched.submit([TrainJob(str(rp.root), run.config, threads=threads, hooks=training_hooks())], sweep.resources(run),
                                     paths.logs, sweep.path.stem)
                state.runs[run.name].jobs.append(JobRecord(str(job.job_id), sched.kind, time.time(), sched.pid(job)))
                sub["job_ids"].append(str(job.job_id))
                state.save()
                running.append((run, job))
                if inline:
                    break
            time.sleep(0 if inline else 0.2)
            for run, job in list(running):
                if job.done():
                    running.remove((run, job))
                    try:
                        job.result()
                    except Exception as e:  # noqa: BLE001 - reported, the other runs go on
                        failed.append(run.name)
                        # a task killed by a signal (the OOM killer's SIGKILL) says so: its
                        # exception only says it produced no output
                        why = None if paths.run(run.name).error.exists() else sched.ended(paths.logs, str(job.job_id))
                        out(f"run {run.name} failed: {why or (str(e).strip().splitlines()[-1] if str(e).strip() else e)}")
                    bar.update(1)
            bar.set_postfix(running=len(running), failed=len(failed))
    except KeyboardInterrupt:
        bar.close()
        _stop_all(sched, running, pending, paths, out)
        raise SweepInterrupted(f"stopped; {len(running)} run(s) checkpointed, {len(pending)} not started. "
                               f"Resume with: gruv sweep submit {sweep.path} --out {paths.root}") from None
    finally:
        signal.signal(signal.SIGTERM, term)
    bar.close()
    return failed


class SweepInterrupted(GruvError):
    exit_code = 130


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _stop_all(sched: Scheduler, running, pending, paths: SweepPaths, out) -> None:
    out(f"stopping {len(running)} running run(s) at their next step, with a checkpoint ...")
    for run, _ in running:
        mark_cancelled(paths.run(run.name), "Ctrl-C on gruv sweep submit")
    for run in pending:
        mark_cancelled(paths.run(run.name), "Ctrl-C on gruv sweep submit")
    sched.cancel([str(job.job_id) for _, job in running])
