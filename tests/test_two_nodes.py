"""A real two-node DDP run on a second local Slurm cluster (``slurm/cluster.sh start --two-nodes``:
nodes gruvn1 and gruvn2, two slurmd on this machine), started and stopped by this module; the shared
cluster the other tests use is left alone. The run is preempted once and must resume bitwise
equal to the same config left alone."""
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gruv_hpc.cluster import sweep
from gruv_hpc.paths import RunPaths, read_jsonl
from gruv_hpc.training.checkpoint import load_checkpoint

from conftest import wait_for_checkpoint, write_sweep

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).parent.parent
STATE = Path(os.environ.get("GRUV_SLURM2_STATE", "/tmp/gruv-slurm-2n"))


def cluster(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "slurm" / "cluster.sh"), *args, "--two-nodes"], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def two_nodes():
    """The second cluster, for this module only: its clients find it through SLURM_CONF. A lock
    keeps two test sessions on one machine from stopping it under each other."""
    if os.geteuid() != 0:
        why = "the two-node cluster writes /etc/hosts and starts slurmd: needs root"
        if os.environ.get("GRUV_REQUIRE_SLURM") == "1":  # CI (tests/run.sh): required, as the other Slurm tests
            pytest.fail(why)
        pytest.skip(why)
    with open(str(STATE) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        r = cluster("start")
        if r.returncode != 0:
            cluster("stop")  # whatever half started goes, the /etc/hosts line with it
            pytest.fail(f"slurm/cluster.sh start --two-nodes failed: {r.stderr}")
        before = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(STATE / "slurm.conf")
        try:
            yield STATE / "slurm.conf"
        finally:
            if before is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = before
            r = cluster("stop")
            assert r.returncode == 0, r.stderr
            assert "gruvn1" not in Path("/etc/hosts").read_text()  # the hosts line went with it


def job_of(sweep_dir) -> str:
    return json.loads((Path(sweep_dir) / "sweep.json").read_text())["runs"]["lstm"]["jobs"][-1]["job_id"]


def test_two_node_run_preempted_resumes_bitwise(two_nodes, data, tmp_path):
    """~50 s here: two 2-node jobs one after the other (each holds both CPUs), one requeue."""
    train = {"epochs": 6, "batch_size": 4, "workers": 0, "gen_seconds": 0.0, "hidden": 8, "limit_train_batches": 12}
    f = write_sweep(tmp_path / "two.toml", data, train, {"cell": ["lstm"]}, {"nodes": 2, "tasks_per_node": 1})
    a, b = tmp_path / "preempted", tmp_path / "straight"
    for d in (a, b):  # through the command, as a user submits; the second queues behind the first (both CPUs)
        r = subprocess.run([sys.executable, "-m", "gruv_hpc.cli", "sweep", "submit", str(f), "--out", str(d),
                            "--executor", "slurm"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    run = RunPaths(a / "runs" / "lstm")
    wait_for_checkpoint(run.root)
    jid = job_of(a)
    subprocess.run(["scancel", "--signal=USR2", jid], check=True)
    rows = {r["name"]: r for r in sweep.wait(a, poll_s=1, progress=False, timeout_s=300)}
    assert rows["lstm"]["state"] == "COMPLETED" and rows["lstm"]["requeues"] >= 1, rows
    log = "".join(p.read_text() for p in (a / "logs").glob(f"{jid}_0_log.out"))
    assert "resumed from" in log
    rows = {r["name"]: r for r in sweep.wait(b, poll_s=1, progress=False, timeout_s=300)}
    assert rows["lstm"]["state"] == "COMPLETED", rows
    for d in (a, b):  # each run had both nodes, one rank on each
        assert json.loads((d / "runs" / "lstm" / "config.json").read_text())["world_size"] == 2
        nodes = subprocess.run(["sacct", "-n", "-X", "-j", job_of(d), "-o", "NodeList%40"], capture_output=True,
                               text=True).stdout.split()
        assert set(nodes) == {"gruvn[1-2]"}, nodes
    wa = load_checkpoint(RunPaths(a / "runs" / "lstm").step_ckpts()[0])["model"]
    wb = load_checkpoint(RunPaths(b / "runs" / "lstm").step_ckpts()[0])["model"]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ha, hb = read_jsonl(run.metrics), read_jsonl(RunPaths(b / "runs" / "lstm").metrics)
    assert [h["epoch"] for h in ha] == list(range(1, 7))
    assert [h["dev_loss"] for h in ha] == [h["dev_loss"] for h in hb]
    assert [h["train_loss"] for h in ha] == [h["train_loss"] for h in hb]
