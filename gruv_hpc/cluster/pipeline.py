"""``gruv pipeline submit PIPELINE.toml --out DIR``: corpus -> dataset -> trained grid -> report, in
one submission. On Slurm the three stages are queued at once, each behind the one before:

1. preprocess: the corpus into DIR/data, a job array of ``jobs`` tasks and a merge job
   (``gruv_hpc.cluster.preprocess``);
2. train: the sweep into DIR/sweep, its job arrays held by ``--dependency=afterok:<merge>``. The
   dataset does not exist yet, so the sweep is validated against the *planned* one (its
   parameters from the preprocess options, its artists from the plan); each training job
   resolves its config against the real manifest when it starts, and records its identity;
3. analysis: ``gruv analyze`` into DIR/report, one CPU job held by ``--dependency=afterany:<arrays>``.

Then the user may log out: the report appears when the grid ends. With the local executor the
same stages run in order, in the foreground.

Resubmitting resumes: a complete dataset of the same plan is not rebuilt (a build in progress is
waited for, a stopped one resumed); the sweep skips done and queued runs and resumes the others;
the analysis runs again when a run trained since the report, or the report is missing. Jobs an
earlier submission left waiting on a preprocessing that failed are cancelled first.

The pipeline file (TOML; relative paths are relative to the current directory, as on the
command line; ``jobs/pipeline_demo.toml`` is an annotated example)::

    [corpus]                # ARTIST = "FOLDER", one per artist
    [preprocess]            # PreprocessConfig keys, plus jobs and split_file
    [preprocess.slurm]      # SlurmConfig of the preprocessing jobs
    [sweep]                 # a sweep file's train/grid/slurm tables (no data: the dataset is DIR/data)
    # or, at the top:  sweep = "SWEEP_FILE"   (its data key is replaced by DIR/data)
    [analysis]              # hidden, seed_clips, seed_seconds, max_clips, temperature (as gruv analyze)
    [analysis.slurm]        # SlurmConfig of the analysis job

Overrides on the command line name the table: ``corpus.ARTIST=DIR``, ``preprocess.KEY=v``,
``preprocess.slurm.KEY=v``, ``sweep.KEY=v`` (a train key), ``sweep.grid.KEY=v1,v2`` (a grid axis)
and ``sweep.slurm.KEY=v``, ``analysis.KEY=v``, ``analysis.slurm.KEY=v``.

``dry_run`` shows what ``submit`` would do, stage by stage, and writes nothing.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from submitit.helpers import Checkpointable

from gruv_hpc.cluster import preprocess as PJ
from gruv_hpc.dataset.adequacy import planned_manifest
from gruv_hpc.dataset.config import PreprocessConfig
from gruv_hpc.cluster.config import SlurmConfig
from gruv_hpc.cluster.executors import scheduler
from gruv_hpc.cluster.pipeline_state import (AnalysisStage, PipelineState, PreprocessStage, Submission, TrainStage,
                                             load_state)
from gruv_hpc.cluster.scheduler import ACTIVE, Dependency
from gruv_hpc.config import build, check_number, field_names, opt, parse_overrides, read_file, table
from gruv_hpc.errors import ConfigError, DatasetError, GruvError
from gruv_hpc.fsio import atomic_write_text
from gruv_hpc.lock import Lock, pid_alive
from gruv_hpc.paths import BuildPaths, PipelinePaths
from gruv_hpc.dataset.build import same_plan, dataset_diffs, parse_sources, plan, read_staging_plan

TOP_KEYS = ("corpus", "preprocess", "sweep", "analysis")
# gruv analyze needs one process, a little memory for the generated audio, and no GPU.
ANALYSIS_SLURM_DEFAULTS = {"time_min": 60, "cpus_per_task": 2, "mem_gb": 4.0, "signal_delay_s": 60}


@dataclass
class PreprocessOptions:
    jobs: int = opt(1, "preprocessing tasks: the songs split into N parts of about equal audio, run at once")
    split_file: str | None = opt(None, "take the train/dev split from this file (gruv preprocess --split-file)")

    def validate(self) -> None:
        if self.jobs < 1:
            raise ConfigError(f"jobs: must be >= 1, got {self.jobs}")


@dataclass
class AnalysisConfig:
    hidden: int | None = opt(None, "hidden size of figures 1 and 3; None = the largest")
    seed_clips: int = opt(2, "dev clips each run continues, for the generated audio (not the grid's random seeds)")
    seed_seconds: float = opt(10.0, "seconds of each seed")
    max_clips: int = opt(64, "dev clips averaged in figure 3")
    temperature: float = opt(0.0, "sample the continuations at this temperature (gruv generate --temperature); "
                             "0: the mean prediction, the paper's")

    def validate(self) -> None:
        if self.hidden is not None and self.hidden < 1:
            raise ConfigError(f"hidden: must be >= 1, got {self.hidden}")
        if self.seed_clips < 0 or self.max_clips < 1:
            raise ConfigError(f"seed_clips must be >= 0 and max_clips >= 1, got {self.seed_clips} and {self.max_clips}")
        check_number("seed_seconds", self.seed_seconds, positive=True)
        check_number("temperature", self.temperature)


@dataclass
class Pipeline:
    path: Path
    text: str
    corpus: dict[str, Path]
    preprocess: PreprocessConfig
    options: PreprocessOptions
    preprocess_slurm: SlurmConfig
    sweep: object  # sweep.Sweep, its data = DIR/data
    analysis: AnalysisConfig
    analysis_slurm: SlurmConfig


# ---------------------------------------------------------------------------------------------
# The file

OVERRIDE_PREFIXES = ("preprocess.slurm.", "analysis.slurm.", "corpus.", "preprocess.", "sweep.", "analysis.")


def _overrides(items) -> dict:
    groups: dict = {p: {} for p in OVERRIDE_PREFIXES}
    for k, v in parse_overrides(list(items)).items():
        prefix = next((p for p in OVERRIDE_PREFIXES if k.startswith(p) and len(k) > len(p)), None)
        if prefix is None:
            raise ConfigError(f"override {k}={v}: expected corpus.ARTIST, preprocess.KEY, preprocess.slurm.KEY, "
                              "sweep.KEY (a train key, grid.KEY or slurm.KEY), analysis.KEY or analysis.slurm.KEY")
        groups[prefix][k[len(prefix):]] = v
    return groups


def load_pipeline(path: str | Path, root: str | Path, overrides=()) -> Pipeline:
    """Parse, override and type-check a pipeline file for DIR ``root``. Reads the corpus folders'
    names and the sweep file, nothing else: the dataset need not exist."""
    path, paths = Path(path), PipelinePaths(root)
    raw = read_file(path)
    text = path.read_text()
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; valid: {', '.join(TOP_KEYS)}")
    ov = _overrides(overrides)

    corpus = {**table(raw, "corpus", str(path)), **ov["corpus."]}
    if not corpus:
        raise ConfigError(f"{path} [corpus]: no artist; expected lines ARTIST = \"FOLDER\"")
    for a, d in corpus.items():
        if not isinstance(d, str):
            raise ConfigError(f"{path} [corpus] {a}: expected a folder name, got {d!r}")
    try:
        sources = parse_sources([f"{a}={d}" for a, d in corpus.items()])
    except DatasetError as e:
        raise ConfigError(f"{path} [corpus]: {e}") from None

    pre = table(raw, "preprocess", str(path))
    pre_slurm = table(pre, "slurm", f"{path} [preprocess]")
    pre.pop("slurm", None)
    ours, theirs = field_names(PreprocessOptions), field_names(PreprocessConfig)
    valid = [*theirs, *ours, "slurm"]
    for keys, where in ((pre, f"{path} [preprocess]"), (ov["preprocess."], "the command line (preprocess.)")):
        bad = [k for k in keys if k not in valid]
        if bad:
            raise ConfigError(f"unknown key(s) {', '.join(map(repr, bad))} in {where}; valid keys: {', '.join(valid)}")
    pick = lambda d, names: {k: v for k, v in d.items() if k in names}  # noqa: E731
    pcfg = build(PreprocessConfig, pick(pre, theirs), pick(ov["preprocess."], theirs), source=f"{path} [preprocess]")
    popt = build(PreprocessOptions, pick(pre, ours), pick(ov["preprocess."], ours), source=f"{path} [preprocess]")
    pslurm = PJ.slurm_config(pre_slurm, ov["preprocess.slurm."], source=f"{path} [preprocess.slurm]")

    sweep = _load_sweep(raw, path, text, paths, ov)

    an = table(raw, "analysis", str(path))
    an_slurm = table(an, "slurm", f"{path} [analysis]")
    an.pop("slurm", None)
    acfg = build(AnalysisConfig, an, ov["analysis."], source=f"{path} [analysis]")
    aslurm = build(SlurmConfig, {**ANALYSIS_SLURM_DEFAULTS, **an_slurm}, ov["analysis.slurm."],
                   source=f"{path} [analysis.slurm]")
    if aslurm.gpus_per_node:  # the analysis runs its models on the CPU: the GPUs would sit idle, and be charged
        raise ConfigError(f"{path} [analysis.slurm]: gpus_per_node={aslurm.gpus_per_node}, but the analysis runs on "
                          "the CPU; set it to 0 (or leave it out)")
    return Pipeline(path, text, sources, pcfg, popt, pslurm, sweep, acfg, aslurm)


def _load_sweep(raw: dict, path: Path, text: str, paths: PipelinePaths, ov: dict):
    from gruv_hpc.cluster.sweep.spec import sweep_from_table
    sw = raw.get("sweep")
    if sw is None:
        raise ConfigError(f"{path}: no sweep; give a [sweep] table (train, grid, slurm) or sweep = \"SWEEP_FILE\"")
    if isinstance(sw, str):
        file = Path(sw)
        table = {k: v for k, v in read_file(file).items() if k != "data"}  # the dataset is the pipeline's
        where, stext = str(file), file.read_text()
    elif isinstance(sw, dict):
        if "data" in sw:
            raise ConfigError(f"{path} [sweep] data: the pipeline's dataset is {paths.data}; remove this key")
        file, table, where, stext = path, dict(sw), f"{path} [sweep]", text
    else:
        raise ConfigError(f"{path}: sweep: expected a table or the name of a sweep file, got {sw!r}")
    if "data" in ov["sweep."]:
        raise ConfigError(f"sweep.data: the pipeline's dataset is {paths.data}; it cannot be overridden")
    cli = [f"{k}={v}" for k, v in ov["sweep."].items()]
    return sweep_from_table({**table, "data": str(paths.data)}, file, stext, cli, where)


# ---------------------------------------------------------------------------------------------
# Submit

def _queued_now(sub: Submission) -> list[str]:
    """The jobs ``sub`` queued itself (not the live ones of earlier submissions it waits on)."""
    pre = [j for j in (sub.preprocess.array, sub.preprocess.merge) if j] if sub.preprocess.state == "submitted" else []
    return [*pre, *(sub.train.job_ids or []), *([sub.analysis.job] if sub.analysis.job and not sub.analysis.skipped else [])]


def _nothing_ran(sub: Submission) -> bool:
    """No stage of ``sub`` has recorded anything yet."""
    return all(stage.to_json() == type(stage)().to_json() for stage in (sub.preprocess, sub.train, sub.analysis))


def submit(pipeline_file, out_dir, executor: str = "auto", overrides=(), max_parallel: int = 2, progress: bool = True,
           say=print, canary: bool = False) -> dict:
    """Validate everything, then submit (Slurm) or run (local) what is left to do. Returns the
    submission's record, as pipeline.json keeps it (``Submission.to_json``). ``canary``: a short
    job with the training resources proves the environment first (``cluster.canary``)."""
    if not isinstance(max_parallel, int) or max_parallel < 1:
        raise ConfigError(f"--max-parallel: must be >= 1, got {max_parallel}")
    paths = PipelinePaths(Path(out_dir).expanduser().resolve())
    pl = load_pipeline(pipeline_file, paths.root, overrides)
    sched = scheduler(executor)
    kind = sched.kind
    checked = sched.check(requests(pl))  # every stage's jobs against the cluster, before anything is queued
    if checked:
        say(checked)
    try:
        paths.root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GruvError(f"--out {paths.root}: cannot make it ({e.strerror})") from None
    with Lock(paths.lock, f"pipeline {paths.root} (a submission)"):
        atomic_write_text(paths.spec, pl.text)
        state = load_state(paths)
        sub = Submission(time.time(), kind, socket.gethostname(), os.getpid(), str(pl.path.resolve()), list(overrides))
        prev = state.last
        state.submissions.append(sub)
        try:
            if sched.foreground:
                return _run_local(pl, paths, state, sub, max_parallel, progress, say, canary).to_json()
            return _submit_slurm(pl, paths, state, sub, prev, say, canary).to_json()
        except BaseException:
            if _nothing_ran(sub) or not sched.foreground:
                # Refused (sbatch said no to a later stage): not a submission. What it had queued
                # already is cancelled, so no half pipeline runs unrecorded (a preprocessing with
                # no analysis behind it); the next submission queues it all again.
                queued = [*sub.canaries, *_queued_now(sub)]
                if queued:
                    sched.cancel(queued)
                    say(f"cancelled what this submission had queued: job(s) {', '.join(queued)}")
                state.submissions.remove(sub)
                if paths.state.exists():
                    state.save()
            raise


def requests(pl: Pipeline) -> dict[str, SlurmConfig]:
    """Every job request of the pipeline, named for errors: the preprocessing tasks', the runs'
    (each distinct one) and the analysis job's."""
    inline = pl.sweep.path == pl.path  # a [sweep] table, not a sweep file of its own
    named = {f"{pl.path} [slurm]": f"{pl.path} [sweep.slurm]", f"{pl.path} [[slurm.when]]": f"{pl.path} [[sweep.slurm.when]]"}
    runs = {}
    for k, v in pl.sweep.requests().items():
        old = next((o for o in named if inline and k.startswith(o)), None)
        runs[named[old] + k[len(old):] if old else k] = v
    return {f"{pl.path} [preprocess.slurm]": pl.preprocess_slurm, **runs, f"{pl.path} [analysis.slurm]": pl.analysis_slurm}


def _canary(pl: Pipeline, paths: PipelinePaths, pre: dict, sched, say) -> list[str]:
    """A canary per resource set of the runs (``canary_sets``): the corpus folders readable where
    the dataset is to be built, else the dataset opens (a queueing scheduler: their job ids;
    locally each runs now)."""
    from gruv_hpc.cluster.canary import CanaryJob, canary_sets, submit_canary
    build = pre["state"] == "build"
    paths.logs.mkdir(parents=True, exist_ok=True)
    ids = [submit_canary(sched, cfg, CanaryJob(None if build else str(paths.data), device, run.config["cell"],
                                               tuple(str(d) for d in pl.corpus.values()) if build else ()),
                         paths.logs, f"gruv-{paths.root.name}", None, say)
           for cfg, device, run in canary_sets(pl.sweep.runs, pl.sweep.resources, sched)]
    return [i for i in ids if i]


def _preprocess_plan(pl: Pipeline, paths: PipelinePaths, kind: str, dry: bool = False) -> tuple[dict, dict | None]:
    """What the preprocess stage will do, decided before anything is queued: ({"state": "complete"
    (the dataset is built, of the same plan: nothing to do), "live" (a Slurm build of the same
    plan runs: wait for it), or "build"}, the planned manifest when the dataset is not built yet).
    ``dry``: reading only (a dry run)."""
    out = paths.data
    live = PJ.live_build(out, cancel_dead=not dry)  # (cancels a merge job that can never start)
    p = plan(pl.corpus, pl.preprocess, pl.options.split_file)  # planned once: the build takes this plan
    # with the songs as their headers give them: the sweep warns of thin data before anything is queued
    planned = planned_manifest(p)
    if live:
        staged = read_staging_plan(BuildPaths(out).staging)
        ids = ", ".join([*live["tasks"].values(), live["merge"]])
        local = scheduler(kind).foreground
        if local or staged is None or not same_plan(staged[0], p):
            raise DatasetError(f"{out} is being built by Slurm job(s) {ids}" + ("" if local else
                               " from other songs or parameters") + "; wait for them to end, or scancel them")
        return {"state": "live", "tasks": live["tasks"], "array": live["array"], "merge": live["merge"]}, planned
    diffs = dataset_diffs(out, p)
    if diffs == []:
        return {"state": "complete"}, None
    if diffs:
        raise DatasetError(f"{out} holds a dataset of other songs or parameters ({'; '.join(diffs)}), which the runs "
                           f"in {paths.sweep.root} were trained on; submit this pipeline with another --out")
    return {"state": "build", "plan": p}, planned


def _preprocess_run(pl: Pipeline, paths: PipelinePaths, pre: dict, kind: str, progress: bool, say,
                    after: Dependency | None = None) -> PreprocessStage:
    """Carry out ``_preprocess_plan``'s decision; returns the stage's record."""
    out = paths.data
    if pre["state"] == "live":
        say(f"preprocess: in progress (merge job {pre['merge']}); training waits for it")
        return PreprocessStage(**pre)
    if pre["state"] == "complete":
        say(f"preprocess: {out} is built from the same songs and parameters: skipped")
        return PreprocessStage(**pre)
    res = PJ.build(pl.corpus, out, pl.preprocess, jobs=pl.options.jobs, executor=kind, slurm=pl.preprocess_slurm,
                   split_file=pl.options.split_file, progress=progress, wait=False, logs=paths.logs, say=say,
                   planned=pre["plan"], after=after, check=False)
    if scheduler(kind).foreground:
        return PreprocessStage("built", res["tasks"], ran=res["ran"])
    s = res["submission"]
    return PreprocessStage("submitted", s["tasks"], s["array"], s["merge"], n_tasks=res["tasks"])


def _validate_sweep(pl: Pipeline, paths: PipelinePaths, kind: str, planned: dict | None) -> None:
    """The sweep against the dataset as planned (or as built), before anything is queued."""
    from gruv_hpc.cluster import sweep as sw
    pl.sweep.planned = planned
    sw.validate(pl.sweep, paths.sweep.root, kind)


def _submit_slurm(pl: Pipeline, paths: PipelinePaths, state: PipelineState, sub: Submission, prev: Submission | None,
                  say, canary: bool = False) -> Submission:
    """The three stages queued at once, each behind the one before (a queueing scheduler: Slurm)."""
    from gruv_hpc.cluster import sweep as sw
    from gruv_hpc.cluster.canary import after_canary
    from gruv_hpc.cluster.sweep.status import sweep_infos
    sched = scheduler(sub.executor)
    pre, planned = _preprocess_plan(pl, paths, sched.kind)
    _validate_sweep(pl, paths, sched.kind, planned)
    if canary:
        sub.canaries = _canary(pl, paths, pre, sched, say)
        sub.canary = sub.canaries[0] if sub.canaries else None
    pre = sub.preprocess = _preprocess_run(pl, paths, pre, sched.kind, False, say, after_canary(None, sub.canaries))
    state.save()
    _cancel_dead_dependents(prev, say)

    after = after_canary(Dependency(after_ok=(pre.merge,)) if pre.merge else None, sub.canaries)
    res = sw.submit(pl.sweep, paths.sweep.root, executor=sched.kind, progress=False, out=say, after=after, check=False)
    sstate = sw.load_state(paths.sweep.root)
    new_ids = [sstate.runs[n].job.job_id for n in res["submitted"]]
    infos = sweep_infos(sstate)
    live = sorted({r.job.job_id for r in sstate.runs.values() if r.job and r.job.executor == sched.kind
                   and (r.job.job_id in new_ids or (infos.get(r.job.job_id) and infos[r.job.job_id].state in ACTIVE))})
    sub.train = TrainStage(res["submitted"], res["skipped"], new_ids, str(after) if after else None, live)
    sub.stage = "analysis"
    state.save()

    # Analysis: after every live training job (whatever their end), or the merge when nothing trains.
    old = prev.analysis.job if prev and prev.executor == sched.kind else None
    old_state = sched.states([old]).get(old) if old else None
    old_state = old_state.state if old_state else None
    an = AnalysisStage(queued=True)
    if old_state == "RUNNING" and not res["submitted"]:
        an.skipped, an.job = f"job {old} is RUNNING", old
    else:
        if old_state in ACTIVE:
            sched.cancel_and_wait([old])  # it would analyse too early; a new one waits for the new runs
        why = ("runs are training" if live else None) or report_stale(paths)
        if why:
            dep = Dependency(after_ok=tuple(j for j in (pre.merge, *sub.canaries) if j),
                             after_any=tuple(sorted({j.split('_')[0] for j in live})))
            an.job, an.dependency, an.why = _submit_analysis(sched, pl, paths, dep), str(dep) or None, why
            say(f"analysis: job {an.job}" + (f" after {an.dependency}" if an.dependency else "")
                + f"; the report will be {paths.report_index}")
        else:
            an.skipped = "the report is up to date"
            say(f"analysis: the report is up to date: {paths.report_index}")
    sub.analysis = an
    sub.stage = "submitted"
    state.save()
    say(f"follow it with: gruv pipeline status {paths.root}")
    return sub


def _cancel_dead_dependents(prev: Submission | None, say) -> None:
    """Jobs an earlier submission queued behind a merge job that will never run (a task failed,
    or the merge itself did) would wait forever, and hold their runs as PENDING: cancel them."""
    merge = prev.preprocess.merge if prev else None
    if not merge or scheduler(prev.executor).foreground:
        return
    sched = scheduler(prev.executor)
    waiting = [*(prev.train.job_ids or []), *([prev.analysis.job] if prev.analysis.job else [])]
    infos = sched.states([merge, *waiting])
    m = infos[merge].state if merge in infos else None
    if m in ACTIVE or m == "COMPLETED" or m is None:
        return
    dead = [j for j in waiting if j in infos and infos[j].state == "PENDING"]
    if dead:
        sched.cancel_and_wait(dead)
        say(f"cancelled {len(dead)} job(s) left waiting on merge job {merge}, which ended {m}")


def _submit_analysis(sched, pl: Pipeline, paths: PipelinePaths, after: Dependency | None) -> str:
    [job] = sched.submit([AnalyzeJob(str(paths.root), asdict(pl.analysis))], pl.analysis_slurm, paths.logs,
                         f"gruv-analyze-{paths.root.name}", after or None)
    return job.job_id


def _run_local(pl: Pipeline, paths: PipelinePaths, state: PipelineState, sub: Submission, max_parallel: int,
               progress: bool, say, canary: bool = False) -> Submission:
    """The three stages in order, in this process (the sweep's runs as local jobs)."""
    from gruv_hpc.cluster import sweep as sw
    pre, planned = _preprocess_plan(pl, paths, sub.executor)
    _validate_sweep(pl, paths, sub.executor, planned)
    if canary:
        _canary(pl, paths, pre, scheduler(sub.executor), say)  # raises when it failed: nothing else runs
    state.save()
    sub.preprocess = _preprocess_run(pl, paths, pre, sub.executor, progress, say)
    sub.stage = "train"
    state.save()
    pl.sweep.planned = None  # built: the sweep validates against the real manifest
    res = sw.submit(pl.sweep, paths.sweep.root, executor=sub.executor, max_parallel=max_parallel, progress=progress,
                    out=say, check=False)
    sub.train = TrainStage(res["submitted"], res["skipped"], failed=res.get("failed", []))
    sub.stage = "analysis"
    state.save()
    why = report_stale(paths)
    if why:
        say(f"analysis ({why}) ...")
        run_analysis(paths, pl.analysis, log=say)
        sub.analysis = AnalysisStage(ran=True, why=why)
    else:
        sub.analysis = AnalysisStage(skipped="the report is up to date")
        say("analysis: the report is up to date")
    say(f"report: {paths.report_index}")
    sub.stage = "done"
    state.save()
    return sub


# ---------------------------------------------------------------------------------------------
# Dry run

def dry_run(pipeline_file, out_dir, executor: str = "auto", overrides=(), max_parallel: int = 2, say=print) -> dict:
    """What ``submit`` would do, stage by stage: on Slurm each stage's sbatch script(s) and what
    it waits for (job ids that do not exist yet are named in capitals: PREPROCESS_TASKS, MERGE,
    TRAIN_ARRAYS); locally, what runs here, in order. Checks what submit checks first (the file, the corpus, the dataset in DIR,
    the sweep against the planned dataset, each run against what it was trained with). Reads
    only: DIR is not made, no lock taken, no job cancelled, nothing written. Returns
    {"executor", "dir", "preprocess", "train" (the sweep's dry run), "analysis"}, each stage's
    "scripts" among them."""
    from gruv_hpc.cluster import sweep as sw
    from gruv_hpc.cluster.sweep.status import sweep_infos
    if not isinstance(max_parallel, int) or max_parallel < 1:
        raise ConfigError(f"--max-parallel: must be >= 1, got {max_parallel}")
    paths = PipelinePaths(Path(out_dir).expanduser().resolve())
    pl = load_pipeline(pipeline_file, paths.root, overrides)
    sched = scheduler(executor)
    kind, local = sched.kind, sched.foreground
    checked = sched.check(requests(pl))  # as submit: every stage's jobs against the cluster
    if checked:
        say(checked)
    pre, planned = _preprocess_plan(pl, paths, kind, dry=True)
    pl.sweep.planned = planned
    say(f"# pipeline {pl.path} into {paths.root}, {kind} executor: " + (
        "the three stages run here, in order, in the foreground" if local else
        "the three stages are queued at once, each behind the one before (job ids not known before "
        "submission are named in capitals)"))

    say(f"# stage 1 of 3: preprocess {', '.join(pl.corpus)} -> {paths.data}")
    merge = None
    stage1 = {"state": pre["state"], "scripts": []}
    if pre["state"] == "complete":
        say(f"preprocess: {paths.data} is built from the same songs and parameters: skipped")
    elif pre["state"] == "live":
        merge = pre["merge"]
        say(f"preprocess: in progress (merge job {merge}); training waits for it")
    else:
        p = pre["plan"]
        n = max(1, min(pl.options.jobs, len(p.songs)))  # (as start_build: no more tasks than songs)
        stage1.update(songs=len(p.songs), tasks=n)
        say(f"preprocess: {len(p.songs)} song(s) of {len(p.artists)} artist(s) in {n} task(s), then a merge "
            f"(tasks a stopped build of the same plan finished are kept)")
        if local:
            say(f"# runs here: {n} process(es) write their shards into {BuildPaths(paths.data).staging}, then the "
                f"merge moves the dataset into {paths.data}")
        else:
            tasks = sched.script(pl.preprocess_slurm, paths.logs, f"gruv-preprocess-{paths.data.name}", n)
            dep = Dependency(after_ok=("PREPROCESS_TASKS",))
            merge_script = sched.script(pl.preprocess_slurm, paths.logs, f"gruv-merge-{paths.data.name}", 1, dep)
            say(f"# sbatch script: preprocess tasks ({n} task(s)), waiting for nothing")
            say(tasks)
            say(f"# sbatch script: merge, waiting for {dep}")
            say(merge_script)
            stage1["scripts"] = [tasks, merge_script]
            merge = "MERGE"

    say(f"# stage 2 of 3: train {len(pl.sweep.runs)} run(s) -> {paths.sweep.root}"
        + (f", waiting for afterok:{merge}" if merge and not local else ""))
    after = Dependency(after_ok=(merge,)) if merge and not local else None
    train = sw.submit(pl.sweep, paths.sweep.root, executor=kind, dry_run=True, max_parallel=max_parallel, out=say, check=False,
                      after=after)

    say(f"# stage 3 of 3: analysis -> {paths.report}")
    stage3 = {"scripts": []}
    stale = report_stale(paths)
    if local:
        stage3["runs"] = bool(train["todo"] or stale)
        say(f"# runs here, last: gruv analyze {paths.sweep.root} --out {paths.report}" if stage3["runs"] else
            "analysis: the report is up to date: skipped")
    else:
        sstate = sw.load_state(paths.sweep.root)
        infos = sweep_infos(sstate)
        live = sorted({r.job.job_id.split("_")[0] for r in sstate.runs.values() if r.job and r.job.executor == kind
                       and infos.get(r.job.job_id) and infos[r.job.job_id].state in ACTIVE})
        arrays = ("TRAIN_ARRAYS",) if train["todo"] else ()
        if not (arrays or live or stale):
            say("analysis: the report is up to date: skipped")
        else:
            dep = Dependency(after_ok=(merge,) if merge else (), after_any=(*arrays, *live))
            script = sched.script(pl.analysis_slurm, paths.logs, f"gruv-analyze-{paths.root.name}", 1, dep or None)
            say(f"# sbatch script: analysis, waiting for {dep or 'nothing'}")
            say(script)
            stage3["scripts"] = [script]
    return {"executor": kind, "dir": str(paths.root), "preprocess": stage1, "train": train, "analysis": stage3}


# ---------------------------------------------------------------------------------------------
# Analysis

def report_stale(paths: PipelinePaths) -> str | None:
    """Why the report must be made (again), or None: it is missing, or a run trained since."""
    from gruv_hpc.cluster.sweep import load_state as sweep_state
    if not paths.report_index.is_file():
        return "no report yet"
    made = paths.report_index.stat().st_mtime
    st = sweep_state(paths.sweep.root)
    for name in st.runs:
        rp = st.run_paths(name)
        for f in (rp.done, rp.metrics):
            if f.exists() and f.stat().st_mtime > made:
                return f"run {name} trained since the report"
    return None


def run_analysis(paths: PipelinePaths, cfg: AnalysisConfig, log=print) -> dict:
    """``gruv analyze DIR/sweep --out DIR/report`` (``analyze_atomic``: written beside and renamed
    into place whole; an analysis killed half-way leaves the previous report as it was)."""
    from gruv_hpc.analysis.report import analyze_atomic
    from gruv_hpc.training import distributed
    distributed.flush_denormals()  # side effect, stated: the stage's entry point (here or as AnalyzeJob)
    # gruv analyze's own path: the same lock on the report, so a user's analysis of it meanwhile
    # (or an overlapping submission's) fails at once naming this job, never mixes with it
    from gruv_hpc.cluster.sweep import analysis_listing
    summary = analyze_atomic(paths.sweep.root, paths.report, lambda: analysis_listing(paths.sweep.root), hidden=cfg.hidden, n_seed_clips=cfg.seed_clips,
                             seed_seconds=cfg.seed_seconds, max_clips=cfg.max_clips, temperature=cfg.temperature, log=log)
    return {"report": str(paths.report_index), "runs": len(summary.get("runs", [])), "timings_s": summary.get("timings_s")}


@dataclass(frozen=True)
class AnalyzeJob(Checkpointable):
    """Queued job: the pipeline's analysis. Requeued (preemption), it is resubmitted as it was
    submitted (submitit's Checkpointable; frozen: nothing else rides along) and starts over."""
    root: str
    options: dict  # AnalysisConfig as a dict

    def __call__(self) -> dict:
        return run_analysis(PipelinePaths(self.root), AnalysisConfig(**self.options))


# ---------------------------------------------------------------------------------------------
# Status and wait

def status(out_dir) -> dict:
    """Each stage of the last submission: preprocess (tasks done/total, the merge job), train (the
    sweep's runs by state), analysis (its job and the report)."""
    from gruv_hpc.cluster import sweep as sw
    paths = PipelinePaths(Path(out_dir).expanduser().resolve())
    state = load_state(paths)
    sub = state.last
    if sub is None:
        raise GruvError(f"{out_dir}: not a pipeline directory (no {paths.state.name}: nothing was submitted there)")
    sched = scheduler(sub.executor)
    local_live = sched.foreground and sub.stage != "done" and _alive_here(sub)

    pre = PJ.build_status(paths.data)
    if local_live and sub.stage == "preprocess" and pre["state"] != "COMPLETED":
        pre["state"] = "RUNNING"
    an_job = sub.analysis.job
    merge = None if pre["merge_job"] else sub.preprocess.merge  # (gone with the staging)
    infos = sched.states([j for j in (an_job, merge) if j])
    if merge:
        pre["merge_job"], pre["merge_state"] = merge, infos[merge].state if merge in infos else None
        pre["merge_reason"] = (infos[merge].reason or None) if merge in infos else None

    train = {"state": "NOT_SUBMITTED", "runs": 0, "by_state": {}}
    if sw.load_state(paths.sweep.root).runs:
        from gruv_hpc.cluster.sweep.status import count_reasons, count_states
        rows = sw.status(paths.sweep.root)
        # by state, and why the pending ones wait (Slurm's reasons), from the same rows as `gruv sweep status`
        train = {"runs": len(rows), "by_state": count_states(rows), "state": _overall([r["state"] for r in rows]),
                 "pending_reasons": count_reasons([r for r in rows if r["state"] == "PENDING"])}
        if local_live and sub.stage == "train" and train["state"] not in ACTIVE:
            train["state"] = "RUNNING"

    an = {"job": an_job, "job_state": infos[an_job].state if an_job in infos else None,
          "job_reason": (infos[an_job].reason or None) if an_job in infos else None,
          "report": str(paths.report_index), "report_exists": paths.report_index.is_file(), "stale": None}
    an["stale"] = report_stale(paths)
    if an["job_state"] in ACTIVE:
        an["state"] = an["job_state"]
    elif local_live and sub.stage == "analysis":
        an["state"] = "RUNNING"
    elif an["report_exists"] and not an["stale"]:
        an["state"] = "COMPLETED"
    elif an["job_state"]:
        an["state"] = an["job_state"] if an["job_state"] != "COMPLETED" else "STALE"
    else:
        an["state"] = "STALE" if an["report_exists"] else "NOT_SUBMITTED"
    from gruv_hpc.cluster.canary import failed_canary
    canary = failed_canary(sched, sub.canaries, paths.logs) if sub.canaries and not sched.foreground else None
    if canary:  # every stage waited on it: the preprocessing did not fail, it never ran
        for stage in (pre, train, an):
            if stage["state"] != "COMPLETED":
                stage["note"] = f"cancelled: {canary}; fix that and resubmit the pipeline"
    elif pre["state"] == "FAILED" and sub.executor == "slurm":
        # What waits on the dataset never runs: Slurm cancels it (--kill-on-invalid-dep), and so
        # does wait() where it has not yet. Say so rather than PENDING / "not yet".
        why = "the preprocessing failed" + (f" (merge job {pre['merge_job']} {pre['merge_state'] or 'never ran'})"
                                            if pre.get("merge_job") else "")
        for stage in (train, an):
            if stage["state"] != "COMPLETED":
                stage["note"] = f"cancelled, or being cancelled: {why}; resubmit the pipeline to build it again"
    return {"dir": str(paths.root), "executor": sub.executor, "submitted": sub.time,
            "submissions": len(state.submissions), "preprocess": pre, "train": train, "analysis": an}


def _overall(states: list[str]) -> str:
    if states and all(s == "COMPLETED" for s in states):
        return "COMPLETED"
    if "RUNNING" in states:
        return "RUNNING"
    if any(s in ACTIVE for s in states):
        return "PENDING"
    return "FAILED" if any(s in ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL") for s in states) \
        else "INCOMPLETE"


def _alive_here(sub: Submission) -> bool:
    return pid_alive(sub.pid, sub.host)


def format_status(st: dict) -> str:
    pre, train, an = st["preprocess"], st["train"], st["analysis"]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(st["submitted"]))
    why = lambda r: f" ({r})" if r else ""  # noqa: E731  Slurm's reason a job waits
    merge = f"; merge job {pre['merge_job']} {pre['merge_state'] or '-'}{why(pre.get('merge_reason'))}" \
        if pre.get("merge_job") else ""
    waits = ", ".join(f"{n} {r}" for r, n in (train.get("pending_reasons") or {}).items())
    runs = ", ".join(f"{n} {s}" + (why(waits) if s == "PENDING" else "")
                     for s, n in sorted(train["by_state"].items())) or "-"
    job = f"job {an['job']} {an['job_state'] or '-'}{why(an.get('job_reason'))}; " if an["job"] else ""
    report = an["report"] + ("" if an["report_exists"] else " (not yet)") + (f" ({an['stale']})" if an["report_exists"] and an["stale"] else "")
    note = lambda x: f" ({x['note']})" if x.get("note") else ""  # noqa: E731
    return "\n".join([
        f"pipeline {st['dir']} (submission {st['submissions']}, {when}, {st['executor']})",
        f"{'preprocess':<11} {pre['state']:<13} tasks {pre['tasks_done']}/{pre['tasks_total']} done{merge}; {pre['dataset']}"
        f"{note(pre)}",
        f"{'train':<11} {train['state']:<13} {train['runs']} run(s): {runs}{note(train)}",
        f"{'analysis':<11} {an['state']:<13} {job}report {report}{note(an)}",
    ] + [f"warning: {w}" for w in pre.get("warnings", [])])


def wait(out_dir, poll_s: float = 5.0, timeout_s: float | None = None, say=None) -> dict:
    """Until no stage can change any more: the analysis ended, or the preprocessing failed (what
    waits on it then never starts). Returns the last status."""
    t0, last = time.time(), None
    while True:
        st = status(out_dir)
        line = (st["preprocess"]["state"], st["train"]["state"], st["analysis"]["state"])
        if say and line != last:
            say(f"preprocess {line[0]}, train {line[1]} {st['train']['by_state']}, analysis {line[2]}")
            last = line
        if st["preprocess"]["state"] == "FAILED":
            state = load_state(PipelinePaths(Path(out_dir).expanduser().resolve()))
            _cancel_dead_dependents(state.last, say or (lambda *a: None))  # where Slurm has not yet
            if say:
                say(f"train and analysis: {st['train'].get('note') or 'cancelled: the preprocessing failed'}")
            return st
        if st["analysis"]["state"] not in ACTIVE:
            return st
        if timeout_s and time.time() - t0 > timeout_s:
            return st
        time.sleep(poll_s)
