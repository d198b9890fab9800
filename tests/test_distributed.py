"""The distributed environment and the launcher's signal, without a cluster."""
import subprocess
import sys

from gruv_hpc.training.distributed import export_env, master_port


def test_export_env_from_slurm_variables():
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123456",
           "MASTER_ADDR": "node7"}
    export_env(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("3", "4", "1")
    assert env["MASTER_ADDR"] == "node7" and env["MASTER_PORT"] == str(master_port(123456))
    # one port scheme: the same job (a requeue, another node) always meets on the same port
    assert master_port(123456) == master_port(123456) and 20000 <= master_port(123456) < 40000


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
    code = "from gruv_hpc.training.trainer import preempt_signal; print(preempt_signal().name)"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    run = lambda e: subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, check=True).stdout.strip()  # noqa: E731
    assert run(env) == "SIGUSR2"
    assert run({**env, "SUBMITIT_PREEMPT_SIGNAL": "TERM"}) == "SIGTERM"
