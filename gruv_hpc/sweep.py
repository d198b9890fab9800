"""Grid sweeps: sweep files, validation, submission as Slurm job arrays, status, cancel.

A sweep file (TOML)::

    data = "data/corpus"            # the dataset; overridable like any key (data=...)
    [train]                         # base TrainConfig
    epochs = 2000
    [grid]                          # crossed; run names come from these values
    artists = [["aurora"], ["circuit"]]
    cell = ["lstm", "gru"]
    hidden = [256, 512]
    [slurm]                         # SlurmConfig
    partition = "gpu"

SWEEP_DIR holds ``sweep.json`` (each run's resolved config, job ids and the submission history),
``sweep.toml`` (the file as last submitted), ``runs/<name>/`` (run directories) and ``logs/``
(submitit's). This module does not import torch: ``gruv sweep status`` starts fast.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .paths import RunPaths, read_jsonl
from .config import RUNTIME_KEYS, SlurmConfig, TrainConfig, build, check_keys, diff, parse_overrides, read_file, to_dict
from .errors import ConfigError, GruvError
from .fsio import atomic_write_text
from .manifest import PARAM_KEYS, DatasetError, check_params, load_manifest, select_artists

ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD",
          "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED"}


@dataclass
class Run:
    name: str
    grid: dict
    config: dict  # resolved TrainConfig as a dict

    @property
    def cfg(self) -> TrainConfig:
        return build(TrainConfig, self.config)


@dataclass
class Sweep:
    path: Path
    text: str
    data: str
    train: dict
    grid: dict
    slurm: SlurmConfig
    runs: list[Run]


def _name_part(key: str, value) -> str:
    short = {"hidden": "h", "layers": "l", "batch_size": "b", "lr": "lr", "seed": "s", "epochs": "e"}
    if key == "artists":
        return "+".join(value) if value else "all"
    if key in ("cell", "optimizer", "transform"):
        return str(value)
    if key == "data":
        return Path(value).name
    return f"{short.get(key, key)}{value}"


def load_sweep(path: str | Path, overrides: list[str] = ()) -> Sweep:
    """Parse, override, expand and type-check a sweep file (no dataset access yet)."""
    path = Path(path)
    raw = read_file(path)
    text = path.read_text()
    unknown = set(raw) - {"data", "train", "grid", "slurm", "name"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}; valid: data, train, grid, slurm")
    data, train, grid, slurm = raw.get("data", ""), dict(raw.get("train", {})), dict(raw.get("grid", {})), dict(raw.get("slurm", {}))
    check_keys(TrainConfig, train, f"{path} [train]")
    check_keys(TrainConfig, grid, f"{path} [grid]")
    check_keys(SlurmConfig, slurm, f"{path} [slurm]")
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{path} [grid] {k}: expected a non-empty list of values")
    cli_train, cli_slurm = {}, {}
    for k, v in parse_overrides(list(overrides)).items():
        if k == "data":
            data = v
        elif k.startswith("slurm."):
            cli_slurm[k[6:]] = v
        else:
            cli_train[k] = v
    if not data:
        raise ConfigError(f"{path}: no dataset: set data = \"DATA_DIR\" in the file or data=... on the command line")
    data = str(Path(data).expanduser().resolve())
    check_keys(TrainConfig, cli_train, "the command line")
    for k in cli_train:
        if k in grid:  # a command-line value pins a grid key (the run name keeps showing it)
            grid[k] = grid[k][:1]
    scfg = build(SlurmConfig, slurm, cli_slurm, source=f"{path} [slurm]")
    runs, seen = [], {}
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, values))
        values = {**train, "data": data, **point}
        values["data"] = str(Path(values["data"]).expanduser().resolve())  # jobs run from another directory
        cfg = build(TrainConfig, values, cli_train, source=str(path))
        name = "-".join(_name_part(k, cfg.__dict__[k]) for k in keys).replace("/", "_") or "run"
        if name in seen:
            raise ConfigError(f"{path}: grid points {seen[name]} and {point} both get the run name {name!r}")
        seen[name] = point
        runs.append(Run(name, point, to_dict(cfg)))
    return Sweep(path, text, data, train, grid, scfg, runs)


def validate(sweep: Sweep, sweep_dir: Path) -> None:
    """Everything that can be checked on the login node, before anything is queued."""
    manifest = load_manifest(sweep.data)
    for run in sweep.runs:
        cfg = run.cfg
        try:
            check_params(manifest, {k: getattr(cfg, k) for k in PARAM_KEYS}, source=f"run {run.name}")
            select_artists(manifest, cfg.artists)
        except DatasetError as e:
            raise DatasetError(f"run {run.name}: {e}") from None
        for k in PARAM_KEYS:
            run.config[k] = manifest["params"][k]
        ws = sweep.slurm.world_size
        if cfg.batch_size % ws:
            raise ConfigError(f"run {run.name}: batch_size {cfg.batch_size} is not divisible by the "
                              f"{ws} training processes (slurm.nodes x slurm.tasks_per_node)")
        if cfg.device == "cuda" and sweep.slurm.gpus_per_node == 0:
            raise ConfigError(f"run {run.name}: device = 'cuda' but slurm.gpus_per_node = 0")
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        probe = sweep_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise GruvError(f"sweep directory {sweep_dir} is not writable: {e}") from None


# ---------------------------------------------------------------------------------------------
# Sweep state on disk

def state_path(sweep_dir: Path) -> Path:
    return sweep_dir / "sweep.json"


def load_state(sweep_dir: Path) -> dict:
    p = state_path(sweep_dir)
    if not p.exists():
        return {"version": 1, "runs": {}, "submissions": []}
    return json.loads(p.read_text())


def save_state(sweep_dir: Path, state: dict) -> None:
    atomic_write_text(state_path(sweep_dir), json.dumps(state, indent=1))


def run_dir(sweep_dir: Path, name: str) -> Path:
    return sweep_dir / "runs" / name


class _Lock:
    def __init__(self, sweep_dir: Path):
        self.path = sweep_dir / ".lock"

    def __enter__(self):
        self.f = open(self.path, "w")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GruvError(f"another gruv command is submitting to {self.path.parent}") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


# ---------------------------------------------------------------------------------------------
# Slurm queries: one call each, whatever the size of the sweep

def slurm_available() -> bool:
    if not shutil.which("sbatch"):
        return False
    try:
        return subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def max_array_size() -> int:
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.strip().startswith("MaxArraySize"):
                return int(line.split("=")[1])
    except (OSError, ValueError, subprocess.TimeoutExpired):
        pass
    return 1001


def _expand_array_id(jid: str) -> list[str]:
    """'123_[0-3,7%2]' -> ['123_0', ..., '123_3', '123_7']; other ids unchanged."""
    if "_[" not in jid:
        return [jid]
    base, rng = jid.split("_[", 1)
    rng = rng.rstrip("]").split("%")[0]
    out = []
    for part in rng.split(","):
        a, _, b = part.partition("-")
        out.extend(f"{base}_{i}" for i in range(int(a), int(b or a) + 1))
    return out


def sacct_states(job_ids: list[str]) -> dict[str, dict]:
    """{job_id: {"state", "requeues", "exit_code"}} from a single sacct call."""
    if not job_ids or not shutil.which("sacct"):
        return {}
    bases = sorted({j.split("_")[0] for j in job_ids})
    try:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "--duplicates", "-j", ",".join(bases),
                              "-o", "JobID,State,ExitCode"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    res: dict[str, dict] = {}
    if out.returncode == 0:
        _parse_sacct(out.stdout, res)
    missing = [j for j in job_ids if j not in res]
    if missing and shutil.which("squeue"):
        # Just-submitted jobs can take a moment to reach the accounting database.
        try:
            q = subprocess.run(["squeue", "-h", "-j", ",".join(sorted({j.split("_")[0] for j in missing})),
                                "-o", "%i|%T"], capture_output=True, text=True, timeout=30)
            for line in q.stdout.splitlines():
                jid, _, st = line.partition("|")
                for j in _expand_array_id(jid.strip()):
                    res.setdefault(j, {"state": st.strip(), "requeues": 0, "exit_code": ""})
        except (OSError, subprocess.TimeoutExpired):
            pass
    return res


def _parse_sacct(stdout: str, res: dict) -> None:
    for line in stdout.splitlines():
        parts = line.split("|")
        if len(parts) < 3:
            continue
        jid, state, code = parts[0], parts[1].split()[0] if parts[1] else "UNKNOWN", parts[2]
        for j in _expand_array_id(jid):
            r = res.setdefault(j, {"state": state, "requeues": 0, "exit_code": code})
            if state == "REQUEUED":
                r["requeues"] += 1
            r["state"], r["exit_code"] = state, code  # sacct lists runs oldest first


# ---------------------------------------------------------------------------------------------
# Submission

def _executor(kind: str, sweep_dir: Path, slurm: SlurmConfig, name: str):
    import submitit
    folder = sweep_dir / "logs"
    if kind == "slurm":
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=slurm.max_num_timeout)
        params = dict(job_name=name, time=slurm.time_min, nodes=slurm.nodes, ntasks_per_node=slurm.tasks_per_node,
                      cpus_per_task=slurm.cpus_per_task, mem=f"{int(slurm.mem_gb * 1024)}MB",
                      array_parallelism=slurm.array_parallelism, signal_delay_s=slurm.signal_delay_s,
                      setup=list(slurm.setup), additional_parameters={**({"requeue": True} if slurm.requeue else {}),
                                                                      **slurm.additional})
        if slurm.gpus_per_node:
            params["gpus_per_node"] = slurm.gpus_per_node
        for k in ("partition", "account", "qos", "constraint"):
            if getattr(slurm, k):
                params[k] = getattr(slurm, k)
        ex.update_parameters(**params)
        return ex
    if kind == "local":
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=slurm.max_num_timeout)
        ex.update_parameters(timeout_min=slurm.time_min, tasks_per_node=1, gpus_per_node=0)
        return ex
    if kind == "debug":
        return submitit.DebugExecutor(folder=folder)
    raise ConfigError(f"executor must be auto, slurm, local or debug, not {kind!r}")


def sbatch_preview(sweep: Sweep, sweep_dir: Path) -> str:
    from submitit.slurm.slurm import _make_sbatch_string
    s = sweep.slurm
    kw = dict(job_name=sweep.path.stem, time=s.time_min, nodes=s.nodes, ntasks_per_node=s.tasks_per_node,
              cpus_per_task=s.cpus_per_task, mem=f"{int(s.mem_gb * 1024)}MB", array_parallelism=s.array_parallelism,
              signal_delay_s=s.signal_delay_s, setup=list(s.setup), map_count=len(sweep.runs),
              additional_parameters={**({"requeue": True} if s.requeue else {}), **s.additional},
              gpus_per_node=s.gpus_per_node or None, partition=s.partition, account=s.account, qos=s.qos,
              constraint=s.constraint)
    return _make_sbatch_string(command=f"{sys.executable} -u -m submitit.core._submit {sweep_dir / 'logs'}",
                               folder=sweep_dir / "logs", **kw)


def plan(sweep: Sweep, sweep_dir: Path, state: dict) -> tuple[list[Run], dict[str, str]]:
    """Which runs to submit now, and why each other run is left alone."""
    states = sacct_states([r["jobs"][-1]["job_id"] for r in state["runs"].values()
                           if r.get("jobs") and r["jobs"][-1]["executor"] == "slurm"])
    todo, skipped = [], {}
    for run in sweep.runs:
        old = state["runs"].get(run.name)
        if old:
            d = diff(old["config"], run.config, ignore=RUNTIME_KEYS)
            if d:
                raise ConfigError(f"run {run.name} in {sweep_dir} was submitted with another config ({'; '.join(d)}); "
                                  "use a new sweep directory, or restore the old values")
        paths = RunPaths(run_dir(sweep_dir, run.name))
        if paths.done.exists():
            skipped[run.name] = "done"
            continue
        if old and old.get("jobs"):
            last = old["jobs"][-1]
            st = states.get(last["job_id"], {}).get("state") if last["executor"] == "slurm" else \
                ("RUNNING" if _pid_alive(last.get("pid")) else None)
            if st in ACTIVE:
                skipped[run.name] = f"job {last['job_id']} is {st}"
                continue
        todo.append(run)
    return todo, skipped


def _pid_alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    try:  # a zombie or a recycled pid is not our job
        return "submitit" in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return True


def submit(sweep_file, sweep_dir, executor: str = "auto", dry_run: bool = False, overrides=(), max_parallel: int = 2,
           progress: bool = True, out=print) -> dict:
    """Validate, then submit what needs submitting. Returns {"submitted": [...], "skipped": {...}}."""
    sweep = load_sweep(sweep_file, overrides)
    sweep_dir = Path(sweep_dir).resolve()
    if dry_run:
        if Path(sweep.data).exists():  # a dry run also works away from the data (e.g. on a laptop)
            validate(sweep, sweep_dir)
        for run in sweep.runs:
            out(f"{run.name}: {json.dumps(run.grid)}")
        out(f"# {len(sweep.runs)} runs; the sbatch script of the job array:")
        out(sbatch_preview(sweep, sweep_dir))
        return {"submitted": [], "skipped": {}, "runs": [r.name for r in sweep.runs]}
    validate(sweep, sweep_dir)
    kind = executor if executor != "auto" else ("slurm" if slurm_available() else "local")
    with _Lock(sweep_dir):
        state = load_state(sweep_dir)
        todo, skipped = plan(sweep, sweep_dir, state)
        for name, why in skipped.items():
            out(f"skip {name}: {why}")
        (sweep_dir / "sweep.toml").write_text(sweep.text)
        for run in sweep.runs:
            entry = state["runs"].setdefault(run.name, {"config": run.config, "grid": run.grid, "jobs": []})
            entry["config"] = {**entry["config"], **{k: run.config[k] for k in RUNTIME_KEYS}}
            entry["run_dir"] = str(run_dir(sweep_dir, run.name))
        sub = {"time": time.time(), "executor": kind, "runs": [r.name for r in todo], "job_ids": [],
               "overrides": list(overrides), "file": str(sweep.path), "file_sha256": hashlib.sha256(sweep.text.encode()).hexdigest()}
        state["submissions"].append(sub)
        state["slurm"] = dataclasses.asdict(sweep.slurm)
        save_state(sweep_dir, state)
        if not todo:
            out("nothing to submit")
            return {"submitted": [], "skipped": skipped, "executor": kind}
        if kind == "slurm":
            jobs = _submit_slurm(todo, sweep, sweep_dir)
            for run, job in zip(todo, jobs):
                state["runs"][run.name]["jobs"].append({"job_id": job.job_id, "executor": kind, "submitted": time.time()})
                sub["job_ids"].append(job.job_id)
            save_state(sweep_dir, state)
            out(f"submitted {len(todo)} run(s) as {len({j.job_id.split('_')[0] for j in jobs})} job array(s): "
                f"{', '.join(sorted({j.job_id.split('_')[0] for j in jobs}))}")
        else:
            _run_locally(todo, sweep, sweep_dir, kind, state, sub, max_parallel, progress, out)
    return {"submitted": [r.name for r in todo], "skipped": skipped, "executor": kind}


def _submit_slurm(todo: list[Run], sweep: Sweep, sweep_dir: Path):
    from .launcher import TrainJob
    jobs = []
    limit = max(1, max_array_size())  # task indices 0 .. MaxArraySize - 1
    for i in range(0, len(todo), limit):
        chunk = todo[i:i + limit]
        ex = _executor("slurm", sweep_dir, sweep.slurm, sweep.path.stem)
        with ex.batch():  # one sbatch call per array
            for run in chunk:
                jobs.append(ex.submit(TrainJob(str(run_dir(sweep_dir, run.name)), run.config)))
    return jobs


def _run_locally(todo, sweep, sweep_dir, kind, state, sub, max_parallel, progress, out) -> None:
    """submitit's local executor, at most ``max_parallel`` runs at a time; blocks until all end."""
    from tqdm import tqdm

    from .launcher import TrainJob
    threads = max(1, (os.cpu_count() or 1) // max(1, max_parallel))
    ex = _executor(kind, sweep_dir, sweep.slurm, sweep.path.stem)
    pending, running, failed = list(todo), [], []
    bar = tqdm(total=len(todo), unit="run", desc="sweep", disable=not progress)
    while pending or running:
        while pending and len(running) < max(1, max_parallel):
            run = pending.pop(0)
            job = ex.submit(TrainJob(str(run_dir(sweep_dir, run.name)), run.config, threads=threads))
            pid = getattr(getattr(job, "_process", None), "pid", None)
            state["runs"][run.name]["jobs"].append({"job_id": str(job.job_id), "executor": kind,
                                                    "submitted": time.time(), "pid": pid})
            sub["job_ids"].append(str(job.job_id))
            save_state(sweep_dir, state)
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


# ---------------------------------------------------------------------------------------------
# Status and cancel

def status(sweep_dir) -> list[dict]:
    sweep_dir = Path(sweep_dir)
    state = load_state(sweep_dir)
    if not state["runs"]:
        raise GruvError(f"{sweep_dir}: no sweep.json; nothing was submitted there")
    slurm_ids = []
    for r in state["runs"].values():
        if r.get("jobs") and r["jobs"][-1]["executor"] == "slurm":
            slurm_ids.append(r["jobs"][-1]["job_id"])
    # One sacct call for the whole sweep. Without Slurm it returns nothing, and runs that are
    # done still read as COMPLETED from their run directories.
    sacct = sacct_states(slurm_ids)
    rows = []
    now = time.time()
    for name, r in state["runs"].items():
        paths = RunPaths(r.get("run_dir", run_dir(sweep_dir, name)))
        hist = read_jsonl(paths.metrics)
        last = hist[-1] if hist else {}
        job = r["jobs"][-1] if r.get("jobs") else None
        info = sacct.get(job["job_id"], {}) if job and job["executor"] == "slurm" else {}
        if paths.done.exists():
            st = "COMPLETED"
        elif info.get("state"):
            st = info["state"]
        elif job is None:
            st = "NOT_SUBMITTED"
        elif paths.error.exists():
            st = "FAILED"
        elif job["executor"] != "slurm" and _pid_alive(job.get("pid")):
            st = "RUNNING"
        else:
            st = "UNKNOWN"
        if st == "COMPLETED" and not paths.done.exists():
            st = "FAILED"  # the job ended but training did not finish (e.g. an error result)
        mt = paths.newest_ckpt_mtime()
        row = {"name": name, "state": st, "job_id": job["job_id"] if job else None,
               "epoch": last.get("epoch", 0), "epochs": r["config"].get("epochs"),
               "train_loss": last.get("train_loss"), "dev_loss": last.get("dev_loss"),
               "best_dev_loss": last.get("best_dev_loss"), "ckpt_age_s": (now - mt) if mt else None,
               "requeues": info.get("requeues", 0), "submissions": len(r.get("jobs", [])),
               "run_dir": str(paths.root), "error": None}
        if st in ("FAILED", "OUT_OF_MEMORY", "NODE_FAIL", "TIMEOUT", "UNKNOWN", "CANCELLED") or (paths.error.exists() and st not in ACTIVE):
            row["error"] = _error_tail(paths, sweep_dir, job)
        rows.append(row)
    return rows


def _error_tail(paths: RunPaths, sweep_dir: Path, job, n: int = 6) -> str | None:
    if paths.error.exists():
        lines = paths.error.read_text().strip().splitlines()
        return "\n".join(lines[-n:])
    if job:
        for log in sorted((sweep_dir / "logs").glob(f"{job['job_id']}_0_log.err")):
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
    sweep_dir = Path(sweep_dir)
    state = load_state(sweep_dir)
    if run and run not in state["runs"]:
        raise GruvError(f"no run {run!r} in {sweep_dir}; runs: {', '.join(state['runs'])}")
    names = [run] if run else list(state["runs"])
    slurm_ids, cancelled = [], []
    for name in names:
        jobs = state["runs"][name].get("jobs")
        if not jobs:
            continue
        job = jobs[-1]
        if job["executor"] == "slurm":
            slurm_ids.append(job["job_id"])
            cancelled.append(name)
        elif _pid_alive(job.get("pid")):
            os.kill(int(job["pid"]), signal.SIGKILL)  # checkpoints are atomic: a kill loses nothing saved
            cancelled.append(name)
    if slurm_ids:
        subprocess.run(["scancel", *slurm_ids], check=False)
    out(f"cancelled {len(cancelled)} run(s): {', '.join(cancelled) or '-'}")
    return cancelled


def wait(sweep_dir, poll_s: float = 5.0, progress: bool = True, timeout_s: float | None = None) -> list[dict]:
    from tqdm import tqdm
    t0 = time.time()
    rows = status(sweep_dir)
    bar = tqdm(total=len(rows), unit="run", desc="waiting", disable=not progress)
    while True:
        rows = status(sweep_dir)
        finished = sum(r["state"] not in ACTIVE for r in rows)
        bar.n = finished
        bar.set_postfix(running=sum(r["state"] == "RUNNING" for r in rows))
        bar.refresh()
        if finished == len(rows) or (timeout_s and time.time() - t0 > timeout_s):
            bar.close()
            return rows
        time.sleep(poll_s)
