"""Parallel preprocessing (gruv_hpc.cluster.preprocess): N local processes, or a Slurm job array and a
merge job; the result equals the serial one; finished tasks are never redone."""
import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY
from gruv_hpc.dataset import build as P
from gruv_hpc.cluster import preprocess as PJ
from gruv_hpc.cluster.executors import scheduler
from gruv_hpc.dataset.clips import ClipDataset
from gruv_hpc.errors import DatasetError
from gruv_hpc.lock import Lock, LockedError
from gruv_hpc.dataset.manifest import load_manifest
from gruv_hpc.paths import BuildPaths
from gruv_hpc.dataset.build import PreprocessConfig, parse_sources


def sources(corpus):
    return parse_sources([f"aurora={corpus / 'aurora'}", f"circuit={corpus / 'circuit'}"])


def build(corpus, out, jobs, executor="local", **kw):
    cfg = PreprocessConfig(**{**TINY, **kw.pop("cfg", {})})
    return PJ.build(sources(corpus), out, cfg, jobs=jobs, executor=executor, progress=False, say=lambda *a: None, **kw)


def assert_same_dataset(a: Path, b: Path):
    """What training reads is equal: every clip ClipDataset serves, bitwise and in the same order,
    for each split and artist selection; the statistics within 1e-12 (relative to their scale)."""
    ma, mb = load_manifest(a), load_manifest(b)
    assert ma["params"] == mb["params"] and ma["artists"] == mb["artists"]
    assert ma["songs"] == mb["songs"]
    for key in ("songs", "clips", "train_clips", "dev_clips"):
        assert ma["summary"][key] == mb["summary"][key], key
    for split in ("train", "dev"):
        for artists in (None, ["aurora"], ["circuit"]):
            x, y = ClipDataset(a, split, artists), ClipDataset(b, split, artists)
            assert len(x) == len(y) > 0
            assert np.array_equal(x.index.song_of_clip, y.index.song_of_clip)
            assert np.array_equal(x.index.clip_of_song, y.index.clip_of_song)
            for i in range(len(x)):
                assert np.array_equal(x.raw_blocks(i), y.raw_blocks(i)), (split, artists, i)
                (xa, ya), (xb, yb) = x[i], y[i]
                assert torch.equal(xa, xb) and torch.equal(ya, yb), (split, artists, i)
    with np.load(a / "stats.npz") as za, np.load(b / "stats.npz") as zb:
        assert np.array_equal(za["count"], zb["count"])
        scale = np.sqrt(za["m2"] / za["count"][:, None])
        np.testing.assert_allclose(zb["mean"], za["mean"], rtol=1e-12, atol=1e-12 * scale.max())
        np.testing.assert_allclose(zb["m2"], za["m2"], rtol=1e-12)


def files_of(d: Path) -> dict:
    """Each file's inode, mtime and sha256: a file that was rewritten, even identically, differs."""
    return {p.relative_to(d).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("jobs, kw", [(2, {}), (3, {}), (3, {"shard_clips": 5})])
def test_local_parallel_build_equals_serial(corpus, data, tmp_path, jobs, kw):
    ref = data
    if kw:
        ref = tmp_path / "serial"
        assert build(corpus, ref, 1, cfg=kw)["tasks"] == 1
    res = build(corpus, tmp_path / "par", jobs, cfg=kw)
    assert res["tasks"] == jobs and res["ran"] == list(range(jobs))
    m = res["manifest"]
    assert m["summary"]["tasks"] == jobs
    assert {int(sh["file"].rsplit("-", 2)[1]) for sh in m["shards"]} == set(range(jobs))  # each task wrote shards
    if kw:
        assert any(sh["segments"][0][3] > 0 for sh in m["shards"])  # a song continued across shards
    assert_same_dataset(ref, tmp_path / "par")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".par")) == [".par.lock"]  # no staging left


def _fail_task_once(monkeypatch, failing: int, after_batches: int = 2):
    """Task ``failing`` raises after writing a few batches of blocks (in its own process)."""
    from gruv_hpc.dataset.build import task as T
    from gruv_hpc.dataset.transforms import Transform
    real = T._run_task

    def run(p, task, n_tasks, staging, progress):
        if task == failing:
            calls = []
            analyze = Transform.analyze

            def breaking(self, frames):
                calls.append(1)
                if len(calls) > after_batches:
                    raise RuntimeError("injected failure")
                return analyze(self, frames)
            Transform.analyze = breaking  # (in the task's forked process only)
        return real(p, task, n_tasks, staging, progress)
    monkeypatch.setattr(T, "_run_task", run)


def test_a_failed_task_is_redone_alone_and_the_others_are_kept(corpus, data, tmp_path, monkeypatch, capfd):
    out = tmp_path / "ds"
    small = {"shard_clips": 5}  # (shards close often: task 1 leaves some behind; the clips are the same)
    _fail_task_once(monkeypatch, failing=1, after_batches=4)
    with pytest.raises(DatasetError, match=r"task\(s\) 1 of 3 failed.*run the same command again"):
        build(corpus, out, 3, cfg=small)
    assert "injected failure" in capfd.readouterr().err
    staging = BuildPaths(out).staging
    assert not out.exists()
    assert [P.task_finished(staging, t, 3) for t in range(3)] == [True, False, True]
    assert list((staging / "shards").glob("*-001-*.h5"))  # task 1 stopped mid-way
    kept = {k: v for k, v in files_of(staging).items() if "-001-" not in k and "0001-of" not in k}
    assert any("-000-" in k for k in kept) and any("-002-" in k for k in kept)
    monkeypatch.undo()
    res = build(corpus, out, 3, cfg=small)
    assert res["ran"] == [1]
    after = files_of(out)
    for name, f in kept.items():
        if name.startswith("shards/"):
            assert after[name] == f, name  # the same file: not rewritten, not even touched
    assert not list(out.rglob("*.partial"))
    assert_same_dataset(data, out)


def test_another_plan_starts_afresh_and_a_finished_dataset_is_never_touched(corpus, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    build(corpus, out, 2)
    before = files_of(out)
    _fail_task_once(monkeypatch, failing=0)
    with pytest.raises(DatasetError, match="failed"):
        build(corpus, out, 2)  # a rebuild of the same plan stops half-way
    monkeypatch.undo()
    assert files_of(out) == before
    # Another plan (other parameters) is refused without --overwrite: dataset and staging as they were.
    staged = files_of(BuildPaths(out).staging)
    with pytest.raises(DatasetError, match="--overwrite"):
        build(corpus, out, 2, cfg={"block_size": 32})
    assert files_of(out) == before and files_of(BuildPaths(out).staging) == staged
    # Another task count is another plan: the unfinished build is discarded, with a warning.
    with pytest.warns(UserWarning, match="discarding the unfinished build of another plan"):
        res = build(corpus, out, 3)
    assert res["ran"] == [0, 1, 2] and load_manifest(out)["summary"]["tasks"] == 3


def test_a_task_some_process_still_writes_is_refused(corpus, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    _fail_task_once(monkeypatch, failing=1)
    with pytest.raises(DatasetError):
        build(corpus, out, 2)
    monkeypatch.undo()
    staging = BuildPaths(out).staging
    holder = Lock(P.task_lock(staging, 1, 2).path, "task")
    holder.acquire()  # as a copy of task 1 that still runs would
    try:
        before = files_of(staging)
        with pytest.raises(DatasetError, match=f"task 1 of 2 in {staging} is in use by pid {os.getpid()}"):
            build(corpus, out, 2)
        assert files_of(staging) == before
    finally:
        holder.release()
    assert build(corpus, out, 2)["ran"] == [1]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "gruv_hpc.cli", "preprocess", *map(str, args), "--quiet",
                           *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]], capture_output=True, text=True)


@pytest.mark.parametrize("args, needle", [
    (["--jobs", "0"], "--jobs: must be >= 1"),
    (["--executor", "slurm", "slurm.mem=3"], "unknown key(s) 'mem' in the command line; valid keys: partition"),
    (["--executor", "slurm", "--slurm-config", "MISSING.toml"], "MISSING.toml: config file not found"),
    (["--executor", "slurm", "slurm.time_min=0"], "slurm.time_min: must be >= 1"),
])
def test_bad_parallel_options_are_one_line_errors(corpus, tmp_path, args, needle):
    r = cli(f"aurora={corpus / 'aurora'}", "--out", tmp_path / "ds", *[a.replace("MISSING", str(tmp_path / "no")) for a in args])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle.replace("MISSING", str(tmp_path / "no")) in lines[0], r.stderr
    assert not (tmp_path / "ds").exists()


def test_cli_jobs_prints_the_summary(corpus, tmp_path):
    r = cli(f"aurora={corpus / 'aurora'}", f"circuit={corpus / 'circuit'}", "--out", tmp_path / "ds", "--jobs", "2")
    assert r.returncode == 0, r.stderr
    assert "2 tasks)" in r.stdout and load_manifest(tmp_path / "ds")["summary"]["tasks"] == 2


# ---------------------------------------------------------------------------------------------
# On the local Slurm cluster

SMALL = {"time_min": 10, "mem_gb": 1.0, "signal_delay_s": 30}


def slurm_build(corpus, out, jobs, **kw):
    return build(corpus, out, jobs, executor="slurm", slurm=PJ.slurm_config(SMALL), logs=out.parent / "logs", **kw)


@pytest.mark.slurm
def test_slurm_array_equals_serial(corpus, data, tmp_path):
    out = tmp_path / "ds"
    res = slurm_build(corpus, out, 3)
    sub = res["submission"]
    assert sorted(sub["tasks"].values()) == [f"{sub['array']}_{i}" for i in range(3)]  # one job array
    logs = tmp_path / "logs"
    assert len(list(logs.glob("*_submission.sh"))) == 2  # two sbatch calls: the array and the merge
    merge_script = (logs / f"{sub['merge']}_submission.sh").read_text()
    assert f"#SBATCH --dependency=afterok:{sub['array']}" in merge_script
    assert "#SBATCH --array=0-2" in (logs / f"{sub['array']}_submission.sh").read_text()
    assert_same_dataset(data, out)
    assert not BuildPaths(out).staging.exists()
    # The built dataset, then a live build, as a status sees them
    st = PJ.build_status(out)
    assert st["state"] == "COMPLETED" and st["tasks_done"] == st["tasks_total"] == 3


def _wait(cond, timeout=120, what=""):
    t0 = time.time()
    while not cond():
        assert time.time() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.2)


def _free(lock) -> bool:
    try:
        lock.acquire()
    except LockedError:
        return False
    lock.release()
    return True


def _states(ids):
    from gruv_hpc.cluster.slurm import job_states
    infos = job_states(ids)
    return {j: infos[j].state if j in infos else None for j in ids}


@pytest.mark.slurm
def test_an_array_task_cancelled_mid_way_is_redone_alone(corpus, data, tmp_path):
    """Task 1's second song is swapped for a FIFO after planning: the task writes its first song,
    then waits on the FIFO forever, mid-way. It is cancelled with scancel; tasks 0 and 2 finish.
    With the song back, a rerun submits task 1 alone (the dead merge job is cancelled), and the
    other tasks' files are the very same files."""
    out = tmp_path / "ds"
    cfg = PreprocessConfig(**TINY)
    lock = P.lock_dataset(out)
    try:
        p, staging, n, todo = P.start_build(sources(corpus), out, cfg, 3)
        victim = Path(P.task_songs(p, 1, 3)[1]["path"])
        saved = victim.read_bytes()
        victim.unlink()
        os.mkfifo(victim)
        sub = PJ._submit_queued(scheduler("slurm"), out, staging, n, todo, PJ.slurm_config(SMALL), tmp_path / "logs")
    finally:
        lock.release()
    try:
        job1 = sub["tasks"]["1"]
        _wait(lambda: P.task_finished(staging, 0, 3) and P.task_finished(staging, 2, 3), what="tasks 0 and 2")
        _wait(lambda: list((staging / "shards").glob("*-001-*.partial")), what="task 1's first shard")
        assert _states([job1])[job1] == "RUNNING"
        with pytest.raises(DatasetError, match="is being built by Slurm job"):
            slurm_build(corpus, out, 3)  # a second build while the first lives
        subprocess.run(["scancel", job1], check=True)
        _wait(lambda: _states([job1])[job1] == "CANCELLED", what="the cancellation")
        # Slurm says CANCELLED at once and kills the process KillWait seconds later: till then its lock holds
        _wait(lambda: _free(P.task_lock(staging, 1, 3)), what="task 1's process to end")
    finally:
        victim.unlink()
        victim.write_bytes(saved)
    kept = {k: v for k, v in files_of(staging).items() if "-001-" not in k and "0001-of" not in k and not k.endswith(".lock")}
    # Its afterok can never come: Slurm cancels it (--kill-on-invalid-dep=yes), or the rerun does.
    assert _states([sub["merge"]])[sub["merge"]] in ("PENDING", "CANCELLED")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "cancelled merge job ...", where Slurm had not yet
        res = slurm_build(corpus, out, 3)
    assert res["ran"] == [1] and list(res["submission"]["tasks"]) == ["1"]
    assert _states([sub["merge"]])[sub["merge"]] == "CANCELLED"
    after = files_of(out)
    for name, f in kept.items():
        if name.startswith("shards/"):
            assert after[name] == f, name
    assert not list(out.rglob("*.partial"))
    assert_same_dataset(data, out)


@pytest.mark.slurm
def test_status_of_a_build_in_flight(corpus, tmp_path):
    out = tmp_path / "ds"
    res = slurm_build(corpus, out, 2, wait=False)
    st = PJ.build_status(out)
    assert st["state"] in ("PENDING", "RUNNING", "COMPLETED") and st["tasks_total"] in (0, 2)
    assert st["merge_job"] in (None, res["submission"]["merge"])
    PJ.wait_build(out, res["submission"])
    st = PJ.build_status(out)
    assert st["state"] == "COMPLETED" and st["tasks_done"] == 2
    assert json.loads((out / "manifest.json").read_text())["summary"]["tasks"] == 2
