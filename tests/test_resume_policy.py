"""resume=never is the policy of a run's first start, not of every job (issue 22, N2): a requeued
or resubmitted job always resumes, so a run longer than one time limit can finish."""
import re
import subprocess

import pytest

from conftest import tiny_config, wait_for_epoch, write_sweep
from gruv_hpc.cluster import sweep
from gruv_hpc.cluster.sweep.spec import Run
from gruv_hpc.cluster.sweep.submit import first_start_only
from gruv_hpc.cluster.sweep.state import JobRecord, RunRecord, SweepState
from gruv_hpc.paths import RunPaths, SweepPaths, read_jsonl
from gruv_hpc.training.checkpoint import load_checkpoint
from gruv_hpc.training.job import TrainJob
from gruv_hpc.training.trainer import main


def test_the_requeued_job_of_a_resume_never_run_resumes():
    job = TrainJob("/runs/x", {"resume": "never", "hidden": 8})
    again = job.checkpoint().function
    assert again.config["resume"] == "auto" and again.config["hidden"] == 8 and again.run_dir == "/runs/x"
    assert job.config["resume"] == "never"  # the first start's own policy is untouched
    assert TrainJob("/r", {"resume": "require"}).checkpoint().function.config["resume"] == "require"


def test_a_restarted_slurm_job_resumes_even_with_resume_never(data, tmp_path, monkeypatch, capsys):
    """scontrol requeue (or a node failure) restarts a job from its original pickle, resume=never
    included: SLURM_RESTART_COUNT says it is not the first start."""
    run = tmp_path / "r"
    first = main(tiny_config(data, epochs=1), run)
    assert "requeue" not in capsys.readouterr().out
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    main(tiny_config(data, epochs=2, resume="never"), run)
    assert f"resumed after requeue 1 from step {first['step']}\n" in capsys.readouterr().out  # the run's own log says so
    assert [h["epoch"] for h in read_jsonl(RunPaths(run).metrics)] == [1, 2] and not list(run.glob("discarded-*"))
    beat = RunPaths(run).last_heartbeat()  # the last one: at the end of epoch 2
    assert beat["step"] == read_jsonl(RunPaths(run).metrics)[-1]["step"] and beat["job"] == "77"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # a first start: never still means never
    main(tiny_config(data, epochs=1, resume="never"), run)
    assert [h["epoch"] for h in read_jsonl(RunPaths(run).metrics)] == [1] and len(list(run.glob("discarded-*"))) == 1


def test_a_resubmitted_run_resumes(tmp_path):
    state = SweepState(SweepPaths(tmp_path))
    run = Run("a", {}, {"resume": "never", "hidden": 8})
    assert first_start_only(run, state) is run  # never submitted: its first start
    state.runs["a"] = RunRecord(run.config, {}, jobs=[JobRecord("12", "slurm", 0.0)])
    assert first_start_only(run, state).config == {"resume": "auto", "hidden": 8}


@pytest.mark.slurm
def test_usr2_requeue_of_a_resume_never_sweep_resumes_on_the_local_slurm(data, tmp_path):
    train = {"epochs": 40, "batch_size": 4, "workers": 0, "gen_seconds": 0.0, "hidden": 8, "resume": "never",
             "keep_last": 100}  # the stop's checkpoint stays, to be compared with the log
    f = write_sweep(tmp_path / "a.toml", data, train, {"cell": ["lstm"]})
    d = tmp_path / "sw"
    sweep.submit(f, d, executor="slurm", out=lambda *x: None)
    run = RunPaths(d / "runs" / "lstm")
    wait_for_epoch(run.root)
    jid = sweep.status(d)[0]["job_id"]
    subprocess.run(["scancel", "--signal=USR2", jid], check=True)
    rows = {r["name"]: r for r in sweep.wait(d, poll_s=1, progress=False, timeout_s=240)}
    assert rows["lstm"]["state"] == "COMPLETED" and rows["lstm"]["requeues"] >= 1, rows
    log = "".join(p.read_text() for p in (d / "logs").glob(f"{jid}_0_log.out"))
    assert "resumed from" in log
    # The run's own log tells the stop and the restart, with the step of the checkpoint between them.
    stop = re.search(r"stop signal USR2 at epoch (\d+) batch (\d+): checkpoint step (\d+) written, exiting for requeue\n", log)
    assert stop, log
    ckpt = load_checkpoint(RunPaths(run.root).step_ckpt(int(stop[3])))["train"]  # kept: keep_last holds it
    assert (ckpt["epoch"] + 1, ckpt["pos"], ckpt["step"]) == tuple(int(x) for x in stop.groups())
    assert f"resumed after requeue 1 from step {stop[3]}\n" in log[stop.end():], log
    assert not list(run.root.glob("discarded-*"))  # nothing set aside by the requeue
    assert [h["epoch"] for h in read_jsonl(run.metrics)] == list(range(1, 41))


def test_the_start_over_command_a_refusal_names_works(data, tmp_path):
    """Issue 32 L5: resume=require's error suggested `gruv train --run-dir R resume=never`, which
    failed (no --data, another config than the run's)."""
    import shlex
    import sys
    run = tmp_path / "r"
    args = ["train", "--data", str(data), "--run-dir", str(run), "hidden=8", "epochs=1", "batch_size=4", "workers=0",
            "gen_seconds=0", "limit_train_batches=2", "lr=0.002"]
    r = subprocess.run([sys.executable, "-m", "gruv_hpc.cli", *args, "resume=require"], capture_output=True, text=True)
    assert r.returncode == 2 and "it has no checkpoint, and resume=require" in r.stderr, r.stderr
    cmd = shlex.split(r.stderr.split("start it once by hand: ", 1)[1].split(" (its old files", 1)[0])
    assert cmd[:2] == ["gruv", "train"] and "resume=never" in cmd and "lr=0.002" in cmd
    again = subprocess.run([sys.executable, "-m", "gruv_hpc.cli", *cmd[1:]], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert RunPaths(run).config.exists()


def test_a_resubmission_with_resume_never_says_that_it_resumes(data, tmp_path):
    """Issue 32 L5: it resumed silently, where resume=never reads as "start over"."""
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 1, "batch_size": 4, "workers": 0, "gen_seconds": 0.0,
                                                "hidden": 4, "limit_train_batches": 2, "resume": "never"},
                    {"cell": ["gru"]})
    said = []
    assert not sweep.submit(f, tmp_path / "sw", executor="local", progress=False, out=said.append)["failed"]
    assert not any("resume=never applies" in s for s in said)
    said.clear()
    sweep.submit(f, tmp_path / "sw", executor="local", progress=False, out=said.append, overrides=["epochs=2"])
    assert any("resume=never applies to a run's first start: gru started before, so it resumes" in s for s in said)
    assert len(read_jsonl(RunPaths(tmp_path / "sw" / "runs" / "gru").metrics)) == 2  # it did resume
