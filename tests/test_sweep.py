"""Sweeps on the real local Slurm cluster (slurm/cluster.sh): no mocked sbatch."""
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from gruv_hpc.cluster import slurm
from gruv_hpc.cluster import sweep
from gruv_hpc.training.checkpoint import load_checkpoint
from gruv_hpc.errors import ConfigError
from gruv_hpc.paths import RunPaths, SweepPaths, read_jsonl

from conftest import wait_for_checkpoint, wait_for_epoch, write_sweep

pytestmark = pytest.mark.slurm

SMOKE = Path(__file__).parent.parent / "jobs" / "smoke.toml"


def job_of(sweep_dir, name):
    return json.loads((Path(sweep_dir) / "sweep.json").read_text())["runs"][name]["jobs"][-1]["job_id"]


def wait_done(sweep_dir, timeout=240):
    rows = sweep.wait(sweep_dir, poll_s=1, progress=False, timeout_s=timeout)
    return {r["name"]: r for r in rows}


@pytest.fixture(scope="module")
def smoke(data, tmp_path_factory):
    d = tmp_path_factory.mktemp("smoke") / "sweep"
    res = sweep.submit(SMOKE, d, executor="slurm", overrides=[f"data={data}"], out=lambda *a: None)
    assert len(res["submitted"]) == 4
    return d, wait_done(d)


def test_smoke_grid_completes_as_one_array(smoke, data):
    d, rows = smoke
    assert set(rows) == {"lstm-h8", "lstm-h16", "gru-h8", "gru-h16"}
    ids = {r["job_id"].split("_")[0] for r in rows.values()}
    assert len(ids) == 1 and all("_" in r["job_id"] for r in rows.values())  # one job array
    for r in rows.values():
        assert r["state"] == "COMPLETED", r
        assert r["epoch"] == r["epochs"] == 2 and r["dev_loss"] is not None and r["best_dev_loss"] is not None
        assert r["ckpt_age_s"] is not None and r["heartbeat_age_s"] is not None and r["requeues"] == 0
        assert r["reason"] is None  # nothing waits
    state = json.loads((d / "sweep.json").read_text())
    assert state["runs"]["gru-h16"]["config"]["cell"] == "gru" and (d / "sweep.toml").exists()
    out = []
    res = sweep.submit(SMOKE, d, executor="slurm", overrides=[f"data={data}"], out=out.append)
    assert res["submitted"] == [] and "nothing to submit" in out
    assert len(state["submissions"]) == 1 and len(json.loads((d / "sweep.json").read_text())["submissions"]) == 2
    # the status command prints JSON with Slurm's state names
    r = subprocess.run([sys.executable, "-m", "gruv_hpc.cli", "sweep", "status", str(d), "--json"], capture_output=True, text=True)
    assert {x["state"] for x in json.loads(r.stdout)["runs"]} == {"COMPLETED"}


def test_changed_config_is_refused(smoke, data):
    d, _ = smoke
    with pytest.raises(ConfigError, match="lstm-h8.*lr"):
        sweep.submit(SMOKE, d, executor="slurm", overrides=[f"data={data}", "lr=0.5"], out=lambda *a: None)


def test_dry_run_prints_the_scripts_that_are_submitted(data, tmp_path, monkeypatch):
    """--dry-run renders the sbatch scripts without submitting; they must be the very files
    submitit then writes and sends (one job array of 2 runs and one plain job here)."""
    monkeypatch.setattr(slurm, "max_array_size", lambda: 2)
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 1, "workers": 0, "gen_seconds": 0.0}, {"hidden": [2, 3, 4]},
                    {"setup": ["echo set up"]})
    f.write_text(f.read_text() + 'additional = {comment = "dry run"}\n')  # (last table: [slurm])
    d = tmp_path / "sw"
    printed = []
    dry = sweep.submit(f, d, executor="slurm", dry_run=True, out=printed.append)
    assert len(dry["scripts"]) == 2 and not (d / "sweep.json").exists()
    res = sweep.submit(f, d, executor="slurm", out=lambda *a: None)
    try:
        assert res["submitted"] == dry["todo"] == ["h2", "h3", "h4"]
        bases = list(dict.fromkeys(job_of(d, n).split("_")[0] for n in res["submitted"]))
        sent = [(SweepPaths(d).logs / f"{b}_submission.sh").read_text() for b in bases]
        assert sent == dry["scripts"]
        assert "#SBATCH --array=0-1%2" in sent[0] and "--array" not in sent[1]
        for script in sent:
            assert script in "\n".join(printed)
        again = sweep.submit(f, d, executor="slurm", dry_run=True, out=lambda *a: None)  # nothing left to do
        assert again["scripts"] == [] and set(again["skipped"]) == {"h2", "h3", "h4"}
    finally:
        sweep.cancel(d, out=lambda *a: None)


def test_grid_larger_than_max_array_size_is_split(data, tmp_path, monkeypatch):
    monkeypatch.setattr(slurm, "max_array_size", lambda: 3)
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 1, "workers": 0, "gen_seconds": 0.0}, {"hidden": [2, 3, 4, 5]})
    d = tmp_path / "sw"
    res = sweep.submit(f, d, executor="slurm", out=lambda *a: None)
    ids = [job_of(d, n) for n in res["submitted"]]
    arrays = {}
    for j in ids:
        arrays.setdefault(j.split("_")[0], []).append(j)
    assert sorted(len(v) for v in arrays.values()) == [1, 3]
    sweep.cancel(d, out=lambda *a: None)


def test_two_task_ddp_job(data, tmp_path):
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 2, "batch_size": 4, "workers": 0, "gen_seconds": 0.0, "hidden": 8},
                    {"cell": ["lstm"]}, {"tasks_per_node": 2})
    d = tmp_path / "sw"
    sweep.submit(f, d, executor="slurm", out=lambda *a: None)
    rows = wait_done(d)
    assert rows["lstm"]["state"] == "COMPLETED", rows
    run = RunPaths(d / "runs" / "lstm")
    assert json.loads(run.config.read_text())["world_size"] == 2
    assert [h["epoch"] for h in read_jsonl(run.metrics)] == [1, 2]  # one writer
    assert len(list(run.tb.glob("events.*"))) == 1


def test_gruv_train_under_plain_srun(data, tmp_path):
    """`gruv train` needs no launcher: under srun it reads rank and world size from Slurm."""
    run = tmp_path / "run"
    r = subprocess.run(["srun", "--ntasks=2", "--cpus-per-task=1", "--mem-per-cpu=1G", sys.executable, "-m", "gruv_hpc.cli",
                        "train", "--data", str(data), "--run-dir", str(run), "hidden=8", "epochs=1", "batch_size=4",
                        "workers=0", "gen_seconds=0"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    assert r.stdout.count('"status": "done"') == 1  # rank 0 reports
    assert [h["epoch"] for h in read_jsonl(run / "metrics.jsonl")] == [1]


def test_preemption_requeues_resumes_and_matches_uninterrupted(data, tmp_path):
    train = {"epochs": 40, "batch_size": 4, "workers": 0, "gen_seconds": 0.0, "hidden": 8}
    fa = write_sweep(tmp_path / "a.toml", data, train, {"cell": ["lstm"]})
    a, b = tmp_path / "preempted", tmp_path / "straight"
    sweep.submit(fa, a, executor="slurm", out=lambda *x: None)
    sweep.submit(fa, b, executor="slurm", out=lambda *x: None)
    run = RunPaths(a / "runs" / "lstm")
    wait_for_checkpoint(run.root, timeout=60)
    jid = job_of(a, "lstm")
    t0 = time.time()
    subprocess.run(["scancel", "--signal=USR2", jid], check=True)
    rows = wait_done(a)
    assert rows["lstm"]["state"] == "COMPLETED" and rows["lstm"]["requeues"] >= 1
    for _ in range(60):  # done.json lands a moment before Slurm sees the job end
        dup = subprocess.run(["sacct", "-n", "-X", "--duplicates", "-j", jid, "-o", "State"], capture_output=True, text=True).stdout.split()
        if dup and dup[-1] == "COMPLETED":
            break
        time.sleep(0.5)
    assert "REQUEUED" in dup and dup[-1] == "COMPLETED"
    log = "".join(p.read_text() for p in (a / "logs").glob(f"{jid}_0_log.out"))
    assert "resumed from" in log
    shown = subprocess.run([sys.executable, "-m", "gruv_hpc.cli", "sweep", "logs", str(a), "lstm"], capture_output=True,
                           text=True)  # the requeued job's starts, one after the other in its one file
    assert shown.returncode == 0 and "requeued" in shown.stdout.splitlines()[0] and log in shown.stdout
    assert wait_done(b)["lstm"]["state"] == "COMPLETED"
    wa = load_checkpoint(RunPaths(a / "runs" / "lstm").step_ckpts()[0])["model"]
    wb = load_checkpoint(RunPaths(b / "runs" / "lstm").step_ckpts()[0])["model"]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert [h["dev_loss"] for h in read_jsonl(run.metrics)] == [h["dev_loss"] for h in read_jsonl(RunPaths(b / "runs" / "lstm").metrics)]
    print(f"signal -> completed after requeue: {time.time() - t0:.1f} s")


def test_failed_run_shows_traceback_and_only_it_is_resubmitted(data, tmp_path):
    bad = tmp_path / "baddata"
    shutil.copytree(data, bad)
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 1, "batch_size": 4, "workers": 0, "gen_seconds": 0.0, "hidden": 8},
                    {"data": [str(data), str(bad)]})
    d = tmp_path / "sw"
    sweep.submit(f, d, executor="slurm", out=lambda *a: None)
    (bad / "manifest.json").rename(bad / "manifest.away")  # planted after validation
    rows = wait_done(d)
    good, badrun = rows[data.name], rows["baddata"]
    assert good["state"] == "COMPLETED"
    assert badrun["state"] == "FAILED" and "manifest" in badrun["error"] and "DatasetError" in badrun["error"]
    text = sweep.format_status(list(rows.values()))
    assert "| " in text and "DatasetError" in text
    assert f"log: {d / 'logs' / job_of(d, 'baddata')}_0_log.err" in text
    (bad / "manifest.away").rename(bad / "manifest.json")
    res = sweep.submit(f, d, executor="slurm", out=lambda *a: None)
    assert res["submitted"] == ["baddata"] and res["skipped"] == {data.name: "done"}
    assert wait_done(d)["baddata"]["state"] == "COMPLETED"


def test_cancel(data, tmp_path):
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 100000, "batch_size": 4, "workers": 0, "gen_seconds": 0.0, "hidden": 8},
                    {"cell": ["lstm"]})
    d = tmp_path / "sw"
    sweep.submit(f, d, executor="slurm", out=lambda *a: None)
    for _ in range(300):
        if sweep.status(d)[0]["state"] == "RUNNING":
            break
        time.sleep(0.2)
    assert sweep.cancel(d, out=lambda *a: None) == ["lstm"]
    rows = wait_done(d, timeout=60)
    assert rows["lstm"]["state"] == "CANCELLED"
    res = sweep.submit(f, d, executor="slurm", out=lambda *a: None)  # a cancelled run is resubmitted ...
    assert res["submitted"] == ["lstm"]
    sweep.cancel(d, "lstm", out=lambda *a: None)  # ... and cancelled again, by name


def test_status_says_why_a_run_waits(data, tmp_path):
    """A run held behind a dependency shows PENDING with Slurm's reason, in the table, its summary and --json."""
    held = subprocess.run(["sbatch", "--parsable", "--hold", "-J", "gruv-test-held", "-c", "1", "--mem=100M",
                           "-o", "/dev/null", "--wrap", "true"], capture_output=True, text=True, check=True).stdout.strip()
    d = tmp_path / "sw"
    try:
        f = write_sweep(tmp_path / "s.toml", data, {"epochs": 1, "batch_size": 4, "workers": 0, "gen_seconds": 0.0,
                                                     "hidden": 8}, {"cell": ["lstm", "gru"]})
        f.write_text(f.read_text() + f'additional = {{ dependency = "afterok:{held}" }}\n')  # in [slurm]
        sweep.submit(f, d, executor="slurm", out=lambda *a: None)
        for _ in range(60):  # the scheduler decides the reason at its next pass
            rows = sweep.status(d)
            if all(r["reason"] == "Dependency" for r in rows):
                break
            time.sleep(0.5)
        assert [(r["state"], r["reason"]) for r in rows] == [("PENDING", "Dependency")] * 2, rows
        r = subprocess.run([sys.executable, "-m", "gruv_hpc.cli", "sweep", "status", str(d)], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.count("PENDING (Dependency)") == 2, r.stdout + r.stderr
        assert "2 PENDING (2 Dependency)" in r.stdout
        r = subprocess.run([sys.executable, "-m", "gruv_hpc.cli", "sweep", "status", str(d), "--json"], capture_output=True,
                           text=True)
        assert [x["reason"] for x in json.loads(r.stdout)["runs"]] == ["Dependency"] * 2
    finally:
        if d.exists():
            sweep.cancel(d, out=lambda *a: None)
        subprocess.run(["scancel", held], check=False)


def test_second_copy_of_a_running_jobs_run_is_refused(data, tmp_path):
    """A requeued job whose old copy still runs: the second copy stops at once, naming the first."""
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 100000, "batch_size": 4, "workers": 0, "gen_seconds": 0.0,
                                                 "hidden": 8}, {"cell": ["lstm"]})
    d = tmp_path / "sw"
    sweep.submit(f, d, executor="slurm", out=lambda *a: None)
    run = RunPaths(d / "runs" / "lstm")
    wait_for_epoch(run.root)
    jid = job_of(d, "lstm")
    try:
        cfg = json.loads(run.config.read_text())["config"]
        r = subprocess.run(["srun", "--ntasks=1", "--cpus-per-task=1", "--mem-per-cpu=1G", sys.executable, "-m",
                            "gruv_hpc.cli", "train", "--run-dir", str(run.root), "--data", cfg["data"],
                            *(f"{k}={v}" for k, v in cfg.items() if k in ("hidden", "batch_size", "epochs", "workers",
                                                                          "gen_seconds"))],
                           capture_output=True, text=True, timeout=240)
        assert r.returncode == 2, r.stderr
        assert "in use" in r.stderr and f"Slurm job {jid}" in r.stderr and "Traceback" not in r.stderr
        assert sweep.status(d)[0]["state"] == "RUNNING"  # the first copy trains on
        assert not run.error.exists()
    finally:
        sweep.cancel(d, out=lambda *a: None)
    assert wait_done(d, timeout=90)["lstm"]["state"] == "CANCELLED"
    st = load_checkpoint(run.step_ckpts()[0])  # scancel's TERM: stopped at a step boundary, checkpointed
    assert st["train"]["step"] >= read_jsonl(run.metrics)[-1]["step"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tensorboard_server_lists_every_run(smoke):
    d, rows = smoke
    port = _free_port()
    p = subprocess.Popen([sys.executable, "-m", "gruv_hpc.cli", "tensorboard", str(d), "--port", str(port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        tags = None
        for _ in range(120):
            try:
                runs = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2))
                tags = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5))
                if set(tags) >= set(rows):  # each run under its own name
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert tags is not None, "tensorboard did not answer"
        assert set(runs) == set(rows)
        for tb_run, t in tags.items():
            assert {"epoch/train_loss", "epoch/dev_loss", "loss/train_step"} <= set(t), tb_run
        hp = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugins_listing", timeout=5))
        assert "hparams" in hp
        # The HParams tab: the experiment TensorBoard builds from the runs' session summaries marks the
        # grid's axes (cell, hidden) as differing, and a constant (lr) as not.
        req = urllib.request.Request(f"http://127.0.0.1:{port}/data/plugin/hparams/experiment",
                                     data=json.dumps({"experimentName": ""}).encode(),
                                     headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"})
        exp = json.load(urllib.request.urlopen(req, timeout=10))
        infos = {h["name"]: h for h in exp["hparamInfos"]}
        assert infos["cell"]["differs"] is True and set(infos["cell"]["domainDiscrete"]) == {"lstm", "gru"}
        assert infos["hidden"]["differs"] is True
        assert infos["lr"]["differs"] is False
        assert {m["name"]["tag"] for m in exp["metricInfos"]} >= {"epoch/dev_loss", "epoch/best_dev_loss"}
    finally:
        p.terminate()
        p.wait(timeout=20)
