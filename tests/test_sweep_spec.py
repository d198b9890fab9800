"""Sweeps without a cluster: the sweep file, validation, the state file, planning, status, dry runs."""
import json
import subprocess
import sys
import time

import pytest


from gruv_hpc.cluster import slurm
from gruv_hpc.cluster import sweep
from gruv_hpc.errors import ConfigError, DatasetError, GruvError
from gruv_hpc.cluster.sweep import JobRecord, RunRecord
from gruv_hpc.cluster.slurm import JobInfo

from conftest import write_sweep


def _record(sw, d, job=None):
    """sweep.json as a submission of ``sw`` to ``d`` would leave it (``job(run)``: its last job)."""
    state = sweep.load_state(d)
    state.runs = {r.name: RunRecord(r.config, r.grid, [job(r)] if job else []) for r in sw.runs}
    state.paths.root.mkdir(parents=True, exist_ok=True)
    state.save()
    return state


def test_plan_and_status_agree_on_a_live_local_job(tmp_path):
    f = write_sweep(tmp_path / "s.toml", tmp_path / "nodata", {"epochs": 1}, {"cell": ["lstm", "gru"]})
    sw, d = sweep.load_sweep(f), tmp_path / "sw"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "submitit"])
    try:
        _record(sw, d, lambda r: JobRecord(str(sleeper.pid), "local", time.time(), sleeper.pid))
        (d / "runs" / "gru").mkdir(parents=True)
        (d / "runs" / "gru" / "done.json").write_text('{"final": {"epoch": 1}}')
        todo, skipped = sweep.plan(sw, sweep.load_state(d))
        assert todo == [] and skipped == {"lstm": f"job {sleeper.pid} is RUNNING", "gru": "done"}
        assert {r["name"]: r["state"] for r in sweep.status(d)} == {"lstm": "RUNNING", "gru": "COMPLETED"}
    finally:
        sleeper.kill()
        sleeper.wait()
    todo, skipped = sweep.plan(sw, sweep.load_state(d))
    assert [r.name for r in todo] == ["lstm"] and skipped == {"gru": "done"}
    assert {r["name"]: r["state"] for r in sweep.status(d)} == {"lstm": "UNKNOWN", "gru": "COMPLETED"}


def test_validation_before_queueing(data, tmp_path):
    """Refused before anything is queued (so no cluster is needed), each error naming its run."""
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 1}, {"artists": [["aurora"], ["nobody"]]})
    with pytest.raises(DatasetError, match="^run nobody: artist.*nobody"):
        sweep.submit(f, tmp_path / "sw", executor="slurm")
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 1, "hiden": 3}, {"cell": ["lstm"]})
    with pytest.raises(ConfigError, match="hiden"):
        sweep.submit(f, tmp_path / "sw", executor="slurm")
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 1, "batch_size": 5}, {"cell": ["lstm"]}, {"tasks_per_node": 2})
    with pytest.raises(ConfigError, match="^run lstm: batch_size: 5 is not divisible by the 2"):
        sweep.submit(f, tmp_path / "sw", executor="slurm")
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 1, "sample_rate": 16000}, {"cell": ["lstm"]})
    with pytest.raises(DatasetError, match="^run lstm: dataset parameter 'sample_rate' is 8000"):
        sweep.submit(f, tmp_path / "sw", executor="slurm")
    assert not (tmp_path / "sw" / "sweep.json").exists()


def test_validation_resolves_dataset_parameters(data, tmp_path):
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 1}, {"cell": ["lstm", "gru"]})
    sw = sweep.load_sweep(f)
    assert sw.runs[0].config["feature_dim"] is None
    sweep.validate(sw, tmp_path / "sw", "local")
    assert {(r.config["sample_rate"], r.config["block_size"], r.config["feature_dim"]) for r in sw.runs} == {(8000, 64, 128)}


def test_world_size_and_gpus_depend_on_the_executor(data, tmp_path):
    """Only Slurm splits the batch over slurm.nodes x slurm.tasks_per_node processes and knows the
    GPUs; the local and debug executors run one process on whatever the machine has."""
    quiet = dict(dry_run=True, out=lambda *a: None)
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 1, "batch_size": 5}, {"cell": ["lstm"]}, {"tasks_per_node": 2})
    with pytest.raises(ConfigError, match="divisible"):
        sweep.submit(f, tmp_path / "sw", executor="slurm", **quiet)
    for kind in ("local", "debug"):
        sweep.submit(f, tmp_path / "sw", executor=kind, **quiet)
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 1, "device": "cuda"}, {"cell": ["lstm"]})
    with pytest.raises(ConfigError, match="^run lstm: device: 'cuda'"):
        sweep.submit(f, tmp_path / "sw", executor="slurm", **quiet)
    sweep.submit(f, tmp_path / "sw", executor="local", **quiet)  # whether this machine has one is not known here
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 1, "device": "cuda"}, {"cell": ["lstm"]},
                    {"gpus_per_node": 1, "tasks_per_node": 1})
    sweep.submit(f, tmp_path / "sw", executor="slurm", **quiet)
    with pytest.raises(ConfigError, match="executor must be"):
        sweep.submit(f, tmp_path / "sw", executor="pbs", **quiet)


def test_dry_run_prints_runs_and_sbatch(data, tmp_path):
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 1}, {"cell": ["lstm", "gru"], "hidden": [4, 8]})
    out = []
    res = sweep.submit(f, tmp_path / "sw", executor="slurm", dry_run=True, out=out.append)
    text = "\n".join(out)
    assert "lstm-h4" in text and "gru-h8" in text and "#SBATCH --array=0-3%4" in text and "#SBATCH --signal=USR2@30" in text
    assert res["scripts"] == [res["scripts"][0]] and res["scripts"][0] in text
    assert not (tmp_path / "sw" / "sweep.json").exists()
    out = []
    res = sweep.submit(f, tmp_path / "sw", executor="local", dry_run=True, out=out.append)
    assert res["scripts"] == [] and "#SBATCH" not in "\n".join(out) and "4 run(s) for the local executor" in out[-1]


def test_dry_run_submits_what_a_submission_would(tmp_path, monkeypatch):
    """Only the runs still to do, in MaxArraySize chunks: an array of 3 and a plain job of 1 here."""
    monkeypatch.setattr(slurm, "max_array_size", lambda: 3)
    f = write_sweep(tmp_path / "s.toml", tmp_path / "nodata", {"epochs": 1}, {"hidden": [2, 3, 4, 5, 6]}, {"array_parallelism": 2})
    d = tmp_path / "sw"
    _record(sweep.load_sweep(f), d)
    (d / "runs" / "h3").mkdir(parents=True)
    (d / "runs" / "h3" / "done.json").write_text('{"final": {"epoch": 1}}')
    out = []
    res = sweep.submit(f, d, executor="slurm", dry_run=True, out=out.append)
    assert res["todo"] == ["h2", "h4", "h5", "h6"] and res["skipped"] == {"h3": "done"} and "skip h3: done" in out
    first, second = res["scripts"]
    assert "#SBATCH --array=0-2%2" in first and "_%A_%a_" not in second and "--array" not in second
    assert "%A_%a_0_log.out" in first and "%j_0_log.out" in second
    for script in (first, second):
        assert f"-u -m submitit.core._submit {d / 'logs'}" in script and "#SBATCH --job-name=s" in script


def test_sbatch_parameters_of_a_slurm_config():
    from gruv_hpc.cluster.config import SlurmConfig
    from gruv_hpc.cluster.slurm import sbatch_parameters, sbatch_script
    cfg = SlurmConfig(partition="gpu", account="proj", time_min=90, nodes=2, gpus_per_node=4, tasks_per_node=4,
                      cpus_per_task=8, mem_gb=1.5, array_parallelism=3, signal_delay_s=60,
                      setup=["module load cuda"], additional={"exclude": "node7"})
    p = sbatch_parameters(cfg, "grid")
    assert p == dict(job_name="grid", time=90, nodes=2, ntasks_per_node=4, cpus_per_task=8, mem="1536MB",
                     array_parallelism=3, signal_delay_s=60, setup=["module load cuda"],
                     additional_parameters={"kill-on-invalid-dep": "yes", "requeue": True, "exclude": "node7"},
                     gpus_per_node=4, partition="gpu",
                     account="proj")
    lines = sbatch_script(p, "/x/logs", 10).splitlines()
    for want in ("#SBATCH --array=0-9%3", "#SBATCH --gpus-per-node=4", "#SBATCH --mem=1536MB", "#SBATCH --nodes=2",
                 "#SBATCH --ntasks-per-node=4", "#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --requeue",
                 "#SBATCH --exclude=node7", "#SBATCH --signal=USR2@60", "#SBATCH --time=90", "module load cuda"):
        assert want in lines, want
    p = sbatch_parameters(SlurmConfig(requeue=False), "grid")
    assert p["additional_parameters"] == {"kill-on-invalid-dep": "yes"} and not {"gpus_per_node", "partition", "account", "qos", "constraint"} & set(p)
    assert "#SBATCH --requeue" not in sbatch_script(p, "/x/logs", 1)


def test_sweep_file_top_level_keys(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('name = "paper"\ndata = "d"\n[grid]\ncell = ["lstm"]\n')
    with pytest.raises(ConfigError, match=r"unknown top-level key\(s\) name; valid: data, train, grid, slurm$"):
        sweep.load_sweep(f)
    f.write_text('data = "d"\n[grid]\ncell = ["lstm", "gru"]\n')
    assert [r.name for r in sweep.load_sweep(f).runs] == ["lstm", "gru"]


# sweep.json as the code before the sweep package wrote it: it must still load.
OLD_STATE = {"version": 1, "runs": {
    "lstm": {"config": {"cell": "lstm", "epochs": 2}, "grid": {"cell": "lstm"},
             "jobs": [{"job_id": "41_0", "executor": "slurm", "submitted": 1.5}], "run_dir": "/old/runs/lstm"},
    "gru": {"config": {"cell": "gru", "epochs": 2}, "grid": {"cell": "gru"},
            "jobs": [{"job_id": "4242", "executor": "local", "submitted": 2.5, "pid": 4242},
                     {"job_id": "DEBUG_1", "executor": "debug", "submitted": 3.5, "pid": None}], "run_dir": "/old/runs/gru"}},
    "submissions": [{"time": 1.0, "executor": "slurm", "runs": ["lstm"], "job_ids": ["41_0"], "overrides": [],
                     "file": "s.toml", "file_sha256": "ab"}],
    "slurm": {"partition": None, "time_min": 10}}


def test_state_file_round_trip(tmp_path):
    (tmp_path / "sweep.json").write_text(json.dumps(OLD_STATE))
    state = sweep.load_state(tmp_path)
    assert state.runs["lstm"].job == JobRecord("41_0", "slurm", 1.5)
    assert [j.pid for j in state.runs["gru"].jobs] == [4242, None]
    # a run's directory is derived from where the sweep directory is now, not from the stored path
    assert state.run_paths("gru").root == tmp_path / "runs" / "gru" and state.submissions == OLD_STATE["submissions"]
    state.save()
    again = json.loads((tmp_path / "sweep.json").read_text())
    OLD_STATE["runs"]["gru"]["jobs"][1].pop("pid")  # a job without a pid is written without the key
    assert again == OLD_STATE
    assert sweep.load_state(tmp_path / "none").runs == {}  # nothing submitted yet


@pytest.mark.parametrize("text", ['{"version": 1, "runs": {"a": {"con', "", '{"runs": []}', '{"runs": {"a": {}}}', "[1]"])
def test_corrupt_state_file_is_named(tmp_path, text):
    (tmp_path / "sweep.json").write_text(text)
    with pytest.raises(GruvError, match=str(tmp_path / "sweep.json")):
        sweep.load_state(tmp_path)
    r = subprocess.run([sys.executable, "-m", "gruv_hpc.cli", "sweep", "status", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and f"{tmp_path / 'sweep.json'}" in r.stderr


def test_wait_asks_slurm_once_per_poll(tmp_path, monkeypatch):
    f = write_sweep(tmp_path / "s.toml", tmp_path / "nodata", {"epochs": 1}, {"cell": ["lstm"]})
    _record(sweep.load_sweep(f), tmp_path / "sw", lambda r: JobRecord("7_0", "slurm", time.time()))
    answers = [{"7_0": JobInfo("PENDING")}, {"7_0": JobInfo("RUNNING")}, {"7_0": JobInfo("CANCELLED", 0, "0:0")}]
    calls = []
    monkeypatch.setattr(slurm, "job_states", lambda ids: calls.append(ids) or answers[len(calls) - 1])
    rows = sweep.wait(tmp_path / "sw", poll_s=0, progress=False)
    assert rows[0]["state"] == "CANCELLED" and calls == [["7_0"]] * 3
    calls.clear()
    answers[0] = answers[2]
    sweep.wait(tmp_path / "sw", poll_s=0, progress=False)
    assert len(calls) == 1  # an ended sweep: one status, one sacct call


def test_format_status():
    rows = [dict(name="aurora-lstm-h8", state="RUNNING", job_id="41_0", epoch=3, epochs=10, train_loss=0.5, dev_loss=0.25,
                 best_dev_loss=0.2, heartbeat_age_s=4.0, ckpt_age_s=30.0, requeues=1, error=None),
            dict(name="aurora-gru-h8", state="FAILED", job_id="41_1", epoch=0, epochs=10, train_loss=None, dev_loss=None,
                 best_dev_loss=None, heartbeat_age_s=None, ckpt_age_s=7300.0, requeues=0, error="Traceback\nValueError: bad"),
            dict(name="circuit-lstm-h8", state="PENDING", reason="Resources", job_id="41_2", epoch=0, epochs=10,
                 train_loss=None, dev_loss=None, best_dev_loss=None, heartbeat_age_s=None, ckpt_age_s=None, requeues=0,
                 error=None),
            dict(name="circuit-gru-h8", state="PENDING", reason="Dependency", job_id="42_0", epoch=0, epochs=10,
                 train_loss=None, dev_loss=None, best_dev_loss=None, heartbeat_age_s=None, ckpt_age_s=None, requeues=0,
                 error=None)]
    text = sweep.format_status(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["run", "state", "job", "epoch", "train", "dev", "best", "dev", "heartbeat", "ckpt", "age",
                                "requeues"]
    assert lines[1].split() == ["aurora-lstm-h8", "RUNNING", "41_0", "3/10", "0.5000", "0.2500", "0.2000", "4s", "30s", "1"]
    assert lines[2].split() == ["aurora-gru-h8", "FAILED", "41_1", "0/10", "-", "-", "-", "-", "2.0h", "0"]
    assert lines[3:5] == ["    | Traceback", "    | ValueError: bad"]
    assert lines[5].split()[:4] == ["circuit-lstm-h8", "PENDING", "(Resources)", "41_2"]
    assert lines[-1] == "1 FAILED, 2 PENDING (1 Dependency, 1 Resources), 1 RUNNING"
    assert len({len(ln) for ln in (lines[0], lines[1], lines[5], lines[6])}) == 1  # the columns line up


def test_local_job_liveness():
    """A local job lives while its process does: not once it is a zombie, and already while it is
    still in exec (its /proc cmdline is empty for a moment: status right after a submission)."""
    from gruv_hpc.cluster.sweep.status import job_state
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    for _ in range(30):
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "submitit"])
        try:
            assert job_state(JobRecord(str(p.pid), "local", 0.0, p.pid), {}) == "RUNNING"
        finally:
            p.kill()
            p.wait()
    time.sleep(0.5)  # it has exited, and nobody has waited for it
    assert job_state(JobRecord(str(zombie.pid), "local", 0.0, zombie.pid), {}) is None
    zombie.wait()
    assert job_state(JobRecord("1", "local", 0.0, None), {}) is None and job_state(None, {}) is None
