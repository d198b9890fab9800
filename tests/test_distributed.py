"""The distributed environment (jobenv's backends) and the preemption signal, without a cluster (the GPU mocked)."""
import shutil
import subprocess
import sys

import pytest
import torch

from gruv_hpc import jobenv
from gruv_hpc.errors import ConfigError, TrainingError
from gruv_hpc.training import distributed
from gruv_hpc.training.distributed import cuda_device, export_env

# Node lists as Slurm writes them (SLURM_JOB_NODELIST), and their names in order.
NODELISTS = [
    ("n1", ["n1"]),
    ("gruvn[1-2]", ["gruvn1", "gruvn2"]),
    ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
    ("gpu-a[1-2],cpu[001-003]", ["gpu-a1", "gpu-a2", "cpu001", "cpu002", "cpu003"]),
    ("a[1,3-4]-ib", ["a1-ib", "a3-ib", "a4-ib"]),  # a suffix (Slurm 22.05's scontrol refuses this form)
    ("r[1-2]-n[1-3]", ["r1-n1", "r1-n2", "r1-n3", "r2-n1", "r2-n2", "r2-n3"]),  # prefixes within prefixes
    ("node[9-11]", ["node9", "node10", "node11"]),  # unpadded: widths grow
    ("node[098-101]", ["node098", "node099", "node100", "node101"]),  # padded: the first number's width
    ("a,b[1-2],c", ["a", "b1", "b2", "c"]),
    ("login-01.cluster,gpu[7]", ["login-01.cluster", "gpu7"]),
]


@pytest.mark.parametrize("nodelist,names", NODELISTS, ids=[n for n, _ in NODELISTS])
def test_nodelist_expands_as_slurm_does(nodelist, names):
    assert jobenv.expand_nodelist(nodelist) == names
    scontrol = shutil.which("scontrol")  # where Slurm is here, the same answer as its own expansion
    if scontrol and nodelist != "a[1,3-4]-ib":
        assert subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True).stdout.split() == names


@pytest.mark.parametrize("bad", ["n[1-2", "n1-2]", "n[3-1]", "n[a]", "n[1-2],,m", "n[[1]]", ""])
def test_a_malformed_nodelist_is_one_line_naming_it(bad):
    with pytest.raises(ConfigError, match="Slurm node list") as e:
        jobenv.expand_nodelist(bad)
    assert repr(bad) in str(e.value) and "\n" not in str(e.value)


def test_tasks_per_node_expand():
    assert jobenv.expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1] and jobenv.expand_tasks_per_node("4") == [4]
    with pytest.raises(ConfigError, match="2x"):
        jobenv.expand_tasks_per_node("2x")


def test_each_backend_detects_itself():
    assert jobenv.detect({}) == jobenv.Local(node_name=jobenv.detect({}).node_name)
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "6", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
             "SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "g[4-6]", "SLURM_JOB_NODELIST": "g[1-9]",
             "SLURM_STEP_TASKS_PER_NODE": "3,2,1", "SLURM_RESTART_COUNT": "2", "SLURMD_NODENAME": "g5"}
    assert jobenv.detect(slurm) == jobenv.Slurm(rank=3, world=6, local_rank=0, local_world=2, node_rank=1, nodes=3,
                                                main_address="g4", main_port=jobenv.rendezvous_port(77),
                                                restart_count=2, node_name="g5")
    assert jobenv.restart_count(slurm) == 2 and jobenv.restart_count({}) == 0
    assert jobenv.restart_count({"SLURM_RESTART_COUNT": "3", "SLURM_JOB_ID": "9"}) == 3  # a batch script, no srun
    torchrun = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1",
                "MASTER_ADDR": "h1", "MASTER_PORT": "29400", "TORCHELASTIC_RESTART_COUNT": "1"}
    t = jobenv.detect({**slurm, **torchrun})  # torchrun inside a Slurm job: torchrun's ranks
    assert (type(t), t.rank, t.world, t.local_rank, t.local_world, t.node_rank, t.nodes, t.main_address, t.main_port) == \
        (jobenv.Torchrun, 5, 8, 1, 4, 1, 2, "h1", 29400)
    assert t.restart_count == 3  # torchrun's restart and the job's two requeues: each resumes the run
    with pytest.raises(ConfigError, match="SLURM_NODEID='x'"):
        jobenv.detect({**slurm, "SLURM_NODEID": "x"})


def test_export_env_from_slurm_variables():
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123456",
           "MASTER_ADDR": "node7"}
    export_env(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("3", "4", "1")
    assert env["MASTER_ADDR"] == "node7" and env["MASTER_PORT"] == str(jobenv.rendezvous_port(123456))
    # one port scheme: the same job (a requeue, another node) always meets on the same port
    assert 20000 <= jobenv.rendezvous_port(123456) < 40000


def slurm_task(rank: int, nodes: list[str], per_node: int, job: str = "4242") -> dict:
    """The variables srun gives task ``rank`` of a step over ``nodes`` with ``per_node`` tasks each."""
    node = rank // per_node
    return {"SLURM_PROCID": str(rank), "SLURM_NTASKS": str(len(nodes) * per_node), "SLURM_LOCALID": str(rank % per_node),
            "SLURM_NODEID": str(node), "SLURM_JOB_ID": job, "SLURMD_NODENAME": nodes[node],
            "SLURM_JOB_NODELIST": "gpu-a[07-08]", "SLURM_STEP_TASKS_PER_NODE": f"{per_node}(x{len(nodes)})",
            "PATH": ""}  # no scontrol to call


def test_fake_two_node_job_gives_every_rank_its_address_port_and_device():
    nodes = ["gpu-a07", "gpu-a08"]
    seen = []
    for rank in range(4):
        env = slurm_task(rank, nodes, 2)
        export_env(env)
        e = jobenv.detect(env)  # what distributed.setup reads after the entry point's export
        assert type(e) is jobenv.Torchrun and (e.rank, e.world) == (rank, 4)
        seen.append((env["MASTER_ADDR"], env["MASTER_PORT"], env["LOCAL_WORLD_SIZE"], env["GROUP_RANK"],
                     cuda_device(e, visible=2), e.node_name))
    port = str(jobenv.rendezvous_port(4242))
    assert seen == [("gpu-a07", port, "2", "0", 0, "gpu-a07"), ("gpu-a07", port, "2", "0", 1, "gpu-a07"),
                    ("gpu-a07", port, "2", "1", 0, "gpu-a08"), ("gpu-a07", port, "2", "1", 1, "gpu-a08")]


def test_more_tasks_than_gpus_is_refused_by_name():
    env = slurm_task(3, ["gpu-a07", "gpu-a08"], 2)
    export_env(env)
    with pytest.raises(TrainingError, match=r"node gpu-a08: 2 training tasks but 1 visible GPU\(s\).*gpus_per_node"):
        cuda_device(jobenv.detect(env), visible=1)


def test_setup_refuses_before_two_ranks_share_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: pytest.fail("a device was chosen"))
    for k, v in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(TrainingError, match="2 training tasks but 1 visible GPU"):
        distributed.setup("auto")


def test_export_env_leaves_torchrun_and_single_tasks_alone():
    torchrun = {"RANK": "0", "WORLD_SIZE": "2", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}
    export_env(torchrun)
    assert torchrun["RANK"] == "0" and "MASTER_PORT" not in torchrun
    single = {"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}
    export_env(single)
    assert "RANK" not in single


def test_setup_does_not_write_the_environment():
    code = ("import os, json; before = dict(os.environ); from gruv_hpc.training import distributed; "
            "d = distributed.setup('cpu'); print(json.dumps([d.rank, d.world, dict(os.environ) == before]))")
    env = {"PATH": "/usr/bin:/bin", "SLURM_PROCID": "0", "SLURM_NTASKS": "2", "PYTHONPATH": ":".join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[0, 1, true]"  # no RANK exported behind the caller's back


def test_preemption_signal_follows_submitit_setting():
    code = "from gruv_hpc.training.jobcontrol import preempt_signal; print(preempt_signal().name)"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    run = lambda e: subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, check=True).stdout.strip()  # noqa: E731
    assert run(env) == "SIGUSR2"
    assert run({**env, "SUBMITIT_PREEMPT_SIGNAL": "TERM"}) == "SIGTERM"


# ---------------------------------------------------------------------------------------------
# Job control: the stop flag gives the signals back; a stopped task of a job ends

def test_stop_flag_restores_the_handlers_before_it():
    import signal

    from gruv_hpc.training.jobcontrol import StopFlag
    mine = lambda signum, frame: None  # noqa: E731
    before = signal.signal(signal.SIGUSR1, mine)
    try:
        with StopFlag().install([signal.SIGUSR1]) as stop:
            assert signal.getsignal(signal.SIGUSR1) == stop.request
            with pytest.raises(RuntimeError):
                with StopFlag().install([signal.SIGUSR1]):  # nested, left by an exception: restored too
                    raise RuntimeError
            assert signal.getsignal(signal.SIGUSR1) == stop.request
        assert signal.getsignal(signal.SIGUSR1) is mine
    finally:
        signal.signal(signal.SIGUSR1, before)


def _stopped(sig="SIGUSR2"):
    return {"status": "stopped", "signal": sig, "epoch": 1, "step": 7, "pos": 3}


def test_after_stop_rank_zero_requeues_other_ranks_do_not_wait_forever(capsys):
    import signal
    import time as _time

    from gruv_hpc.training.job import after_stop
    calls = []
    with pytest.raises(TrainingError, match="resubmit"):  # a requeue that returns did not happen
        after_stop(_stopped(), 0, signal.SIGUSR2, lambda *a: calls.append(a))
    assert calls == [(signal.SIGUSR2, None)] and "exiting for requeue" in capsys.readouterr().out
    t = _time.monotonic()
    with pytest.raises(TrainingError, match=r"rank 1: .*rank 0 did not requeue the job within 0 s"):
        after_stop(_stopped(), 1, signal.SIGUSR2, lambda *a: calls.append(a), wait_s=0.3)
    assert 0.3 <= _time.monotonic() - t < 5 and len(calls) == 1  # waited, bounded; only rank 0 requeues
    t = _time.monotonic()
    with pytest.raises(TrainingError, match="stopped by SIGTERM at step 7"):  # a cancel: at once
        after_stop(_stopped("SIGTERM"), 1, signal.SIGUSR2, lambda *a: calls.append(a))
    assert _time.monotonic() - t < 0.3 and len(calls) == 1
