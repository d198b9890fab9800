"""Nothing lost, nothing mixed: training runs against signals, a second writer, corrupt
checkpoints, another dataset, a full disk and bad values (issue: datasets, runs and sweeps
survive mistakes, races, signals and bad input)."""
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import preprocess_tiny, tiny_config, wait_for_epoch
from gruv_hpc.training.checkpoint import load_checkpoint
from gruv_hpc.errors import DatasetError, TrainingError
from gruv_hpc.paths import RunPaths, read_jsonl
from gruv_hpc.training.trainer import EXIT_STOPPED, main


def gruv(*args, **kw):
    return subprocess.run([sys.executable, "-m", "gruv_hpc.cli", *map(str, args)], capture_output=True, text=True, **kw)


def start_train(data, run, *overrides, preexec_fn=None):
    return subprocess.Popen([sys.executable, "-m", "gruv_hpc.cli", "train", "--data", str(data), "--run-dir", str(run),
                             "hidden=8", "batch_size=4", "workers=0", "gen_seconds=0", "log_every_steps=5",
                             "ckpt_every_epochs=1000", *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)


# --- 4. a stop signal, whoever sends it, stops at a step boundary with a checkpoint -----------------

@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGHUP", "SIGUSR2"])
def test_stop_signal_writes_checkpoint_and_exits_distinctly(data, tmp_path, sig):
    run = tmp_path / "r"
    p = start_train(data, run, "epochs=100000")
    wait_for_epoch(run)
    time.sleep(0.1)  # most often mid-epoch; at an epoch boundary the stop is just as exact
    os.kill(p.pid, getattr(signal, sig))
    out, err = p.communicate(timeout=120)
    assert p.returncode == EXIT_STOPPED, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["status"] == "stopped" and res["signal"] == sig
    assert sig in err and "resume" in err and "Traceback" not in err
    # The run's own log (stdout) says where it stopped and what it wrote; nothing requeues a plain `gruv train`.
    assert (f"stop signal {sig[3:]} at epoch {res['epoch'] + 1} batch {res['pos']}: checkpoint step {res['step']} "
            "written, exiting\n") in out
    # The checkpoint is the state at the step the run stopped at: nothing but the step in flight is lost
    # (ckpt_every_epochs=1000: without the stop, the newest checkpoint would be epoch 1's best).
    newest = RunPaths(run).step_ckpts()[0]
    st = load_checkpoint(newest)
    assert st["train"]["step"] == res["step"] and st["train"]["pos"] == res["pos"]
    assert res["step"] >= read_jsonl(run / "metrics.jsonl")[0]["step"]
    again = gruv("train", "--data", data, "--run-dir", run, "hidden=8", "batch_size=4", "workers=0", "gen_seconds=0",
                 "log_every_steps=5", f"epochs={res['epoch'] + 1}")
    assert again.returncode == 0, again.stderr
    assert f"resumed from {newest} (epoch {res['epoch'] + 1}, step {res['step']}, batch {res['pos']} of the epoch)" \
        in again.stdout  # the epoch under way, as the stop line names it


def test_a_stopped_resume_never_run_names_the_command_that_resumes(data, tmp_path):
    """Issue 32 M5: "run the same command again" would start a resume=never run over."""
    import shlex
    run = tmp_path / "r"
    p = start_train(data, run, "epochs=100000", "resume=never")
    wait_for_epoch(run)
    os.kill(p.pid, signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == EXIT_STOPPED, err
    res = json.loads(out.strip().splitlines()[-1])
    hint = err.strip().splitlines()[-1]
    assert "resume=never starts over" in hint and "Run the same command again" not in err, err
    args = shlex.split(hint.partition(": gruv ")[2])
    assert "resume=auto" in args and "resume=never" not in args
    args = [a if not a.startswith("epochs=") else f"epochs={res['epoch'] + 1}" for a in args]  # (so that it ends)
    again = gruv(*args)
    assert again.returncode == 0 and "resumed from" in again.stdout, again.stderr
    assert not list(run.glob("discarded-*"))


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell's background job (`cmd &`) starts


@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_second_signal_aborts(data, tmp_path, inherited):
    """Ctrl-C twice: the second one aborts at once (130, KeyboardInterrupt's code), where one
    alone stops with a checkpoint (EXIT_STOPPED); also when the run started with INT ignored, as
    a background job of a shell does (the handler before the run's was "ignore"). Two signals sent together reach Python as one,
    so the second goes once the run has said it saw the first; and so that the run cannot end in
    between, its stdout is a 4 KiB pipe left unread until it is full: the stop's own output (its
    line and the result, ~400 bytes) cannot be written, so the run is still there for the second."""
    import array
    import fcntl
    import termios
    p = start_train(data, tmp_path / "r", "epochs=100000", "limit_train_batches=1",
                    preexec_fn=_ignore_sigint if inherited == "ignored" else None)
    fcntl.fcntl(p.stdout.fileno(), 1031, 4096)  # F_SETPIPE_SZ: the smallest pipe, one page
    queued = array.array("i", [0])
    for _ in range(1200):
        fcntl.ioctl(p.stdout.fileno(), termios.FIONREAD, queued)
        if queued[0] > 4096 - 400 or p.poll() is not None:
            break
        time.sleep(0.1)
    assert queued[0] > 4096 - 400, f"stdout holds {queued[0]} bytes"
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in iter(p.stderr.readline, "")] + [lines.put("")],
                     daemon=True).start()
    p.send_signal(signal.SIGINT)
    seen = []
    while not seen or "SIGINT received" not in seen[-1]:
        try:
            seen.append(lines.get(timeout=60))
        except queue.Empty:
            p.kill()
            raise AssertionError("the run did not say it saw the signal: " + "".join(seen)) from None
        assert seen[-1], "".join(seen)  # EOF: the run ended without saying it saw the signal
    p.send_signal(signal.SIGINT)
    out = p.stdout.read()
    p.wait(timeout=60)
    err = "".join(seen) + "".join(iter(lambda: lines.get(timeout=10), ""))
    assert p.returncode == 130, err
    assert "stop signal INT" not in out and "gruv: interrupted" in err  # not the one-signal stop


# --- 2. one writer per run directory -------------------------------------------------------------

def test_second_writer_on_a_run_dir_is_refused(data, tmp_path):
    run = tmp_path / "r"
    first = start_train(data, run, "epochs=100000")
    try:
        wait_for_epoch(run)
        before = (run / "metrics.jsonl").read_text()
        second = gruv("train", "--data", data, "--run-dir", run, "hidden=8", "batch_size=4", "workers=0", "epochs=100000",
                      "gen_seconds=0", "log_every_steps=5", "ckpt_every_epochs=1000", timeout=120)
        assert second.returncode == 2
        assert f"pid {first.pid}" in second.stderr and "in use" in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None  # the first one trains on, its files untouched by the second
        assert (run / "metrics.jsonl").read_text().startswith(before)
        assert not (run / "error.txt").exists()
        assert len(list((run / "tb").glob("events.*"))) == 1
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == EXIT_STOPPED


# --- 5. corrupt checkpoints and rotation -----------------------------------------------------------

def _corrupt(p: Path):
    with open(p, "r+b") as f:
        f.truncate(64)


def test_all_checkpoints_corrupt_needs_an_explicit_choice(data, tmp_path):
    run = tmp_path / "r"
    main(tiny_config(data, epochs=3), run)
    paths = RunPaths(run)
    for c in paths.step_ckpts():
        _corrupt(c)
    metrics = (run / "metrics.jsonl").read_text()
    with pytest.warns(UserWarning), pytest.raises(TrainingError, match="resume=never"):
        main(tiny_config(data, epochs=4), run)
    assert (run / "metrics.jsonl").read_text() == metrics  # not cut back to nothing
    assert len(list(paths.unreadable.glob("*.pt"))) == 3 and not paths.step_ckpts()  # set aside, not deleted
    with pytest.raises(TrainingError, match="resume=never"):  # and not forgotten on the next start
        main(tiny_config(data, epochs=4), run)
    res = main(tiny_config(data, epochs=2, resume="never"), run)
    assert res["status"] == "done" and [h["epoch"] for h in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    moved = list(run.glob("discarded-*"))
    assert len(moved) == 1 and len(list((moved[0] / "checkpoints" / "unreadable").glob("*.pt"))) == 3
    assert (moved[0] / "metrics.jsonl").read_text() == metrics


def test_resume_require(data, tmp_path):
    with pytest.raises(TrainingError, match="no checkpoint"):
        main(tiny_config(data, epochs=1, resume="require"), tmp_path / "r")


def test_rotation_never_drops_the_newest_valid_checkpoint(data, tmp_path):
    run = tmp_path / "r"
    main(tiny_config(data, epochs=2), run)
    paths = RunPaths(run)
    newest = paths.step_ckpts()[0]
    _corrupt(newest)
    shutil.copy(paths.step_ckpts()[1], paths.ckpt_dir / "step_9999999999.pt")  # a leftover from elsewhere
    _corrupt(paths.ckpt_dir / "step_9999999999.pt")
    with pytest.warns(UserWarning):
        main(tiny_config(data, epochs=5), run)  # resumes from epoch 1, trains 4 more, keep_last=3
    steps = [p.name for p in paths.step_ckpts()]
    assert len(steps) == 3 and "step_9999999999.pt" not in steps
    for p in paths.step_ckpts():
        load_checkpoint(p)  # every kept one loads
    assert load_checkpoint(paths.step_ckpts()[0])["train"]["epoch"] == 5
    assert {p.name for p in paths.unreadable.iterdir()} == {"step_9999999999.pt", newest.name}


# --- 7. one run, one dataset -----------------------------------------------------------------------

def test_resume_on_another_dataset_is_refused_and_a_moved_one_is_not(corpus, data, tmp_path):
    run = tmp_path / "r"
    main(tiny_config(data, epochs=1), run)
    other = tmp_path / "other"
    preprocess_tiny(corpus, other, seed=7)  # same parameters, another split
    with pytest.raises(DatasetError, match="another|mix"):
        main(tiny_config(other, epochs=2), run)
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    assert main(tiny_config(moved, epochs=2), run)["status"] == "done"
    rec = json.loads((run / "config.json").read_text())
    assert rec["dataset"]["path"] == str(moved) and len(rec["starts"]) == 2


def test_relative_data_path_is_stored_absolute(data, tmp_path, monkeypatch):
    monkeypatch.chdir(data.parent)
    main(tiny_config(Path(data.name), epochs=1), tmp_path / "r")
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert cfg["data"] == str(data.resolve())
    assert load_checkpoint(RunPaths(tmp_path / "r").step_ckpts()[0])["config"]["data"] == str(data.resolve())


# --- 11. bad values: one line naming the key, non-zero exit ---------------------------------------

@pytest.mark.parametrize("kv", ["lr=nan", "seed=-5", "log_every_steps=0", "limit_train_batches=-1", "grad_clip=-1",
                                "ckpt_every_min=-1", "resume=sometimes"])
def test_bad_train_values(data, tmp_path, kv):
    r = gruv("train", "--data", data, "--run-dir", tmp_path / "r", kv)
    assert r.returncode == 2 and kv.split("=")[0] in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists()


def test_metrics_jsonl_is_strict_json(data, tmp_path, monkeypatch):
    """An empty dev split gives a NaN dev loss: it is written as null, never as NaN."""
    import gruv_hpc.training.trainer as train
    monkeypatch.setattr(train.Trainer, "evaluate", lambda self: (float("nan"), {}))  # (dev loss, per artist)
    main(tiny_config(data, epochs=1), tmp_path / "r")
    line = (tmp_path / "r" / "metrics.jsonl").read_text()
    assert "NaN" not in line and json.loads(line, parse_constant=lambda c: pytest.fail(c))["dev_loss"] is None


# --- a full disk ----------------------------------------------------------------------------------

@pytest.fixture
def tiny_disk(tmp_path):
    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")
    yield d
    subprocess.run(["umount", "-l", str(d)])


def test_full_disk_keeps_last_checkpoint_and_says_why(data, tiny_disk):
    run = tiny_disk / "r"
    main(tiny_config(data, epochs=1), run)
    good = {p.name: p.read_bytes() for p in RunPaths(run).step_ckpts()}
    # Fill the disk to the last block, unbuffered: a buffered file would fail again at close, flushing
    # what the last write left (it did once heartbeat.json shifted the free space).
    with open(tiny_disk / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    r = gruv("train", "--data", data, "--run-dir", run, "hidden=8", "batch_size=4", "workers=0", "epochs=3",
             "gen_seconds=0", "log_every_steps=5", "limit_train_batches=12")
    assert r.returncode == 2 and "No space left on device" in r.stderr and "Traceback" not in r.stderr
    assert "No space left on device" in (run / "error.txt").read_text()  # the reason, not an empty file
    for name, blob in good.items():
        assert (RunPaths(run).ckpt_dir / name).read_bytes() == blob
    assert not list(RunPaths(run).ckpt_dir.glob(".*tmp*"))  # no temp file left filling the disk
    assert torch.load(RunPaths(run).step_ckpts()[0], weights_only=True)["train"]["epoch"] == 1


def test_a_disk_that_fills_inside_torch_save_is_a_full_disk_not_unexpected_pos(tmp_path, monkeypatch):
    """Issue 32 L1: ENOSPC inside torch.save came out as "RuntimeError: ... unexpected pos", which the
    trainer's full-disk message (above) never saw: a raw traceback."""
    import errno
    import io
    from gruv_hpc import fsio
    from gruv_hpc.training.checkpoint import atomic_torch_save

    class Full(io.FileIO):  # a disk with 1000 bytes left
        def write(self, b):
            if self.tell() + len(b) > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(b)
    monkeypatch.setattr(fsio, "open", lambda path, mode: Full(path, "w"), raising=False)
    target = tmp_path / "step.pt"
    with pytest.raises(OSError) as e:
        atomic_torch_save({"w": torch.zeros(10000)}, target)
    assert e.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []  # no temp file left


# --- 6, 11. generation: a fallback for an unreadable best.pt, one-line errors -------------------

def test_generate_falls_back_from_an_unreadable_best(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    best = RunPaths(run).best
    best.unlink()
    best.write_bytes(b"\0" * 100)
    r = gruv("generate", run, "--out", tmp_path / "g.wav", "--seed-seconds", "0.2")
    assert r.returncode == 0, r.stderr
    assert "best.pt is unreadable" in r.stderr and "Traceback" not in r.stderr
    side = json.loads((tmp_path / "g.json").read_text())
    assert side["checkpoint"] == str(RunPaths(run).step_ckpts()[0])


@pytest.mark.parametrize("args, needle", [
    (["--out", "{tmp}"], "--out"),
    (["--out", "{tmp}/g.mp3"], ".wav"),
    (["--out", "{tmp}/g.wav", "--device", "foo"], "foo"),
    (["--out", "{tmp}/g.wav", "--seed-seconds", "nan"], "seed seconds"),
    (["--out", "{tmp}/g.wav", "--length-ratio", "nan"], "length ratio"),
    (["--out", "{tmp}/g.wav", "--checkpoint", "{tmp}/none.pt"], "none.pt"),
])
def test_generate_bad_arguments(trained_run, tmp_path, args, needle):
    r = gruv("generate", trained_run, *[a.format(tmp=tmp_path) for a in args])
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_generate_refuses_a_fifo_seed(trained_run, tmp_path):
    fifo = tmp_path / "seed.wav"
    os.mkfifo(fifo)
    r = gruv("generate", trained_run, "--out", tmp_path / "g.wav", "--seed-from", fifo, timeout=60)
    assert r.returncode == 2 and "not a regular file" in r.stderr


def test_loop_stats_memory_is_linear(tmp_path):
    """The loop diagnostics of a long generation: same answer as the n x n reference, bounded memory."""
    import tracemalloc

    import numpy as np

    from gruv_hpc.generation import loop_stats
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((3000, 16))
    frames[2000:2300] = np.tile(frames[1990:2000], (30, 1))  # a loop of period 10
    f = frames / np.linalg.norm(frames, axis=1, keepdims=True)
    sim = f @ f.T  # the reference: every earlier frame, all at once
    ref = np.array([False] + [sim[t, :t].max() >= 0.95 for t in range(1, len(f))])
    tracemalloc.start()
    got = loop_stats(frames)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got["loop_onset_step"] == int(np.argmax(ref)) == 2000
    assert got["loop_fraction"] == pytest.approx(300 / 3000)
    assert peak < 3000 * 3000 * 8 / 4  # well under the n x n matrix (72 MB)


# --- 3, 8. local sweeps: cancel, Ctrl-C, raised epochs, exit codes ---------------------------------

from conftest import write_sweep  # noqa: E402

from gruv_hpc.cluster import sweep  # noqa: E402

LONG = {"epochs": 100000, "batch_size": 4, "workers": 0, "gen_seconds": 0.0, "hidden": 8, "log_every_steps": 5,
        "ckpt_every_epochs": 1000}


def start_local_sweep(f, d, *extra):
    # its own session, as a terminal's foreground job: a Ctrl-C reaches its whole process group
    return subprocess.Popen([sys.executable, "-m", "gruv_hpc.cli", "sweep", "submit", str(f), "--out", str(d),
                             "--executor", "local", "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_state(d, name, want, timeout=120):
    t, rows = time.time(), None
    while True:
        if (Path(d) / "sweep.json").exists():
            rows = {r["name"]: r for r in sweep.status(d)}
            if rows[name]["state"] == want:
                return rows
        assert time.time() - t < timeout, rows
        time.sleep(0.2)


def group_alive(pgid) -> list[int]:
    out = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def test_local_cancel_stops_the_training_process(data, tmp_path):
    f = write_sweep(tmp_path / "s.toml", data, LONG, {"cell": ["lstm", "gru"]})
    d = tmp_path / "sw"
    p = start_local_sweep(f, d, "--max-parallel", "1")
    try:
        rows = wait_state(d, "lstm", "RUNNING")
        assert rows["gru"]["state"] == "PENDING"  # queued by the live local submission, not NOT_SUBMITTED
        wait_for_epoch(d / "runs" / "lstm")
        assert sorted(sweep.cancel(d, out=lambda *a: None)) == ["gru", "lstm"]
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 1 and "Traceback" not in err
    assert group_alive(p.pid) == []  # no orphan training on
    rows = {r["name"]: r for r in sweep.status(d)}
    assert rows["lstm"]["state"] == "CANCELLED" and rows["gru"]["state"] == "CANCELLED"
    st = load_checkpoint(RunPaths(d / "runs" / "lstm").step_ckpts()[0])  # stopped with a checkpoint
    assert st["train"]["step"] >= read_jsonl(d / "runs" / "lstm" / "metrics.jsonl")[-1]["step"]
    assert not (d / "runs" / "gru" / "checkpoints").exists()  # never started


def test_ctrl_c_on_a_local_submission(data, tmp_path):
    f = write_sweep(tmp_path / "s.toml", data, LONG, {"cell": ["lstm", "gru"]})
    d = tmp_path / "sw"
    p = start_local_sweep(f, d, "--max-parallel", "2")
    try:
        wait_state(d, "gru", "RUNNING")
        wait_for_epoch(d / "runs" / "lstm")
        wait_for_epoch(d / "runs" / "gru")
        os.killpg(p.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        out, err = p.communicate(timeout=180)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130 and "Traceback" not in err, err
    assert f"Resume with: gruv sweep submit {f} --out {d}" in err
    assert group_alive(p.pid) == []
    for name in ("lstm", "gru"):
        paths = RunPaths(d / "runs" / name)
        st = load_checkpoint(paths.step_ckpts()[0])  # the stop's own checkpoint, at a step boundary
        assert st["train"]["step"] >= read_jsonl(paths.metrics)[-1]["step"]
        assert not paths.error.exists()
    assert {r["state"] for r in sweep.status(d)} == {"CANCELLED"}


def test_a_sigkilled_local_run_is_reported_killed_by_signal_9(data, tmp_path):
    """What the kernel's OOM killer does: SIGKILL to the training process. It leaves no result, no
    traceback and no error.txt; the local controller records the signal, and the submission and
    `gruv sweep status` name it (it was UNKNOWN with the last log line)."""
    from gruv_hpc.cluster.local import process_tree
    f = write_sweep(tmp_path / "s.toml", data, LONG, {"cell": ["lstm"]})
    d = tmp_path / "sw"
    p = start_local_sweep(f, d)
    try:
        rows = wait_state(d, "lstm", "RUNNING")
        wait_for_epoch(d / "runs" / "lstm")
        [task] = [q for q in process_tree(int(rows["lstm"]["job_id"]))
                  if b"submitit.core._submit" in Path(f"/proc/{q}/cmdline").read_bytes()]
        os.kill(task, signal.SIGKILL)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 1 and "Traceback" not in err, err
    assert "run lstm failed: task 0 was killed by signal 9 (SIGKILL" in out, out
    row = sweep.status(d)[0]
    assert row["state"] == "FAILED", row
    assert row["error"].startswith("task 0 was killed by signal 9 (SIGKILL; the kernel's OOM killer"), row["error"]
    r = gruv("sweep", "status", d)
    assert "FAILED" in r.stdout and "| task 0 was killed by signal 9 (SIGKILL" in r.stdout, r.stdout


def test_raising_epochs_continues_finished_runs(data, tmp_path):
    train = {**LONG, "epochs": 1, "limit_train_batches": 5}
    f = write_sweep(tmp_path / "s.toml", data, train, {"cell": ["lstm"]})
    d = tmp_path / "sw"
    assert gruv("sweep", "submit", f, "--out", d, "--executor", "local", "--quiet").returncode == 0
    r = gruv("sweep", "submit", f, "--out", d, "--executor", "local", "--quiet", "epochs=2")
    assert r.returncode == 0, r.stderr
    assert "nothing to submit" not in r.stdout
    row = sweep.status(d)[0]
    assert row["state"] == "COMPLETED" and row["epoch"] == row["epochs"] == 2
    assert [h["epoch"] for h in read_jsonl(d / "runs" / "lstm" / "metrics.jsonl")] == [1, 2]


def test_local_submission_of_failing_runs_exits_nonzero(data, tmp_path):
    f = write_sweep(tmp_path / "s.toml", data, {**LONG, "epochs": 1, "device": "cuda"}, {"cell": ["lstm"]})
    r = gruv("sweep", "submit", f, "--out", tmp_path / "sw", "--executor", "local", "--quiet")
    assert r.returncode == 1 and "failed" in r.stdout
    assert sweep.status(tmp_path / "sw")[0]["state"] == "FAILED"


def test_analyze_a_directory_that_is_not_a_sweep(tmp_path):
    r = gruv("analyze", tmp_path, "--out", tmp_path / "rep")
    assert r.returncode == 2 and "not a sweep directory" in r.stderr and "Traceback" not in r.stderr


def test_generate_on_a_full_disk_leaves_no_truncated_wav(data, tmp_path, tiny_disk):
    """Issue 32 L6: the WAV is written beside its name and moved into place, so a full disk is one
    line and the file that was there stays whole (no truncated WAV, no temp file left)."""
    run = tmp_path / "r"
    main(tiny_config(data, epochs=1), run)
    out = tiny_disk / "g.wav"
    assert gruv("generate", run, "--out", out, "--seed-seconds", "0.16", "--length-ratio", "1").returncode == 0
    before = out.read_bytes()
    with open(tiny_disk / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    r = gruv("generate", run, "--out", out, "--seed-seconds", "0.32", "--length-ratio", "20")
    assert r.returncode == 2 and "No space left on device" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == before and not list(tiny_disk.glob(".g.wav.tmp*"))
