"""Requests checked against the cluster before anything is queued, resources per grid point
([[slurm.when]]), jobs/cpu_grid.toml, and the canary: parsers from output recorded on the local
cluster (Slurm 22.05.8); refusals at --dry-run and at submit on the real local Slurm, with nothing
queued after them; a canary holding a grid behind a failing setup line."""
import dataclasses
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import TINY, write_sweep
from gruv_hpc.cluster import slurm
from gruv_hpc.cluster import sweep
from gruv_hpc.cluster.canary import CanaryJob, canary_config
from gruv_hpc.cluster.config import SlurmConfig
from gruv_hpc.cluster.slurm import (check_request, parse_gres_gpus, parse_nodes, parse_partitions, parse_time_min)
from gruv_hpc.errors import ConfigError, GruvError

ROOT = Path(__file__).resolve().parent.parent

# `scontrol show partition -o` and `scontrol show node -o` on the local cluster (slurm/cluster.sh).
PARTITION = ("PartitionName=debug AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=YES QoS=N/A "
             "DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED "
             "MaxTime=UNLIMITED MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=vm PriorityJobFactor=1 PriorityTier=1 "
             "RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP TotalCPUs=2 "
             "TotalNodes=1 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED "
             "TRES=cpu=2,mem=21694M,node=1,billing=2\n")
NODE = ("NodeName=vm Arch=x86_64 CoresPerSocket=2  CPUAlloc=0 CPUEfctv=2 CPUTot=2 CPULoad=0.16 AvailableFeatures=(null) "
        "ActiveFeatures=(null) Gres=gpu:2 NodeAddr=127.0.0.1 NodeHostName=vm Version=22.05.8 OS=Linux 6.18.44-fc-v1147 "
        "#1 SMP PREEMPT_DYNAMIC @0  RealMemory=21694 AllocMem=0 FreeMem=23357 Sockets=1 Boards=1 State=IDLE "
        "ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A Partitions=debug  BootTime=2026-12-05T14:44:47 "
        "SlurmdStartTime=2026-12-05T17:06:42 LastBusyTime=2026-12-05T17:06:42 CfgTRES=cpu=2,mem=21694M,billing=2 "
        "AllocTRES= CapWatts=n/a CurrentWatts=0 AveWatts=0 ExtSensorsJoules=n/s ExtSensorsWatts=0 ExtSensorsTemp=n/s\n")
# The same lines with the limits a larger cluster sets (a second partition with MaxTime,
# MaxNodes and MaxMemPerNode; a node of typed GPUs with features, in both partitions).
BIG_PARTITIONS = PARTITION + PARTITION.replace("PartitionName=debug", "PartitionName=gpu").replace(
    "Default=YES", "Default=NO").replace("MaxTime=UNLIMITED", "MaxTime=2-00:00:00").replace(
    "MaxNodes=UNLIMITED", "MaxNodes=2").replace("MaxMemPerNode=UNLIMITED", "MaxMemPerNode=65536").replace(
    "Nodes=vm", "Nodes=vm,g1")
BIG_NODES = NODE + NODE.replace("NodeName=vm", "NodeName=g1").replace("CPUEfctv=2 CPUTot=2", "CPUEfctv=30 CPUTot=32").replace(
    "RealMemory=21694", "RealMemory=257000").replace("Gres=gpu:2", "Gres=gpu:a100:4(S:0-1)").replace(
    "AvailableFeatures=(null)", "AvailableFeatures=a100,ib").replace("Partitions=debug", "Partitions=debug,gpu")


def test_parsers_read_the_recorded_output():
    parts, nodes = parse_partitions(PARTITION), parse_nodes(NODE)
    assert parts == {"debug": slurm.PartitionInfo("debug", True, "UP", None, None, None, None, 1)}
    assert nodes == {"vm": slurm.NodeInfo("vm", 2, 21694, 2, ("debug",), (), "IDLE")}
    big, bign = parse_partitions(BIG_PARTITIONS), parse_nodes(BIG_NODES)
    assert big["gpu"].max_time_min == 2880 and big["gpu"].max_nodes == 2 and big["gpu"].max_mem_per_node_mb == 65536
    assert not big["gpu"].default and big["debug"].default
    assert bign["g1"] == slurm.NodeInfo("g1", 30, 257000, 4, ("debug", "gpu"), ("a100", "ib"), "IDLE")
    assert parse_partitions("") == {} and parse_nodes("No nodes in the system\n") == {}


@pytest.mark.parametrize("text, minutes", [("UNLIMITED", None), ("infinite", None), ("30", 30), ("1:30:00", 90),
                                           ("2-00:00:00", 2880), ("1-12", 2160), ("10:30", 11), ("0:00:01", 1)])
def test_slurm_times(text, minutes):
    assert parse_time_min(text) == minutes


@pytest.mark.parametrize("gres, n", [("gpu:2", 2), ("(null)", 0), ("gpu:a100:4(S:0-1)", 4), ("gpu:a100:2,gpu:v100:1", 3),
                                     ("gpu:a100:2(S:0,1),mps:100", 2), ("gpu", 1)])
def test_gres_gpus(gres, n):
    assert parse_gres_gpus(gres) == n


@pytest.mark.parametrize("kw, message", [
    ({"cpus_per_task": 6}, "cpus_per_task=6 but partition debug's largest node has 2 CPUs"),
    ({"mem_gb": 10000}, "mem_gb=10000 (10240000 MB) but partition debug's largest node has 21694 MB"),
    ({"gpus_per_node": 3, "tasks_per_node": 3, "cpus_per_task": 1}, "gpus_per_node=3 but partition debug's largest node has 2 GPUs"),
    ({"cpus_per_task": 1, "tasks_per_node": 3}, "cpus_per_task=1 x tasks_per_node=3 = 3 CPUs but partition debug's "
                                               "largest node has 2 CPUs"),
    ({"partition": "gpu"}, "partition=gpu does not exist; partitions: debug"),
    ({"nodes": 2}, "nodes=2 of 2 CPUs, 4096 MB and 0 GPUs each, but partition debug has 1 node(s)"),
])
def test_oversized_requests_name_the_resource_and_the_limit(kw, message):
    why = check_request(SlurmConfig(**kw), parse_partitions(PARTITION), parse_nodes(NODE), "grid.toml [slurm]")
    assert why.startswith("grid.toml [slurm]: ") and message in why, why


def test_partition_limits_and_features():
    parts, nodes = parse_partitions(BIG_PARTITIONS), parse_nodes(BIG_NODES)
    ok = SlurmConfig(partition="gpu", gpus_per_node=4, tasks_per_node=4, cpus_per_task=6, mem_gb=60, time_min=2880)
    assert check_request(ok, parts, nodes) is None
    for change, needle in [({"time_min": 2881}, "time_min=2881 but partition gpu's time limit is 2880 min (MaxTime)"),
                           ({"mem_gb": 100}, "allows 65536 MB per node (MaxMemPerNode)"),
                           ({"nodes": 3}, "nodes=3 but partition gpu allows 2 per job (MaxNodes)"),
                           ({"nodes": 2}, "nodes=2 of 24 CPUs, 61440 MB and 4 GPUs each, but partition gpu has 1 node(s)"),
                           ({"constraint": "h100"}, "constraint=h100 but no node of partition gpu has that feature")]:
        why = check_request(dataclasses.replace(ok, **change), parts, nodes)
        assert why and needle in why, (change, why)
    # the default partition holds both nodes: a 4-GPU job fits there too (on g1)
    assert check_request(dataclasses.replace(ok, partition=None, time_min=5000), parts, nodes) is None


def test_the_local_scheduler_checks_nothing(tmp_path):
    from gruv_hpc.cluster.executors import scheduler
    assert scheduler("local").check({"x": SlurmConfig(cpus_per_task=600)}) is None


# ---------------------------------------------------------------------------------------------
# [[slurm.when]]

WHEN = '\n[[slurm.when]]\nhidden = 16\nmem_gb = 2.0\ntime_min = 20\n'


def test_a_when_rule_the_command_line_empties_is_said_and_grid_data_values_are_checked(data, tmp_path):
    """Issue 32 L4: a rule emptied by hidden=8 was dropped silently; grid.data= values were not checked."""
    f = write_sweep(tmp_path / "w.toml", data, {"epochs": 1}, {"hidden": [8, 16]})
    f.write_text(f.read_text() + WHEN)
    sw = sweep.load_sweep(f, ["hidden=8"])
    assert any("[[slurm.when]] #1 selects hidden = 16, which no run trains" in n for n in sw.notes), sw.notes
    assert not any("slurm.when" in n for n in sweep.load_sweep(f).notes)
    from gruv_hpc.errors import DatasetError
    with pytest.raises(DatasetError, match="run .*nowhere: /nowhere: dataset directory does not exist"):
        sweep.submit(f, tmp_path / "sw", executor="local", dry_run=True, out=lambda *a: None,
                     overrides=[f"grid.data={data},/nowhere"])


def test_when_rules_give_their_points_other_resources_and_arrays(data, tmp_path):
    f = write_sweep(tmp_path / "w.toml", data, {"epochs": 1, "batch_size": 4, "workers": 0, "gen_seconds": 0.0},
                    {"cell": ["lstm", "gru"], "hidden": [8, 16]})
    f.write_text(f.read_text() + WHEN)
    sw = sweep.load_sweep(f, ["slurm.cpus_per_task=2"])
    res = {r.name: sw.resources(r) for r in sw.runs}
    assert res["lstm-h16"].mem_gb == res["gru-h16"].mem_gb == 2.0 and res["gru-h16"].time_min == 20
    assert res["lstm-h8"].mem_gb == 1.0 and res["lstm-h8"].time_min == 10
    assert all(r.cpus_per_task == 2 for r in res.values())  # the command line over both
    arrays = sweep.submit.__globals__["job_arrays"](sw.runs, slurm.SlurmScheduler())
    assert [[r.name for r in a] for a in arrays] == [["lstm-h8", "gru-h8"], ["lstm-h16", "gru-h16"]]
    printed = []
    sweep.submit(f, tmp_path / "sw", executor="slurm", dry_run=True, out=printed.append,
                 overrides=["slurm.cpus_per_task=2"])
    scripts = [p for p in printed if p.startswith("#!/bin/bash")]
    assert len(scripts) == 2 and "--mem=1024MB" in scripts[0] and "--mem=2048MB" in scripts[1]
    assert "--time=20" in scripts[1] and not (tmp_path / "sw").exists()
    assert set(sw.requests()) == {f"{f} [slurm]", f"{f} [[slurm.when]] (run lstm-h16)"}


@pytest.mark.parametrize("rule, needle", [
    ("hiden = 16\nmem_gb = 2.0", "unknown key(s) 'hiden'; valid: grid keys (cell, hidden) to select points, slurm keys "
                                 "(partition, account"),
    ("hidden = 2048\nmem_gb = 2.0", "hidden = 2048 is not a value of [grid] hidden ([8, 16])"),
    ("hidden = 16", "needs a grid key to select points (cell, hidden) and a slurm key to set"),
    ("mem_gb = 2.0", "needs a grid key to select points"),
    ("hidden = 16\nmem_gb = \"lots\"", "[[slurm.when]] (run lstm-h16): mem_gb: expected float, got 'lots'"),
    ("hidden = 16\ngpus_per_node = 2", "[[slurm.when]] (run lstm-h16): slurm.tasks_per_node (1) must equal"),
])
def test_bad_when_rules_are_one_line_errors(data, tmp_path, rule, needle):
    f = write_sweep(tmp_path / "w.toml", data, {"epochs": 1}, {"cell": ["lstm", "gru"], "hidden": [8, 16]})
    f.write_text(f.read_text() + "\n[[slurm.when]]\n" + rule + "\n")
    with pytest.raises(ConfigError) as e:
        sweep.load_sweep(f)
    assert needle in str(e.value) and str(e.value).startswith(f"{f} [[slurm.when]]"), str(e.value)


def test_cpu_grid_template_loads_fits_a_two_cpu_node_and_asks_no_gpu():
    sw = sweep.load_sweep(ROOT / "jobs" / "cpu_grid.toml")
    assert len(sw.runs) == 8 and all(r.config["device"] == "cpu" for r in sw.runs)
    for cfg in sw.requests().values():
        assert cfg.gpus_per_node == 0 and not cfg.setup
        assert check_request(cfg, parse_partitions(PARTITION), parse_nodes(NODE)) is None
    assert {sw.resources(r).mem_gb for r in sw.runs if r.grid["hidden"] == 256} == {4.0}


def test_canary_setup_lines_stop_at_the_first_failure(tmp_path):
    cfg = canary_config(SlurmConfig(setup=["echo one", "false", "echo three"], time_min=600, signal_delay_s=120))
    script = tmp_path / "s.sh"
    script.write_text("\n".join(cfg.setup) + "\necho reached\n")
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout.split() == ["one"]
    assert "gruv canary: setup line failed: false (exit 1)" in r.stderr
    assert cfg.time_min == 20 and not cfg.requeue and cfg.max_num_timeout == 0


@pytest.mark.parametrize("run_device, gpus, device", [("auto", 1, "cuda"), ("auto", 0, "cpu"), ("cpu", 2, "cpu"),
                                                       ("cuda", None, "cuda"), ("auto", None, "cpu")])
def test_the_canary_tests_the_device_the_runs_get(run_device, gpus, device):
    from gruv_hpc.cluster.canary import canary_device
    assert canary_device(run_device, gpus) == device


def test_canary_job_trains_one_step_on_the_dataset(data):
    found = CanaryJob(str(data), "cpu", "gru")()
    assert found["train_clips"] > 0 and found["device"] == "cpu" and found["loss"] > 0
    with pytest.raises(GruvError, match="cannot read /nowhere"):
        CanaryJob(None, "cpu", "lstm", ("/nowhere",))()


def test_local_canary_runs_first_and_a_failed_one_starts_nothing(data, tmp_path):
    f = write_sweep(tmp_path / "c.toml", data, {"epochs": 1, "batch_size": 4, "workers": 0, "gen_seconds": 0.0,
                                                "hidden": 8, "limit_train_batches": 2}, {"cell": ["gru"]})
    out = []
    res = sweep.submit(f, tmp_path / "ok", executor="local", canary=True, out=out.append, progress=False)
    assert res["submitted"] == ["gru"] and not res["failed"]
    assert any(o.startswith("canary: OK") for o in out) and out.index(next(o for o in out if o.startswith("canary: OK"))) \
        < out.index(next(o for o in out if o.startswith("running 1 run(s)")))
    from gruv_hpc.cluster.canary import submit_canary
    from gruv_hpc.cluster.executors import scheduler
    with pytest.raises(GruvError, match="canary failed, nothing else started: .*cannot read /nowhere"):
        submit_canary(scheduler("local"), SlurmConfig(), CanaryJob(None, "cpu", "gru", ("/nowhere",)),
                      tmp_path / "bad-logs", "x", None, lambda *a: None)


# ---------------------------------------------------------------------------------------------
# On the local Slurm: refused before anything is queued, at --dry-run and at submit

def cli(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "gruv_hpc.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def queued(name: str) -> list[str]:
    """Jobs of that (unique) name in the queue or in accounting (submitted in the last hour)."""
    q = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True).stdout.split()
    a = subprocess.run(["sacct", "-n", "-X", "-P", "--name", name, "-o", "JobID", "-S", "now-1hour"],
                       capture_output=True, text=True).stdout.split()
    return q + a


@pytest.mark.slurm
def test_an_oversized_sweep_is_refused_at_dry_run_and_at_submit(data, tmp_path):
    name = f"big-{uuid.uuid4().hex[:8]}"
    f = write_sweep(tmp_path / f"{name}.toml", data, {"epochs": 1, "workers": 0}, {"cell": ["lstm"]}, {"cpus_per_task": 6})
    for extra in (["--dry-run"], []):
        r = cli("sweep", "submit", f, "--out", tmp_path / "sw", "--executor", "slurm", *extra)
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [
            f"gruv: error: {f} [slurm]: cpus_per_task=6 but partition debug's largest node has 2 CPUs"], r.stderr
    r = cli("sweep", "submit", f, "--out", tmp_path / "sw", "--executor", "slurm", "slurm.cpus_per_task=1",
            "slurm.partition=gpu")
    assert r.returncode == 2 and "partition=gpu does not exist; partitions: debug" in r.stderr
    f.write_text(f.read_text().replace("cpus_per_task = 6", "cpus_per_task = 1") + WHEN.replace("16", '"lstm"').replace(
        "hidden", "cell").replace("mem_gb = 2.0", "mem_gb = 10000"))
    r = cli("sweep", "submit", f, "--out", tmp_path / "sw", "--executor", "slurm")
    assert r.returncode == 2 and f"{f} [[slurm.when]] (run lstm): mem_gb=10000 (10240000 MB) but partition debug's " \
                                 f"largest node has 21694 MB" in r.stderr, r.stderr
    assert not (tmp_path / "sw" / "sweep.json").exists() and queued(name) == []


@pytest.mark.slurm
def test_an_oversized_preprocess_array_is_refused(corpus, tmp_path):
    out = tmp_path / f"ds-{uuid.uuid4().hex[:8]}"
    r = cli("preprocess", f"aurora={corpus / 'aurora'}", f"circuit={corpus / 'circuit'}", "--out", out, "--jobs", 2,
            "--executor", "slurm", "--sample-rate", TINY["sample_rate"], "--block-size", TINY["block_size"],
            "--clip-blocks", TINY["clip_blocks"], "slurm.cpus_per_task=6")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "gruv: error: preprocess [slurm]: cpus_per_task=6 but partition debug's largest node has 2 CPUs"], r.stderr
    assert not out.exists() and queued(f"gruv-preprocess-{out.name}") == [] and queued(f"gruv-merge-{out.name}") == []


@pytest.mark.slurm
def test_an_oversized_pipeline_is_refused_before_any_stage_is_queued(corpus, tmp_path):
    from test_pipeline import tiny_tables, write
    f = write(tmp_path / "p.toml", tiny_tables(corpus))
    out = tmp_path / f"pl-{uuid.uuid4().hex[:8]}"
    for args, needle in [(["sweep.slurm.gpus_per_node=3", "sweep.slurm.tasks_per_node=3"],
                          f"{f} [sweep.slurm]: gpus_per_node=3 but partition debug's largest node has 2 GPUs"),
                         (["analysis.slurm.mem_gb=10000"], f"{f} [analysis.slurm]: mem_gb=10000"),
                         (["preprocess.slurm.cpus_per_task=6"], f"{f} [preprocess.slurm]: cpus_per_task=6")]:
        r = cli("pipeline", "submit", f, "--out", out, "--executor", "slurm", *args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr
    assert not (out / "pipeline.json").exists() and not (out / "data").exists()
    # submitit writes each job's pickle into the logs folder as it submits: none there, none queued
    assert not list(out.rglob("*.pkl")) and queued(f"gruv-analyze-{out.name}") == []


@pytest.mark.slurm
def test_the_readme_cluster_section_fits_the_local_partition(tmp_path):
    """Its dry run, on the local 2-CPU partition, with the template the README names."""
    lines = (ROOT / "README.md").read_text().split("## On your cluster", 1)[1].split("\n## ", 1)[0]
    assert "jobs/cpu_grid.toml" in lines and "jobs/paper_grid.toml" in lines
    r = cli("sweep", "submit", ROOT / "jobs" / "cpu_grid.toml", "--out", tmp_path / "sw", "--executor", "slurm",
            "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "resources checked against partition(s) debug: 2 request(s) fit" in r.stdout


# ---------------------------------------------------------------------------------------------
# The canary on the local Slurm

def _job_states(ids):
    return {j: i.state for j, i in slurm.job_states(ids).items()}


def _wait_ended(ids, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = _job_states(ids)
        if all(j in st and st[j] not in slurm.ACTIVE for j in ids):
            return st
        time.sleep(1)
    raise AssertionError(f"jobs {ids} still active: {_job_states(ids)}")


@pytest.mark.slurm
def test_a_failing_setup_line_fails_the_canary_and_no_run_trains(data, tmp_path):
    f = write_sweep(tmp_path / "c.toml", data, {"epochs": 1, "batch_size": 4, "workers": 0, "gen_seconds": 0.0,
                                                "hidden": 8, "limit_train_batches": 2},
                    {"cell": ["lstm", "gru"]}, {"setup": ["echo setting up", "false"]})
    d = tmp_path / "sw"
    res = sweep.submit(f, d, executor="slurm", canary=True, out=lambda *a: None)
    state = json.loads((d / "sweep.json").read_text())
    canary = state["submissions"][-1]["canary"]
    runs = [state["runs"][n]["jobs"][-1]["job_id"] for n in res["submitted"]]
    assert _wait_ended([canary])[canary] == "FAILED"
    err = (d / "logs" / f"{canary}_0_log.err").read_text()
    assert "gruv canary: setup line failed: false (exit 1)" in err
    st = _wait_ended(runs)
    assert set(st.values()) == {"CANCELLED"}, st  # kill-on-invalid-dep: never started
    # status says why (issue 32 L2: it read CANCELLED, no reason)
    for row in sweep.status(d):
        assert f"cancelled: its canary, job {canary}, ended FAILED" in row["error"], row["error"]
        assert "setup line failed: false" in row["error"]
    for n in res["submitted"]:
        assert not (d / "runs" / n / "metrics.jsonl").exists() and not list((d / "runs" / n).glob("ckpt*"))


@pytest.mark.slurm
def test_a_passing_canary_lets_the_grid_run(data, tmp_path):
    f = write_sweep(tmp_path / "c.toml", data, {"epochs": 1, "batch_size": 4, "workers": 0, "gen_seconds": 0.0,
                                                "hidden": 8, "limit_train_batches": 2},
                    {"cell": ["gru"]}, {"setup": ["echo setting up"]})
    d = tmp_path / "sw"
    printed = []
    sweep.submit(f, d, executor="slurm", canary=True, dry_run=True, out=printed.append)
    assert any("the canary, which the arrays wait for" in p for p in printed) and not d.exists()
    sweep.submit(f, d, executor="slurm", canary=True, out=lambda *a: None)
    state = json.loads((d / "sweep.json").read_text())
    canary = state["submissions"][-1]["canary"]
    run = state["runs"]["gru"]["jobs"][-1]["job_id"]
    st = _wait_ended([canary, run])
    assert st == {canary: "COMPLETED", run: "COMPLETED"}, st
    assert "gruv canary: OK" in (d / "logs" / f"{canary}_0_log.out").read_text()
    assert (d / "runs" / "gru" / "metrics.jsonl").exists()


@pytest.mark.slurm
def test_each_resource_set_gets_its_own_canary(data, tmp_path):
    """Issue 32 M8: a [[slurm.when]] rule's setup lines are proven too. Its canary fails, and only
    its array is cancelled; the base table's canary passes and its run trains."""
    f = write_sweep(tmp_path / "c.toml", data, {"epochs": 1, "batch_size": 4, "workers": 0, "gen_seconds": 0.0,
                                                "hidden": 8, "limit_train_batches": 2},
                    {"cell": ["lstm", "gru"]}, {"setup": ["echo setting up"]})
    f.write_text(f.read_text() + '\n[[slurm.when]]\ncell = "gru"\nsetup = ["echo gru node", "false"]\n')
    d = tmp_path / "sw"
    printed = []
    sweep.submit(f, d, executor="slurm", canary=True, dry_run=True, out=printed.append)
    assert sum("# the canary " in p for p in printed) == 2 and any("setup line failed: false" in p for p in printed)
    sweep.submit(f, d, executor="slurm", canary=True, out=lambda *a: None)
    state = json.loads((d / "sweep.json").read_text())
    base, rule = state["submissions"][-1]["canaries"]
    jobs = {n: state["runs"][n]["jobs"][-1]["job_id"] for n in ("lstm", "gru")}
    st = _wait_ended([base, rule, *jobs.values()])
    assert st == {base: "COMPLETED", rule: "FAILED", jobs["lstm"]: "COMPLETED", jobs["gru"]: "CANCELLED"}, st
    assert "gruv canary: setup line failed: false (exit 1)" in (d / "logs" / f"{rule}_0_log.err").read_text()


@pytest.mark.slurm
def test_sweep_cancel_cancels_a_queued_canary(data, tmp_path):
    """Issue 32 L2: `gruv sweep cancel` left the queued canary to run."""
    from gruv_hpc.cluster.scheduler import Dependency
    held = subprocess.run(["sbatch", "--hold", "--parsable", "-t", "1", "--wrap", "true"], capture_output=True,
                          text=True, check=True).stdout.strip().split(";")[0]
    try:
        f = write_sweep(tmp_path / "c.toml", data, {"epochs": 1, "batch_size": 4, "workers": 0, "gen_seconds": 0.0,
                                                    "hidden": 8, "limit_train_batches": 2}, {"cell": ["gru"]})
        d = tmp_path / "sw"
        sweep.submit(f, d, executor="slurm", canary=True, out=lambda *a: None, after=Dependency(after_ok=(held,)))
        canary = json.loads((d / "sweep.json").read_text())["submissions"][-1]["canary"]
        sweep.cancel(d, out=lambda *a: None)
        assert _wait_ended([canary])[canary] == "CANCELLED"
    finally:
        subprocess.run(["scancel", held])


@pytest.mark.slurm
def test_a_pipeline_canary_holds_every_stage(corpus, tmp_path):
    """A failing setup line in [sweep.slurm]: the canary fails, and the preprocessing, the runs and
    the analysis, all queued behind it, never run."""
    from test_pipeline import tiny_tables, write
    from gruv_hpc.cluster import pipeline
    t = tiny_tables(corpus)
    t["sweep.slurm"] = {**t["sweep.slurm"], "setup": ["false"]}
    f = write(tmp_path / "p.toml", t)
    out = tmp_path / "pl"
    sub = pipeline.submit(f, out, executor="slurm", canary=True, say=lambda *a: None)
    assert json.loads((out / "pipeline.json").read_text())["submissions"][-1]["canary"] == sub["canary"]
    ids = [*sub["preprocess"]["tasks"].values(), sub["preprocess"]["merge"], *sub["train"]["job_ids"], sub["analysis"]["job"]]
    assert _wait_ended([sub["canary"]])[sub["canary"]] == "FAILED"
    st = _wait_ended(ids)
    assert set(st.values()) == {"CANCELLED"}, st
    assert not (out / "data" / "manifest.json").exists() and not (out / "report").exists()
    # status blames the canary, not the preprocessing (issue 32 L2)
    text = pipeline.format_status(pipeline.status(out))
    assert f"cancelled: its canary, job {sub['canary']}, ended FAILED" in text, text
    assert "the preprocessing failed" not in text


@pytest.mark.slurm
def test_when_rules_on_slurm_each_run_records_the_job_of_its_own_array(data, tmp_path):
    f = write_sweep(tmp_path / "w.toml", data, {"epochs": 1, "batch_size": 4, "workers": 0, "gen_seconds": 0.0},
                    {"cell": ["lstm", "gru"], "hidden": [8, 16]})  # (grid order mixes the two resource sets)
    f.write_text(f.read_text() + WHEN)
    d = tmp_path / "sw"
    sweep.submit(f, d, executor="slurm", out=lambda *a: None)
    runs = json.loads((d / "sweep.json").read_text())["runs"]
    ids = {n: r["jobs"][-1]["job_id"] for n, r in runs.items()}
    try:
        # squeue (pending array tasks as one row, 123_[0-1]); its memory and time limit per job
        q = subprocess.run(["squeue", "-h", "-j", ",".join({j.split("_")[0] for j in ids.values()}), "-o", "%i|%m|%l"],
                           capture_output=True, text=True).stdout
        rows = {}
        for line in q.splitlines():
            jid, mem, limit = line.split("|")
            for j in slurm.expand_array_id(jid):
                rows[j] = (mem, limit)
        for name, jid in ids.items():  # (a task that already ended is not listed: nothing to hold it to)
            if jid in rows:
                assert rows[jid] == (("2G", "20:00") if name.endswith("h16") else ("1G", "10:00")), (name, rows)
        assert len([j for j in ids.values() if j in rows]) >= 2, rows
    finally:
        sweep.cancel(d)
