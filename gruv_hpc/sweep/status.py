"""A sweep's runs as rows (state, progress, losses, the traceback tail of failures), cancel, wait."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ..errors import GruvError
from ..paths import RunPaths, read_jsonl
from . import slurm
from .slurm import ACTIVE
from .state import JobRecord, SweepState, load_state


def job_state(job: JobRecord | None, infos: dict[str, slurm.JobInfo]) -> str | None:
    """What is known of a run's last job: its Slurm state (from ``infos``), RUNNING for a local job
    whose process lives, None when nothing is (never submitted, or gone). Planning, status and
    cancel all ask here whether a job may still be running."""
    if job is None:
        return None
    if job.executor == "slurm":
        info = infos.get(job.job_id)
        return info.state if info else None
    return "RUNNING" if _pid_alive(job.pid) else None


def run_state(paths: RunPaths, job: JobRecord | None, infos: dict[str, slurm.JobInfo]) -> str:
    """A run's state: done.json says COMPLETED, else its last job's state, else its error marker."""
    if paths.done.exists():
        return "COMPLETED"
    st = job_state(job, infos)
    if st == "COMPLETED":
        return "FAILED"  # the job ended but training did not finish (e.g. an error result)
    if st:
        return st
    if job is None:
        return "NOT_SUBMITTED"
    return "FAILED" if paths.error.exists() else "UNKNOWN"


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    proc = Path(f"/proc/{pid}")
    try:
        cmdline = (proc / "cmdline").read_bytes()
        if not cmdline:  # a zombie, or a process caught in exec (its new argv not set yet)
            return (proc / "stat").read_text().rpartition(")")[2].split()[0] != "Z"
        return b"submitit" in cmdline  # a recycled pid is not our job
    except (OSError, IndexError):
        return True


def slurm_infos(state: SweepState) -> dict[str, slurm.JobInfo]:
    """What Slurm says of every run's last job: one sacct call for the whole sweep. Without Slurm
    it is empty, and runs that are done still read as COMPLETED from their run directories."""
    return slurm.job_states([r.job.job_id for r in state.runs.values() if r.job and r.job.executor == "slurm"])


def status(sweep_dir) -> list[dict]:
    state = load_state(sweep_dir)
    if not state.runs:
        raise GruvError(f"{sweep_dir}: no {state.paths.state.name}; nothing was submitted there")
    infos = slurm_infos(state)
    rows = []
    now = time.time()
    for name, r in state.runs.items():
        paths = state.run_paths(name)
        hist = read_jsonl(paths.metrics)
        last = hist[-1] if hist else {}
        job = r.job
        info = infos.get(job.job_id) if job and job.executor == "slurm" else None
        st = run_state(paths, job, infos)
        mt = paths.newest_ckpt_mtime()
        row = {"name": name, "state": st, "job_id": job.job_id if job else None,
               "epoch": last.get("epoch", 0), "epochs": r.config.get("epochs"),
               "train_loss": last.get("train_loss"), "dev_loss": last.get("dev_loss"),
               "best_dev_loss": last.get("best_dev_loss"), "ckpt_age_s": (now - mt) if mt else None,
               "requeues": info.requeues if info else 0, "submissions": len(r.jobs),
               "run_dir": str(paths.root), "error": None}
        if st in ("FAILED", "OUT_OF_MEMORY", "NODE_FAIL", "TIMEOUT", "UNKNOWN", "CANCELLED") or (paths.error.exists() and st not in ACTIVE):
            row["error"] = _error_tail(paths, state.paths.logs, job)
        rows.append(row)
    return rows


def _error_tail(paths: RunPaths, logs: Path, job: JobRecord | None, n: int = 6) -> str | None:
    if paths.error.exists():
        lines = paths.error.read_text().strip().splitlines()
        return "\n".join(lines[-n:])
    if job:
        for log in sorted(logs.glob(f"{job.job_id}_0_log.err")):
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

    head = f"{'run':<28} {'state':<11} {'job':<14} {'epoch':>11} {'train':>8} {'dev':>8} {'best dev':>8} {'ckpt age':>8} {'requeues':>8}"
    out = [head]
    for r in rows:
        out.append(f"{r['name']:<28} {r['state']:<11} {str(r['job_id'] or '-'):<14} {str(r['epoch']) + '/' + str(r['epochs']):>11} "
                   f"{f(r['train_loss']):>8} {f(r['dev_loss']):>8} {f(r['best_dev_loss']):>8} {age(r['ckpt_age_s']):>8} {r['requeues']:>8}")
        if r["error"]:
            out.extend("    | " + ln for ln in r["error"].splitlines())
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    out.append(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return "\n".join(out)


def cancel(sweep_dir, run: str | None = None, out=print) -> list[str]:
    state = load_state(sweep_dir)
    if run and run not in state.runs:
        raise GruvError(f"no run {run!r} in {sweep_dir}; runs: {', '.join(state.runs)}")
    slurm_ids, cancelled = [], []
    for name in [run] if run else list(state.runs):
        job = state.runs[name].job
        if job is None:
            continue
        if job.executor == "slurm":  # whatever its state: scancel of an ended job does nothing
            slurm_ids.append(job.job_id)
            cancelled.append(name)
        elif job_state(job, {}) in ACTIVE:
            os.kill(job.pid, signal.SIGKILL)  # checkpoints are atomic: a kill loses nothing saved
            cancelled.append(name)
    slurm.scancel(slurm_ids)
    out(f"cancelled {len(cancelled)} run(s): {', '.join(cancelled) or '-'}")
    return cancelled


def wait(sweep_dir, poll_s: float = 5.0, progress: bool = True, timeout_s: float | None = None) -> list[dict]:
    from tqdm import tqdm
    t0 = time.time()
    rows = status(sweep_dir)
    bar = tqdm(total=len(rows), unit="run", desc="waiting", disable=not progress)
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
