"""A sweep's runs as rows (state, progress, losses, the traceback tail of failures), cancel, wait."""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from gruv_hpc.errors import GruvError
from gruv_hpc.fsio import atomic_write_json
from gruv_hpc.lock import pid_alive
from gruv_hpc.paths import RunPaths, metrics_problem, number, read_jsonl
from gruv_hpc.cluster.executors import scheduler
from gruv_hpc.cluster.scheduler import ACTIVE, JobInfo, log_path as job_log_path
from gruv_hpc.cluster.sweep.state import JobRecord, SweepState, load_state


# Every state a row can show: Slurm's own, and ours for runs Slurm does not know.
STATES = (*ACTIVE, "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
          "BOOT_FAIL", "DEADLINE", "UNKNOWN", "NOT_SUBMITTED")


def job_state(job: JobRecord | None, infos: dict[str, JobInfo]) -> str | None:
    """What is known of a run's last job, from its scheduler: Slurm's state (from ``infos``, one
    sacct call for the sweep: ``job_infos``), RUNNING for a local job whose process lives, None when
    nothing is (never submitted, or gone). Planning, status and cancel all ask here whether a job
    may still be running."""
    if job is None:
        return None
    return scheduler(job.executor).state(job.job_id, infos)


def run_state(paths: RunPaths, job: JobRecord | None, infos: dict[str, JobInfo], epochs: int,
              queued: bool = False, logs: Path | None = None) -> str:
    """A run's state against its current target of ``epochs``: COMPLETED once done.json says it
    got there (a run done with a lower target is not done), else its last job's state, else its
    markers (cancelled.json, error.txt), else what its scheduler recorded of how the job ended
    (``ended``: a local task killed by a signal is FAILED). ``queued``: a live local submission
    will start it. ``logs``: the sweep's job log folder."""
    done = paths.done_epochs()
    if done is not None and done >= epochs:
        return "COMPLETED"
    st = job_state(job, infos)
    if st == "COMPLETED":
        return "FAILED"  # the job ended but training did not finish (e.g. an error result)
    if st:
        return st
    if queued:
        return "PENDING"
    if paths.cancelled.exists():
        return "CANCELLED"
    if job is None:
        return "NOT_SUBMITTED"
    if paths.error.exists() or ended(job, logs):
        return "FAILED"
    return "UNKNOWN"


def ended(job: JobRecord | None, logs: Path | None) -> str | None:
    """What the job's scheduler recorded of how it ended, when it was not a clean exit."""
    return scheduler(job.executor).ended(logs, job.job_id) if job and logs else None


def local_queue(state: SweepState) -> set[str]:
    """The runs a live local submission (it blocks until its runs end) has yet to start."""
    sub = state.submissions[-1] if state.submissions else None
    if not sub or not scheduler(sub.get("executor", "local")).foreground or sub.get("host") != socket.gethostname() \
            or not pid_alive(sub.get("pid")):
        return set()
    started = {n for n in sub.get("runs", []) if state.runs.get(n) and state.runs[n].job
               and state.runs[n].job.submitted >= sub["time"]}
    return set(sub.get("runs", [])) - started


def job_infos(jobs: list[JobRecord]) -> dict[str, JobInfo]:
    """What their schedulers say of these jobs: one question per scheduler (one sacct call for a
    whole sweep on Slurm). Without Slurm it is empty, and runs that are done still read as
    COMPLETED from their run directories."""
    by_kind: dict[str, list[str]] = {}
    for j in jobs:
        by_kind.setdefault(j.executor, []).append(j.job_id)
    infos: dict[str, JobInfo] = {}
    for kind, ids in by_kind.items():
        infos.update(scheduler(kind).states(ids))
    return infos


def sweep_infos(state: SweepState) -> dict[str, JobInfo]:
    """``job_infos`` of every run's last job."""
    return job_infos([r.job for r in state.runs.values() if r.job])


def status(sweep_dir) -> list[dict]:
    state = load_state(sweep_dir, must_exist=True)
    infos = sweep_infos(state)
    queue = local_queue(state)
    rows = []
    now = time.time()
    for name, r in state.runs.items():
        paths = state.run_paths(name)
        hist = read_jsonl(paths.metrics)
        damaged = metrics_problem(hist)
        last = hist[-1] if hist and isinstance(hist[-1], dict) else {}
        job = r.job
        info = infos.get(job.job_id) if job else None
        st = run_state(paths, job, infos, r.config.get("epochs", 0), queued=name in queue, logs=state.paths.logs)
        mt = paths.newest_ckpt_mtime()
        beat = paths.last_heartbeat()
        row = {"name": name, "state": st, "job_id": job.job_id if job else None,
               # why it waits (Slurm's reason), for a run whose job is queued
               "reason": (info.reason or None) if info and st == info.state else None,
               "epoch": number(last.get("epoch")) or 0, "epochs": r.config.get("epochs"),
               # a damaged metrics line shows as "-", and is named below the row (never a crash)
               "train_loss": number(last.get("train_loss")), "dev_loss": number(last.get("dev_loss")),
               "best_dev_loss": number(last.get("best_dev_loss")), "ckpt_age_s": (now - mt) if mt else None,
               # when training last said it was alive (heartbeat.json, each log interval)
               "heartbeat_age_s": max(0.0, now - beat["time"]) if beat else None,
               "requeues": info.requeues if info else 0, "submissions": len(r.jobs),
               "run_dir": str(paths.root), "log": log_path(state.paths.logs, job),
               "err_log": log_path(state.paths.logs, job, err=True),
               "error": None, "damaged": f"{paths.metrics}: {damaged}" if damaged else None}
        if st in ("FAILED", "OUT_OF_MEMORY", "NODE_FAIL", "TIMEOUT", "UNKNOWN", "CANCELLED") or (paths.error.exists() and st not in ACTIVE):
            why = None if paths.error.exists() or st in ACTIVE else ended(job, state.paths.logs)
            if st == "CANCELLED" and why is None:
                why = canary_why(state, job)
            row["error"] = "\n".join(filter(None, [why, _error_tail(paths, state.paths.logs, job)])) or None
        rows.append(row)
    return rows


def analysis_listing(sweep_dir) -> list[dict]:
    """The sweep's runs as the analysis takes them (analysis.common.load_runs): name, job state and
    error (from ``status``: the scheduler is asked here, once, not while the report is built),
    config, grid and run directory."""
    state = load_state(sweep_dir, must_exist=True)
    return [{"name": row["name"], "state": row["state"], "error": row.get("error"),
             "config": state.runs[row["name"]].config, "grid": state.runs[row["name"]].grid,
             "run_dir": row["run_dir"]} for row in status(sweep_dir)]


def canary_why(state, job: JobRecord | None) -> str | None:
    """Why a run's job was cancelled when its submission's canary did not succeed."""
    from gruv_hpc.cluster.canary import failed_canary
    sub = next((s for s in reversed(state.submissions) if job and job.job_id in s.get("job_ids", [])), None)
    ids = (sub.get("canaries") or [sub.get("canary")]) if sub else []
    why = failed_canary(scheduler(job.executor), ids, state.paths.logs) if any(ids) else None
    return f"cancelled: {why}" if why else None


def log_path(logs: Path, job: JobRecord | None, err: bool = False) -> str | None:
    """Where submitit puts (or will put) the job's task-0 stdout or stderr: task 0 is the rank that
    reports. ``gruv sweep logs`` shows every attempt's (sweep/logs.py)."""
    return None if job is None else str(job_log_path(logs, job.job_id, err=err))


def _error_tail(paths: RunPaths, logs: Path, job: JobRecord | None, n: int = 6) -> str | None:
    if paths.error.exists():
        lines = paths.error.read_text().strip().splitlines()
        return "\n".join(lines[-n:])
    if job:
        log = job_log_path(logs, job.job_id, err=True)
        if log.is_file():
            lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
            return "\n".join(lines[-n:]) if lines else None
    return None


def format_status(rows: list[dict]) -> str:
    def f(v, fmt="{:.4f}"):
        return "-" if v is None else fmt.format(v)

    def age(s):
        if s is None:
            return "-"
        return f"{s:.0f}s" if s < 120 else (f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h")

    def shown(r):  # a waiting run says why: "PENDING (Resources)"
        return f"{r['state']} ({r['reason']})" if r.get("reason") else r["state"]

    w = max([28, *(len(r["name"]) for r in rows)])
    sw = max([*(len(s) for s in STATES), *(len(shown(r)) for r in rows)])  # every state fits its column
    head = (f"{'run':<{w}} {'state':<{sw}} {'job':<14} {'epoch':>11} {'train':>8} {'dev':>8} {'best dev':>8} "
            f"{'heartbeat':>9} {'ckpt age':>8} {'requeues':>8}")
    out = [head]
    for r in rows:
        out.append(f"{r['name']:<{w}} {shown(r):<{sw}} {str(r['job_id'] or '-'):<14} {str(r['epoch']) + '/' + str(r['epochs']):>11} "
                   f"{f(r['train_loss']):>8} {f(r['dev_loss']):>8} {f(r['best_dev_loss']):>8} "
                   f"{age(r.get('heartbeat_age_s')):>9} {age(r['ckpt_age_s']):>8} {r['requeues']:>8}")
        if r.get("damaged"):
            out.append(f"    ! {r['damaged']}")
        if r["error"]:
            out.extend("    | " + ln for ln in r["error"].splitlines())
            if r.get("err_log"):
                out.append(f"    log: {r['err_log']}")
    out.append(summary(rows))
    logs = next((Path(r["log"]).parent for r in rows if r.get("log")), None)
    if logs:
        out.append(f"job logs in {logs}; one run's, every attempt: gruv sweep logs {logs.parent} RUN [--err] [--follow]")
    return "\n".join(out)


def count_states(rows: list[dict]) -> dict[str, int]:
    """{state: runs}, from the rows themselves: the summary can never disagree with the table."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return dict(sorted(counts.items()))


def count_reasons(rows: list[dict]) -> dict[str, int]:
    """{Slurm's reason: runs} of the rows that wait for one."""
    reasons: dict[str, int] = {}
    for r in rows:
        if r.get("reason"):
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    return dict(sorted(reasons.items()))


def summary(rows: list[dict]) -> str:
    """"2 COMPLETED, 1 RUNNING, 3 PENDING (2 Resources, 1 Dependency)": the rows by state, and why
    the pending ones wait."""
    reasons = count_reasons([r for r in rows if r["state"] == "PENDING"])
    why = f" ({', '.join(f'{n} {k}' for k, n in reasons.items())})" if reasons else ""
    return ", ".join(f"{n} {k}" + (why if k == "PENDING" else "") for k, n in count_states(rows).items())


def cancel(sweep_dir, run: str | None = None, out=print) -> list[str]:
    """Cancel the sweep's jobs (or one run's), through their schedulers: a queued job never starts,
    a running one is stopped the way Slurm stops a job (TERM: it checkpoints at the next step
    boundary; then KILL). A queueing scheduler's job is cancelled whatever its state, unasked
    (cancelling an ended job does nothing there); a local job when its process lives. A run a
    live local submission has yet to start is marked cancelled (cancelled.json) and never starts."""
    state = load_state(sweep_dir, must_exist=True)
    if run and run not in state.runs:
        raise GruvError(f"no run {run!r} in {sweep_dir}; runs: {', '.join(state.runs)}")
    queue = local_queue(state)
    cancelled, jobs = [], {}
    for name in [run] if run else list(state.runs):
        job = state.runs[name].job
        live = job is not None and (not scheduler(job.executor).foreground or job_state(job, {}) in ACTIVE)
        if live or name in queue:
            if job is None or scheduler(job.executor).foreground:  # (a queue records its cancels itself)
                mark_cancelled(state.run_paths(name), "gruv sweep cancel")
            cancelled.append(name)
        if live:
            jobs.setdefault(job.executor, []).append(job.job_id)
    if run is None:  # a queued canary would still run, for nothing, and then fail status's reading of it
        for sub in state.submissions[-1:]:
            canaries = sub.get("canaries") or ([sub["canary"]] if sub.get("canary") else [])
            if canaries and not scheduler(sub["executor"]).foreground:
                jobs.setdefault(sub["executor"], []).extend(canaries)
    for kind, ids in jobs.items():
        scheduler(kind).cancel(ids)
    out(f"cancelled {len(cancelled)} run(s): {', '.join(cancelled) or '-'}")
    return cancelled


def canary_line(sweep_dir) -> str | None:
    """The last submission's canary, when it had one: its job id and state, what waits on it,
    and its log (one line, for ``gruv sweep status`` and submit); None without one."""
    state = load_state(sweep_dir, must_exist=True)
    sub = state.submissions[-1] if state.submissions else {}
    jid = sub.get("canary")
    if not jid:
        return None
    st = scheduler(sub.get("executor", "slurm")).states([jid]).get(jid)
    st = st.state if st else "unknown"
    waits = (f"the {len(sub.get('job_ids') or [])} run(s) of this submission wait for it (afterok)"
             if st in ACTIVE else "the runs started after it" if st == "COMPLETED" else
             "the runs waiting for it never start (Slurm cancels them): read its log, fix, resubmit")
    return f"canary job {jid}: {st}; {waits}; its log: {job_log_path(state.paths.logs, jid)}"


def preempt(sweep_dir, run: str, out=print) -> str:
    """Send one run's running job the preemption signal once, as a preemption or the time limit
    would: it checkpoints at its next step boundary and is requeued, then resumes. Returns at
    once; refuses a run whose job is not running (pending, requeued, ended) or that has none."""
    state = load_state(sweep_dir, must_exist=True)
    if run not in state.runs:
        raise GruvError(f"no run {run!r} in {sweep_dir}; runs: {', '.join(state.runs)}")
    job = state.runs[run].job
    if job is None:
        raise GruvError(f"run {run} of {sweep_dir} has no job: it was never submitted")
    sched, paths = scheduler(job.executor), state.run_paths(run)
    # A second call before the first signal's requeue would stop the run again as it checkpoints
    # (a second signal aborts at once): refused until the job has been requeued since.
    info = sched.states([job.job_id]).get(job.job_id)
    try:
        last = json.loads(paths.preempted.read_text())
    except (OSError, ValueError):
        last = {}
    if info and last.get("job_id") == job.job_id and last.get("requeues") == info.requeues:
        raise GruvError(f"run {run}: job {job.job_id} was sent the preemption signal at "
                        f"{time.strftime('%H:%M:%S', time.localtime(last.get('time', 0)))} and has not been requeued "
                        "since; wait for it (gruv sweep status shows it PENDING, then RUNNING again)")
    try:
        said = sched.preempt(job.job_id)
    except GruvError as e:
        raise GruvError(f"run {run}: {e}") from None
    atomic_write_json(paths.preempted, {"job_id": job.job_id, "requeues": info.requeues if info else 0,
                                        "time": time.time()})
    out(f"run {run}: {said}; it checkpoints at its next step boundary and is requeued (follow it: gruv sweep "
        f"status {sweep_dir}; its log: gruv sweep logs {sweep_dir} {run})")
    return said


def mark_cancelled(paths: RunPaths, by: str) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(paths.cancelled, {"time": time.time(), "by": by})


def wait(sweep_dir, poll_s: float = 5.0, progress: bool = True, timeout_s: float | None = None) -> list[dict]:
    from gruv_hpc.progress import progress as progress_bar
    t0 = time.time()
    rows = status(sweep_dir)
    bar = progress_bar(total=len(rows), unit="run", desc="waiting", disable=not progress, interval_s=None)
    while True:
        finished = sum(r["state"] not in ACTIVE for r in rows)
        bar.n = finished
        bar.set_postfix(running=sum(r["state"] == "RUNNING" for r in rows))
        bar.refresh()
        if finished == len(rows) or (timeout_s and time.time() - t0 > timeout_s):
            bar.close()
            return rows
        time.sleep(poll_s)
        rows = status(sweep_dir)
