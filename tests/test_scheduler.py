"""The scheduler interface (gruv_hpc.cluster.scheduler): the local implementation in full, the
Slurm one against recorded command output and on the local cluster; the job classes' requeue;
the one module that reads SLURM_* variables; pipeline.json's typed records."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pickle
import re
import subprocess
import sys
import time
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
import submitit
from submitit.core.utils import JobPaths

from gruv_hpc import jobenv
from gruv_hpc.cluster import executors, slurm
from gruv_hpc.cluster.config import SlurmConfig
from gruv_hpc.cluster.local import LocalScheduler, job_alive
from gruv_hpc.cluster.scheduler import ACTIVE, Dependency, JobInfo, log_path, task_logs
from gruv_hpc.errors import ConfigError, GruvError

ROOT = Path(__file__).parent.parent
FAST = SlurmConfig(time_min=5, cpus_per_task=1, mem_gb=0.5, signal_delay_s=30)


def write(path: Path, text: str):
    """A job: picklable by reference (the child process imports only the standard library)."""
    return functools.partial(Path.write_text, path, text)


# ---------------------------------------------------------------------------------------------
# The interface's own pieces

def test_log_path_is_submitits_name():
    for job_id, task in (("123", 0), ("45_7", 0), ("45_7", 2), ("4321", 1)):
        jp = JobPaths("/x/logs", job_id, task)
        assert log_path("/x/logs", job_id, task) == jp.stdout and log_path("/x/logs", job_id, task, err=True) == jp.stderr


def test_task_logs_are_in_task_order(tmp_path):
    for name in ("7_10_log.out", "7_2_log.out", "7_0_log.out", "7_0_log.err", "77_0_log.out", "7_x_log.out"):
        (tmp_path / name).write_text("")
    assert [p.name for p in task_logs(tmp_path, "7")] == ["7_0_log.out", "7_2_log.out", "7_10_log.out"]
    assert [p.name for p in task_logs(tmp_path, "7", err=True)] == ["7_0_log.err"]
    assert task_logs(tmp_path / "missing", "7") == []


def test_dependency_spelling():
    assert not Dependency() and str(Dependency()) == ""
    assert str(Dependency(after_ok=("3",))) == "afterok:3"
    assert str(Dependency(after_ok=("3",), after_any=("1", "2"))) == "afterany:1:2,afterok:3"
    assert Dependency(after_any=("1",))


def test_one_set_of_executor_kinds(monkeypatch):
    monkeypatch.setattr(slurm, "slurm_available", lambda: False)
    assert executors.resolve("auto") == "local" and executors.scheduler("auto").kind == "local"
    monkeypatch.setattr(slurm, "slurm_available", lambda: True)
    assert executors.resolve("auto") == "slurm" and isinstance(executors.scheduler("auto"), slurm.SlurmScheduler)
    for bad in ("pbs", "", "Slurm"):
        with pytest.raises(ConfigError, match=f"executor must be one of auto, slurm, local, debug, not {bad!r}"):
            executors.scheduler(bad)
    s, lo, dbg = (executors.scheduler(k) for k in ("slurm", "local", "debug"))
    assert (s.kind, s.foreground, s.allocates, s.inline) == ("slurm", False, True, False)
    assert (lo.kind, lo.foreground, lo.allocates, lo.inline) == ("local", True, False, False)
    assert (dbg.kind, dbg.foreground, dbg.allocates, dbg.inline) == ("debug", True, False, True)
    assert executors.scheduler("local") is lo  # one per kind


# ---------------------------------------------------------------------------------------------
# LocalScheduler

def test_local_jobs_run_report_and_end(tmp_path):
    sched = LocalScheduler()
    jobs = sched.submit([write(tmp_path / f"out{i}", f"job {i}") for i in range(2)], FAST, tmp_path / "logs", "t")
    assert len(jobs) == 2 and all(j.job_id.isdigit() and sched.pid(j) == int(j.job_id) for j in jobs)
    assert [j.result() for j in jobs] == [5, 5]
    assert [(tmp_path / f"out{i}").read_text() for i in range(2)] == ["job 0", "job 1"]
    ids = [j.job_id for j in jobs]
    for _ in range(100):  # the controller exits a moment after the result is written
        if not sched.states(ids):
            break
        time.sleep(0.1)
    assert sched.states(ids) == {} and sched.state(ids[0], {}) is None  # ended: nothing is known
    assert log_path(tmp_path / "logs", ids[0]).is_file() and log_path(tmp_path / "logs", ids[0], err=True).is_file()


def test_local_cancel_stops_a_running_job_and_spares_other_processes(tmp_path):
    sched = LocalScheduler()
    [job] = sched.submit([functools.partial(time.sleep, 60)], FAST, tmp_path / "logs", "t")
    for _ in range(100):
        if sched.state(job.job_id, {}) == "RUNNING":
            break
        time.sleep(0.05)
    assert sched.states([job.job_id]) == {job.job_id: JobInfo("RUNNING")}
    assert sched.state(job.job_id, {job.job_id: JobInfo("COMPLETED")}) == "RUNNING"  # asked /proc, not infos
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # not a submitit job
    while not Path(f"/proc/{stranger.pid}/cmdline").read_bytes():  # (in exec, a process counts as alive)
        time.sleep(0.01)
    try:
        assert not job_alive(stranger.pid) and sched.states([str(stranger.pid)]) == {}
        t0 = time.time()
        sched.cancel_and_wait([job.job_id, str(stranger.pid), "999999999"], timeout_s=30, poll_s=0.1)
        assert time.time() - t0 < 30 and sched.states([job.job_id]) == {}
        assert stranger.poll() is None  # a pid that is not a live local job is never signalled
    finally:
        stranger.kill()
        stranger.wait()
    with pytest.raises(submitit.core.utils.UncompletedJobError):
        job.result()


def test_local_refuses_a_dependency(tmp_path):
    with pytest.raises(ConfigError, match="starts jobs at once and cannot hold them behind afterok:1"):
        LocalScheduler().submit([write(tmp_path / "x", "")], FAST, tmp_path, "t", Dependency(after_ok=("1",)))
    assert not (tmp_path / "x").exists()


def test_inline_jobs_run_in_this_process(tmp_path):
    sched = LocalScheduler(inline=True)
    [job] = sched.submit([functools.partial(os.getpid)], FAST, tmp_path / "logs", "t")
    assert sched.pid(job) is None and job.result() == os.getpid()
    assert sched.states([job.job_id]) == {} and sched.state(job.job_id, {}) is None
    sched.cancel([job.job_id])  # nothing to stop


# ---------------------------------------------------------------------------------------------
# SlurmScheduler: recorded output (no cluster), then the local cluster

def _fake(bin_: Path, log: Path, name: str, text: str = "") -> None:
    (bin_ / name).write_text(f"#!/bin/sh\necho {name} \"$@\" >> {log}\ncat <<'EOF'\n{text}EOF\n")
    (bin_ / name).chmod(0o755)


def test_slurm_scheduler_asks_once_per_question(tmp_path, monkeypatch):
    bin_, log = tmp_path / "bin", tmp_path / "calls"
    bin_.mkdir()
    _fake(bin_, log, "sacct", "9_0|COMPLETED|0:0\n9_1|REQUEUED|0:0\n9_1|RUNNING|0:0\n10|CANCELLED by 0|0:15\n")
    _fake(bin_, log, "squeue", "")
    _fake(bin_, log, "scancel")
    _fake(bin_, log, "scontrol", "MaxArraySize            = 4\nMaxJobCount = 10000\n")
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    s = slurm.SlurmScheduler()
    infos = s.states(["9_0", "9_1", "10"])
    assert infos == {"9_0": JobInfo("COMPLETED", 0, "0:0"), "9_1": JobInfo("RUNNING", 1, "0:0"),
                     "10": JobInfo("CANCELLED", 0, "0:15")}
    assert [s.state(j, infos) for j in ("9_0", "9_1", "11")] == ["COMPLETED", "RUNNING", None]
    s.cancel(["9_1", "10"])
    assert s.max_array_size() == 4
    assert log.read_text().splitlines() == ["sacct -n -P -X --duplicates -j 10,9 -o JobID,State,ExitCode",
                                            "squeue -h -j 10,9 -o %i|%T|%r", "scancel 9_1 10", "scontrol show config"]


def test_slurm_scheduler_script_is_a_dry_run():
    text = slurm.SlurmScheduler().script(FAST, Path("/x/logs"), "grid", 3)
    assert "#SBATCH --array=0-2%3" in text and "#SBATCH --job-name=grid" in text and "/x/logs/%A_%a_0_log.out" in text


@pytest.mark.slurm
def test_slurm_array_dependency_logs_and_cancel(tmp_path):
    s = executors.scheduler("slurm")
    logs = tmp_path / "logs"
    jobs = s.submit([write(tmp_path / f"a{i}", f"task {i}") for i in range(2)], FAST, logs, "gruv-test-array")
    array = jobs[0].job_id.split("_")[0]
    assert [j.job_id for j in jobs] == [f"{array}_0", f"{array}_1"]
    [after] = s.submit([write(tmp_path / "b", "after")], FAST, logs, "gruv-test-after", Dependency(after_ok=(array,)))
    assert f"#SBATCH --dependency=afterok:{array}" in (logs / f"{after.job_id}_submission.sh").read_text()
    held = dataclasses.replace(FAST, additional={"begin": "now+600"})  # (sbatch --begin)
    [pending] = s.submit([write(tmp_path / "never", "")], held, logs, "gruv-test-held")
    ids = [*(j.job_id for j in jobs), after.job_id]
    deadline = time.time() + 180
    while time.time() < deadline:
        infos = s.states(ids)
        if all(j in infos and infos[j].state not in ACTIVE for j in ids):
            break
        time.sleep(0.5)
    assert {j: infos[j].state for j in ids} == dict.fromkeys(ids, "COMPLETED")
    assert [(tmp_path / n).read_text() for n in ("a0", "a1", "b")] == ["task 0", "task 1", "after"]
    assert log_path(logs, jobs[1].job_id).is_file() and log_path(logs, after.job_id, err=True).is_file()
    assert s.state(pending.job_id, s.states([pending.job_id])) == "PENDING"
    s.cancel_and_wait([pending.job_id])
    assert s.states([pending.job_id])[pending.job_id].state == "CANCELLED" and not (tmp_path / "never").exists()


# ---------------------------------------------------------------------------------------------
# The job classes: submitit's Checkpointable, frozen, requeued as submitted

def _jobs():
    from gruv_hpc.cluster.pipeline import AnalyzeJob
    from gruv_hpc.cluster.preprocess import MergeJob, TaskJob
    from gruv_hpc.training.job import TrainJob
    return [TrainJob("/r/run", {"epochs": 2}, 3), TaskJob("/d/.staging", 1), MergeJob("/d"), AnalyzeJob("/p", {"seeds": 1})]


@pytest.mark.parametrize("job", _jobs(), ids=lambda j: type(j).__name__)
def test_job_classes_requeue_as_submitted(job):
    cls = type(job)
    # Only TrainJob writes its own checkpoint(), for one thing: resume=never is the first start's
    # policy, so its requeue resumes (tests/test_reliability.py); otherwise it is submitit's.
    assert isinstance(job, submitit.helpers.Checkpointable) and ("checkpoint" not in cls.__dict__ or cls.__name__ == "TrainJob")
    again = job.checkpoint()
    assert isinstance(again, submitit.helpers.DelayedSubmission) and again.function == job and not again.args
    with pytest.raises(FrozenInstanceError):
        job.learned = 1  # nothing a job learns while it runs can ride along in the requeue pickle
    assert pickle.loads(pickle.dumps(again.function)) == job


# ---------------------------------------------------------------------------------------------
# SLURM_* variables: read in gruv_hpc/jobenv.py only

def test_jobenv_reads_the_job():
    env = {"SLURM_JOB_ID": "101", "SLURM_ARRAY_JOB_ID": "100", "SLURM_ARRAY_TASK_ID": "1", "SLURM_CPUS_PER_TASK": "4",
           "SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "n[1-2]"}
    assert jobenv.job_id(env) == "101" and jobenv.task_job_id(env) == "100_1" and jobenv.in_job(env)
    assert jobenv.task_job_id({"SLURM_JOB_ID": "7"}) == "7" and jobenv.cpus_per_task(env) == 4
    assert (jobenv.detect(env).rank, jobenv.detect(env).world, jobenv.detect(env).main_address) == (2, 4, "n1")
    assert (jobenv.job_id({}), jobenv.task_job_id({}), jobenv.in_job({})) == (None, None, False)
    assert [jobenv.cpus_per_task({"SLURM_CPUS_PER_TASK": v}) for v in ("", "0", "x", "2")] == [None, None, None, 2]


def test_slurm_variables_are_read_in_one_module():
    readers = sorted(str(p.relative_to(ROOT)) for p in [*(ROOT / "gruv_hpc").rglob("*.py"), *(ROOT / "analysis").rglob("*.py")]
                     if re.search(r"""["']SLURM_[A-Z_]+["']""", p.read_text()))
    assert readers == ["gruv_hpc/jobenv.py"]


def test_slurm_commands_are_called_in_one_module():
    callers = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "gruv_hpc").rglob("*.py")
                     if re.search(r"""["'](sbatch|sacct|squeue|scancel|sinfo|scontrol|srun)["']""", p.read_text()))
    assert callers == ["gruv_hpc/cluster/slurm.py"]


# ---------------------------------------------------------------------------------------------
# pipeline.json: typed records, and files the untyped code wrote

# Written by gruv-hpc before the records were typed: a Slurm submission, then a local one.
OLD_PIPELINE_JSON = {
    "version": 1,
    "submissions": [
        {"time": 1764620000.5, "executor": "slurm", "host": "login1", "pid": 4242, "file": "/p/pipeline.toml",
         "overrides": ["sweep.epochs=2"], "stage": "submitted",
         "preprocess": {"state": "submitted", "tasks": {"0": "71_0", "1": "71_1"}, "array": "71", "merge": "72",
                        "n_tasks": 2},
         "train": {"submitted": ["gru", "lstm"], "skipped": {}, "job_ids": ["73_0", "73_1"], "dependency": "afterok:72",
                   "live": ["73_0", "73_1"]},
         "analysis": {"job": "74", "dependency": "afterany:73,afterok:72", "why": "runs are training"}},
        {"time": 1764620100.0, "executor": "local", "host": "login1", "pid": 4243, "file": "/p/pipeline.toml",
         "overrides": [], "stage": "done", "preprocess": {"state": "complete"},
         "train": {"submitted": [], "skipped": {"gru": "done", "lstm": "done"}, "failed": []},
         "analysis": {"skipped": "the report is up to date"}},
        {"time": 1764620200.0, "executor": "slurm", "host": "login1", "pid": 4244, "file": "/p/pipeline.toml",
         "overrides": [], "stage": "submitted", "preprocess": {"state": "complete"},
         "train": {"submitted": [], "skipped": {"gru": "done", "lstm": "done"}, "job_ids": [], "live": []},
         "analysis": {"job": None, "skipped": "the report is up to date"}},
        {"time": 1764620300.0, "executor": "slurm", "host": "login1", "pid": 4245, "file": "/p/pipeline.toml",
         "overrides": [], "stage": "preprocess", "preprocess": {}, "train": {}, "analysis": {}},
    ],
}


def test_old_pipeline_state_reads_typed_and_writes_back_the_same(tmp_path):
    from gruv_hpc.cluster.pipeline_state import load_state
    from gruv_hpc.paths import PipelinePaths
    paths = PipelinePaths(tmp_path)
    paths.state.write_text(json.dumps(OLD_PIPELINE_JSON))
    st = load_state(paths)
    a, b, c, d = st.submissions
    assert (a.executor, a.preprocess.merge, a.preprocess.tasks, a.train.job_ids, a.analysis.job) == \
        ("slurm", "72", {"0": "71_0", "1": "71_1"}, ["73_0", "73_1"], "74")
    assert (b.preprocess.state, b.train.failed, b.analysis.job, b.analysis.skipped) == \
        ("complete", [], None, "the report is up to date")
    assert c.analysis.queued and not b.analysis.queued and st.last is d and d.preprocess.state is None
    st.save()
    assert json.loads(paths.state.read_text()) == OLD_PIPELINE_JSON


@pytest.mark.parametrize("text, why", [("[1]", "not a pipeline state file"), ("{", "cannot read"),
                                       ('{"submissions": [{"executor": "slurm"}]}', "KeyError"),
                                       ('{"version": 9, "submissions": []}', "format version 9")])
def test_bad_pipeline_state_is_named(tmp_path, text, why):
    from gruv_hpc.cluster.pipeline_state import load_state
    from gruv_hpc.paths import PipelinePaths
    paths = PipelinePaths(tmp_path)
    paths.state.write_text(text)
    with pytest.raises(GruvError, match=f"{re.escape(str(paths.state))}.*{why}"):
        load_state(paths)
