"""What a researcher sees (issue #14): progress in logs, run logs, defaults, generation's options."""
import subprocess
import sys

import pytest

from conftest import TINY


def gruv(*args, **kw):
    return subprocess.run([sys.executable, "-m", "gruv_hpc.cli", *map(str, args)], capture_output=True, text=True, **kw)


# --- progress where no terminal is looking --------------------------------------------------------

def test_preprocess_progress_into_a_pipe_is_a_few_plain_lines(corpus, tmp_path):
    r = gruv("preprocess", f"aurora={corpus / 'aurora'}", f"circuit={corpus / 'circuit'}", "--out", tmp_path / "d",
             *(f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()))
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr  # no redrawn bar frames in a log file
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("preprocess:")]
    assert lines == ["preprocess: 6/6 songs, " + lines[-1].split(", ", 1)[1]]  # one line: the end (a short run)


def test_plain_progress_lines_at_an_interval_or_on_change(tmp_path):
    import io

    from gruv_hpc.progress import PlainProgress, progress
    f = io.StringIO()
    assert isinstance(progress(range(3), file=f), PlainProgress)  # a StringIO is no terminal
    bar = progress(range(1000), desc="songs", unit="song", file=f, interval_s=3600)
    assert sum(1 for _ in bar) == 1000
    bar.close()
    assert f.getvalue().splitlines() == ["songs: 1000/1000 songs, 00:00:00 elapsed"]
    f = io.StringIO()
    bar = progress(total=3, desc="runs", unit="run", file=f, interval_s=None)
    for n, running in [(0, 2), (0, 2), (1, 2), (1, 2), (2, 1), (3, 0)]:
        bar.n = n
        bar.set_postfix(running=running)
        bar.refresh()
    bar.close()
    assert [ln.split(",")[0] for ln in f.getvalue().splitlines()] == ["runs: 0/3 runs", "runs: 1/3 runs", "runs: 2/3 runs",
                                                                       "runs: 3/3 runs"]


# --- gruv sweep logs --------------------------------------------------------------------------------

def test_sweep_logs_shows_every_attempt(data, tmp_path):
    import json

    from conftest import write_sweep
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 1, "batch_size": 4, "workers": 0, "gen_seconds": 0.0,
                                                 "hidden": 8, "limit_train_batches": 3}, {"cell": ["lstm"]})
    d = tmp_path / "sw"
    assert gruv("sweep", "submit", f, "--out", d, "--executor", "local", "--quiet").returncode == 0
    r = gruv("sweep", "submit", f, "--out", d, "--executor", "local", "--quiet", "epochs=2")  # a second attempt
    assert r.returncode == 0, r.stderr
    jobs = [j["job_id"] for j in json.loads((d / "sweep.json").read_text())["runs"]["lstm"]["jobs"]]
    assert len(jobs) == 2
    r = gruv("sweep", "logs", d, "lstm")
    assert r.returncode == 0, r.stderr
    heads = [ln for ln in r.stdout.splitlines() if ln.startswith("==> ")]
    assert [h.split(":")[0] for h in heads] == ["==> attempt 1 of 2", "==> attempt 2 of 2"]
    assert f"job {jobs[0]} (local)" in heads[0] and f"{jobs[1]}_0_log.out" in heads[1]
    first, second = r.stdout.split(heads[1])
    assert "epoch 1/1" in first and "resumed from" not in first
    assert "resumed from" in second and "epoch 2/2" in second
    err = gruv("sweep", "logs", d, "lstm", "--err")
    assert err.returncode == 0 and f"{jobs[1]}_0_log.err" in err.stdout and "epoch 2/2" not in err.stdout
    bad = gruv("sweep", "logs", d, "nope")
    assert bad.returncode == 2 and "runs: lstm" in bad.stderr and "Traceback" not in bad.stderr
    # status names the logs: every row in --json, and the table's footer
    st = json.loads(gruv("sweep", "status", d, "--json").stdout)["runs"][0]
    assert st["log"].endswith(f"logs/{jobs[1]}_0_log.out") and st["err_log"].endswith(".err")
    assert f"gruv sweep logs {d} RUN" in gruv("sweep", "status", d).stdout


def test_sweep_logs_follow_ends_with_the_job(data, tmp_path):
    import time

    from conftest import write_sweep
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 3, "batch_size": 4, "workers": 0, "gen_seconds": 0.0,
                                                 "hidden": 8, "limit_train_batches": 3}, {"cell": ["lstm", "gru"]})
    d = tmp_path / "sw"
    sub = subprocess.Popen([sys.executable, "-m", "gruv_hpc.cli", "sweep", "submit", str(f), "--out", str(d),
                            "--executor", "local", "--quiet", "--max-parallel", "1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (d / "sweep.json").exists():
            assert sub.poll() is None, "the submission ended early"
            time.sleep(0.1)
        # gru waits behind lstm (one at a time): following it waits for its job, then its end
        r = gruv("sweep", "logs", d, "gru", "--follow", timeout=300)
    finally:
        sub.wait(timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "queued" in r.stderr and r.stdout.count("==> attempt 1 of 1") == 1
    assert "epoch 3/3" in r.stdout


def test_sweep_logs_follow_stops_quietly_on_ctrl_c(data, tmp_path):
    import signal
    import time

    from conftest import write_sweep
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 100000, "batch_size": 4, "workers": 0, "gen_seconds": 0.0,
                                                 "hidden": 8}, {"cell": ["lstm"]})
    d = tmp_path / "sw"
    sub = subprocess.Popen([sys.executable, "-m", "gruv_hpc.cli", "sweep", "submit", str(f), "--out", str(d),
                            "--executor", "local", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not list((d / "runs" / "lstm").glob("metrics.jsonl")):
            assert sub.poll() is None, "the submission ended early"
            time.sleep(0.2)
        p = subprocess.Popen([sys.executable, "-m", "gruv_hpc.cli", "sweep", "logs", str(d), "lstm", "-f"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen = ""
        while "epoch 1/100000" not in seen:  # following a running job: its lines arrive
            line = p.stdout.readline()
            assert line, "gruv sweep logs --follow ended while the job runs"
            seen += line
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0 and "Traceback" not in err, err
    finally:
        assert gruv("sweep", "cancel", d).returncode == 0
        sub.wait(timeout=200)


# --- workers = auto ----------------------------------------------------------------------------------

def test_workers_auto_by_device_and_cpus(monkeypatch):
    from gruv_hpc.training.config import TrainConfig, available_cpus, resolve_workers
    from gruv_hpc.config import build
    assert build(TrainConfig).workers == "auto"
    assert build(TrainConfig, {"workers": 3}).workers == 3 and build(TrainConfig, None, {"workers": "3"}).workers == 3
    assert [resolve_workers("auto", dev, cpus) for dev, cpus in
            [("cpu", 64), ("cuda", 2), ("cuda", 4), ("cuda", 5), ("cuda", 6), ("cuda", 32)]] == [0, 0, 0, 4, 4, 4]
    assert resolve_workers(2, "cpu", 2) == 2  # a number is taken as it is
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert available_cpus() == 1
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    import os
    assert available_cpus() == len(os.sched_getaffinity(0))


def test_bad_workers_is_one_line(data, tmp_path):
    for v in ("-1", "lots", "1.5"):
        r = gruv("train", "--data", data, "--run-dir", tmp_path / "r", f"workers={v}")
        assert r.returncode == 2 and "workers" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_training_says_how_many_workers_it_chose(data, tmp_path, capsys):
    from conftest import tiny_config
    from gruv_hpc.training.trainer import main
    main(tiny_config(data, epochs=1, workers="auto", limit_train_batches=2), tmp_path / "r")
    assert "data loading: workers=auto -> 0 per rank (device cpu," in capsys.readouterr().out


# --- --dry-run ---------------------------------------------------------------------------------------

def test_dry_run_writes_nothing(data, tmp_path):
    from conftest import write_sweep
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 1, "workers": 0}, {"cell": ["lstm", "gru"]})
    d = tmp_path / "new" / "sw"
    r = gruv("sweep", "submit", f, "--out", d, "--executor", "slurm", "--dry-run")
    assert r.returncode == 0 and "#SBATCH --array=0-1" in r.stdout, r.stderr
    local = gruv("sweep", "submit", f, "--out", d, "--executor", "local", "--dry-run", "--max-parallel", "1")
    assert local.returncode == 0 and "#SBATCH" not in local.stdout
    assert "2 run(s) for the local executor, at most 1 at a time" in local.stdout and "foreground" in local.stdout
    assert not (tmp_path / "new").exists()  # validated, and nothing made
    (tmp_path / "file").write_text("")
    bad = gruv("sweep", "submit", f, "--out", tmp_path / "file" / "sw", "--executor", "local", "--dry-run")
    assert bad.returncode == 2 and "not a directory" in bad.stderr and len(bad.stderr.splitlines()) == 1


# --- gruv generate: a seed file's start, options that would be ignored, units -------------------------

def test_seed_start_in_a_seed_file(trained_run, tmp_path):
    import numpy as np
    import soundfile as sf

    from gruv_hpc.generation import generate
    rng = np.random.default_rng(0)
    audio = 0.3 * rng.standard_normal(8000).clip(-3, 3) / 3  # 1 s at the run's rate: no resampling
    sf.write(tmp_path / "seed.wav", audio, 8000, subtype="FLOAT")
    side = generate(trained_run, tmp_path / "g.wav", seed_seconds=0.16, length_ratio=1, seed_from=str(tmp_path / "seed.wav"),
                    seed_start=0.25, seed_out=tmp_path / "s.wav")
    got, _ = sf.read(tmp_path / "s.wav")
    assert side["seed"]["start_s"] == 0.25 and len(got) == 20 * 64
    np.testing.assert_allclose(got, audio[2000:2000 + 20 * 64], atol=2 / 32768)  # the seed is the file from 0.25 s
    r = gruv("generate", trained_run, "--out", tmp_path / "x.wav", "--seed-from", tmp_path / "seed.wav", "--seed-start", "5")
    assert r.returncode == 2 and "--seed-start 5 s" in r.stderr and "Traceback" not in r.stderr


def test_generate_refuses_options_it_would_ignore(trained_run, tmp_path):
    import soundfile as sf
    sf.write(tmp_path / "seed.wav", [0.1, -0.1] * 4000, 8000)
    r = gruv("generate", trained_run, "--out", tmp_path / "a.wav", "--seed-from", tmp_path / "seed.wav", "--seed-index", "3")
    assert r.returncode == 2 and "--seed-index" in r.stderr and "--seed-start" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "a.wav").exists()
    for src in ("dev", "train"):
        r = gruv("generate", trained_run, "--out", tmp_path / "b.wav", "--seed-from", src, "--seed-start", "1")
        assert r.returncode == 2 and "--seed-start" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_generate_prints_the_loop_onset_in_seconds(trained_run, tmp_path):
    import json
    import re
    r = gruv("generate", trained_run, "--out", tmp_path / "g.wav", "--seed-seconds", "0.32", "--seed-index", "1")
    assert r.returncode == 0, r.stderr
    side = json.loads((tmp_path / "g.json").read_text())
    onset = side["diagnostics"]["loop_onset_s"]
    if onset is None:
        assert "no loop" in r.stdout
    else:
        assert re.search(rf"loops from {onset:.2f} s \(\d+% of it in loops\)", r.stdout), r.stdout
    assert re.search(r"level -?\d+ dBFS, seed -?\d+ dBFS", r.stdout) and "loop onset:" not in r.stdout


def test_describe_in_words():
    from gruv_hpc.generation import describe
    d = {"loop_onset_s": 0.75, "loop_fraction": 0.5, "rms_db": -38.2, "seed_rms_db": -20.4, "flatness": 0.01,
         "seed_flatness": 0.2}
    assert describe(d, 0) == "loops from 0.75 s (50% of it in loops); level -38 dBFS, seed -20 dBFS; " \
                             "spectral flatness 0.01 (seed 0.2)"
    d.update(loop_onset_s=None, rms_db=float("-inf"), flatness=float("nan"))
    assert describe(d, 12) == "no loop; silent, seed -20 dBFS; clipped 12 samples"


# --- gruv tensorboard: the server lives and dies with the command ------------------------------------

def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    import json
    import urllib.request
    try:
        return isinstance(json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2)), list)
    except OSError:
        return False


def _alive(pid: int) -> bool:
    from pathlib import Path
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP", "SIGKILL"])
def test_stopping_gruv_tensorboard_stops_the_server(tmp_path, sig):
    import signal
    import time

    from torch.utils.tensorboard import SummaryWriter

    from gruv_hpc.cluster.local import process_tree as _process_tree
    w = SummaryWriter(str(tmp_path / "sw" / "runs" / "a" / "tb"))
    w.add_scalar("loss/dev", 1.0, 1)
    w.close()
    port = _free_port()
    import os
    import socket
    env = {**os.environ, "SSH_CONNECTION": "10.0.0.9 50000 10.0.0.1 22"}  # as on a login node
    p = subprocess.Popen([sys.executable, "-m", "gruv_hpc.cli", "tensorboard", str(tmp_path / "sw"), "--port", str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        while not _answers(port):
            assert p.poll() is None, "gruv tensorboard ended before its server answered"
            time.sleep(0.3)
        tree = [pid for pid in _process_tree(p.pid) if pid != p.pid]
        assert tree, "no server process under gruv"
        p.send_signal(getattr(signal, sig))
        p.wait(timeout=60)
        deadline = time.time() + 60  # (a bound for a hang, not a timing: the server stops at once)
        while any(_alive(pid) for pid in tree) and time.time() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in tree if _alive(pid)], "the TensorBoard server outlived gruv"
        assert not _answers(port)
    finally:
        if p.poll() is None:
            p.kill()
    out = p.stdout.read()
    assert f"ssh -N -L {port}:localhost:{port} " in out and f"@{socket.gethostname()}" in out, out
    assert f"http://localhost:{port}/" in out and "--host 0.0.0.0" in out
