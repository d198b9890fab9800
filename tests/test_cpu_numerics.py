"""Subnormal floats are flushed to zero in every process that trains, generates or analyses.

A trained recurrent model's saturated gates and their gradients fall below float32's smallest
normal number, and the CPU computes with such operands on a slow path (the demo's LSTM H=128 epochs
ran up to 5x slower). The flag is per thread: torch's intra-op threads copy it only when they
start, so the entry points set it before torch's first parallel operation."""
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import sys, torch
    from gruv_hpc.training import distributed
    if sys.argv[1] == "flush":
        distributed.flush_denormals()
    torch.set_num_threads(2)
    a = torch.full((256, 1024), 1e-39)  # subnormal
    b = torch.full((256, 1024), 0.5)
    print(int(((a * b) != 0).sum()))  # the product is subnormal too, unless flushed
""")


@pytest.mark.parametrize("mode,nonzero", [("flush", 0), ("keep", 256 * 1024)])
def test_flush_reaches_every_intra_op_thread(mode, nonzero):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    assert int(out) == nonzero


@pytest.fixture
def flush_calls(monkeypatch):
    from gruv_hpc.training import distributed
    calls = []
    monkeypatch.setattr(distributed, "flush_denormals", lambda: calls.append(1) or True)
    return calls


def test_gruv_train_flushes(data, tmp_path, flush_calls):
    from gruv_hpc.cli import main
    assert main(["train", "--data", str(data), "--run-dir", str(tmp_path / "r"), "epochs=1", "hidden=4",
                 "limit_train_batches=2", "gen_seconds=0", "workers=0"]) == 0
    assert flush_calls == [1]


def test_gruv_generate_flushes(trained_run, tmp_path, flush_calls):
    from gruv_hpc.cli import main
    assert main(["generate", str(trained_run), "--out", str(tmp_path / "c.wav"), "--seed-seconds", "0.2"]) == 0
    assert flush_calls == [1]


def test_train_job_flushes(data, tmp_path, flush_calls, monkeypatch):
    """The queued job (TrainJob), as submitit runs it on a node."""
    import submitit

    from gruv_hpc.training.job import TrainJob

    class Env:  # what submitit.JobEnvironment() reports outside a job, made explicit
        job_id, global_rank, num_tasks = "1", 0, 1
    monkeypatch.setattr(submitit, "JobEnvironment", lambda: Env())
    cfg = dict(data=str(data), epochs=1, hidden=4, limit_train_batches=2, gen_seconds=0.0, workers=0)
    assert TrainJob(str(tmp_path / "r"), cfg, threads=1)()["status"] == "done"
    assert flush_calls == [1]


def test_gruv_analyze_flushes(tmp_path, flush_calls, monkeypatch):
    """gruv analyze, before its figures' and audio's torch work (the report itself stood in for)."""
    from gruv_hpc.analysis import report
    from gruv_hpc.cli import main
    seen = []
    import gruv_hpc.cluster.sweep as sweep
    monkeypatch.setattr(report, "analyze_atomic", lambda sweep, out, listing, **kw: seen.append(list(flush_calls)))
    monkeypatch.setattr(sweep, "analysis_listing", lambda d: [])
    (tmp_path / "sweep").mkdir()
    assert main(["analyze", str(tmp_path / "sweep"), "--out", str(tmp_path / "report")]) == 0
    assert flush_calls == [1] and seen == [[1]]  # flushed once, before the report started
