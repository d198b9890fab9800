"""A reduced demo end to end (local executor, tiny shapes), and the report's numbers against their sources."""
import csv
import json
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import soundfile as sf

from gruv_hpc import sweep
from gruv_hpc.features import magnitude_spectrum, stored_to_features
from gruv_hpc.paths import read_jsonl

DEMO = """
data = "{data}"
[train]
epochs = 2
batch_size = 4
workers = 0
gen_seconds = 0.0
limit_train_batches = 10
[grid]
artists = [["aurora"], ["circuit"]]
cell = ["lstm", "gru"]
hidden = [4, 8]
[slurm]
time_min = 10
"""


@pytest.fixture(scope="module")
def demo(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    f = root / "demo.toml"
    f.write_text(DEMO.format(data=data))
    sw, rep = root / "sweep", root / "report"
    r = subprocess.run([sys.executable, "-m", "gruv_hpc.cli", "sweep", "submit", str(f), "--out", str(sw), "--executor", "local",
                        "--max-parallel", "2", "--quiet", "--wait"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr  # (--wait: 0 only if every run completed)
    assert r.stdout.count("8 COMPLETED") == 1, r.stdout
    r = subprocess.run([sys.executable, "-m", "gruv_hpc.cli", "analyze", str(sw), "--out", str(rep), "--seed-seconds", "0.32"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "fig3" in r.stdout and "index.html" in r.stdout  # stage timings and where the report is
    return sw, rep


def read_csv(p):
    with open(p) as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def test_every_artefact_exists(demo):
    sw, rep = demo
    rows = read_csv(rep / "results.csv")
    assert len(rows) == 8 and all(r["state"] == "COMPLETED" for r in rows.values())
    for stem in ("fig1_loss", "fig2_hidden", "fig3_spectrogram"):
        assert (rep / f"{stem}.png").stat().st_size > 10_000 and (rep / f"{stem}.pdf").exists()
    for r in rows.values():
        assert int(r["params"]) > 0 and float(r["device_hours"]) > 0 and r["device"] == "cpu"
        assert r["flatness"] != "" and r["loop_fraction"] != ""


def test_html_references_exist_and_audio_plays(demo):
    _, rep = demo
    page = (rep / "index.html").read_text()
    refs = re.findall(r"(?:src|href)='([^']+)'", page)
    assert any(r.endswith(".wav") for r in refs) and any(r.endswith(".png") for r in refs)
    for ref in refs:
        assert not ref.startswith(("http:", "https:", "/")), ref  # works offline, opened as a file
        p = rep / ref
        assert p.exists(), ref
        if ref.endswith(".wav"):
            assert p.read_bytes()[:4] == b"RIFF" and p.read_bytes()[8:12] == b"WAVE"
            info = sf.info(p)
            assert info.samplerate == 8000 and info.frames > 0
    n_audio = page.count("<audio")
    assert n_audio == 8 * 2 * 2  # 8 runs x 2 seeds x (seed + continuation)


def test_seeds_are_the_same_for_every_run_of_an_artist(demo):
    _, rep = demo
    for artist in ("aurora", "circuit"):
        names = sorted(p.name for p in (rep / "audio").glob(f"{artist}-*/seed*_seed.wav"))
        sets = [sorted(p.name for p in d.glob("seed*_seed.wav")) for d in (rep / "audio").glob(f"{artist}-*")]
        assert names and all(s == sets[0] for s in sets)
        seeds = [sf.read(d / sets[0][0])[0] for d in (rep / "audio").glob(f"{artist}-*")]
        assert all(np.array_equal(s, seeds[0]) for s in seeds)


def test_figures_match_their_sources(demo):
    sw, rep = demo
    summary = json.loads((rep / "summary.json").read_text())
    rows = read_csv(rep / "results.csv")
    for key, pts in summary["fig2"]["points"].items():  # Figure 2 = best dev losses in results.csv
        artist, cell = key.split("/")
        for hidden, best in pts:
            assert best == pytest.approx(float(rows[f"{artist}-{cell}-h{hidden}"]["best_dev_loss"]), rel=1e-12)
    assert summary["fig1"]["hidden"] == 8
    for name, curve in summary["fig1"]["curves"].items():  # Figure 1 = metrics.jsonl
        hist = read_jsonl(sw / "runs" / name / "metrics.jsonl")
        assert curve["train"] == [h["train_loss"] for h in hist] and curve["dev"] == [h["dev_loss"] for h in hist]
    claims = {c["claim"][:20]: c for c in summary["claims"]}
    lstm, gru = float(rows["aurora-lstm-h8"]["best_dev_loss"]), float(rows["aurora-gru-h8"]["best_dev_loss"])
    assert f"LSTM {lstm:.4f} vs GRU {gru:.4f}" in claims["The LSTM's dev loss "]["evidence"]


def test_fig3_truth_equals_direct_computation(demo, data):
    _, rep = demo
    z = np.load(rep / "fig3_data.npz")
    m = json.loads((data / "manifest.json").read_text())
    for artist in ("aurora", "circuit"):
        mags = []
        for sh in m["shards"]:
            if sh["artist"] != artist or sh["split"] != "dev":
                continue
            with h5py.File(data / sh["file"]) as h:
                for _, off, n, _ in sh["segments"]:
                    for k in range(n):
                        y = stored_to_features(h["blocks"][off + 8 * k + 1: off + 8 * k + 9], "fft", 64)
                        mags.append(magnitude_spectrum(y.astype(np.float64), "fft"))
        direct = np.mean(mags[:64], axis=0)
        np.testing.assert_allclose(z[f"{artist}/truth"], direct, rtol=1e-6)
        assert z[f"{artist}/lstm"].shape == direct.shape and z[f"{artist}/gru"].shape == direct.shape
    assert z["freqs"][-1] == 4000.0  # Hz, up to Nyquist


def copy_sweep(sw, part):
    """A copy of a sweep directory whose state points at the copy's own run directories."""
    shutil.copytree(sw, part)
    state = json.loads((part / "sweep.json").read_text())
    for r in state["runs"].values():
        r["run_dir"] = r["run_dir"].replace(str(sw), str(part))
    (part / "sweep.json").write_text(json.dumps(state))
    return state


def test_partial_sweep_with_failed_and_running_runs(demo, tmp_path):
    from gruv_hpc.analysis.report import analyze
    sw, _ = demo
    part = tmp_path / "sweep"
    state = copy_sweep(sw, part)
    failed, running = part / "runs" / "circuit-gru-h4", part / "runs" / "aurora-lstm-h8"
    (failed / "done.json").unlink()
    (failed / "error.txt").write_text("Traceback...\nRuntimeError: CUDA out of memory\n")
    (running / "done.json").unlink()
    lines = (running / "metrics.jsonl").read_text().splitlines()
    (running / "metrics.jsonl").write_text(lines[0] + "\n")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "submitit"])
    state["runs"]["aurora-lstm-h8"]["jobs"][-1]["pid"] = sleeper.pid
    (part / "sweep.json").write_text(json.dumps(state))
    try:
        rep = tmp_path / "rep"
        summary = analyze(part, rep, n_seeds=1, seed_seconds=0.32, log=lambda *a: None)
    finally:
        sleeper.kill()
    rows = {r["name"]: r for r in summary["runs"]}
    assert rows["circuit-gru-h4"]["state"] == "FAILED" and "out of memory" in rows["circuit-gru-h4"]["error"]
    assert rows["aurora-lstm-h8"]["state"] == "RUNNING" and rows["aurora-lstm-h8"]["epochs_done"] == 1
    page = (rep / "index.html").read_text()
    assert "circuit-gru-h4: FAILED" in page and "aurora-lstm-h8: RUNNING" in page
    assert len(summary["fig1"]["curves"]["aurora-lstm-h8"]["dev"]) == 1  # its curve so far
    (part / "runs" / "circuit-lstm-h8" / "metrics.jsonl").unlink()  # a run with nothing yet
    shutil.rmtree(part / "runs" / "circuit-lstm-h8" / "checkpoints")
    summary = analyze(part, tmp_path / "rep2", n_seeds=1, seed_seconds=0.32, log=lambda *a: None)
    assert {r["name"] for r in summary["runs"]} >= {"circuit-lstm-h8"}


def test_resubmitting_a_finished_local_sweep_submits_nothing(demo):
    sw, _ = demo
    f = sw / "sweep.toml"
    res = sweep.submit(f, sw, executor="local", out=lambda *a: None)
    assert res["submitted"] == [] and len(res["skipped"]) == 8


def test_unreadable_runs_are_reported_and_the_others_analysed(demo, tmp_path):
    """One run whose checkpoints are all unreadable, one whose best.pt alone is: the report names
    the first, the second falls back to its newest readable checkpoint, the rest are analysed."""
    from gruv_hpc.analysis.report import analyze
    sw, _ = demo
    part = tmp_path / "sweep"
    copy_sweep(sw, part)
    for p in (part / "runs" / "aurora-gru-h4" / "checkpoints").glob("*.pt"):
        p.write_bytes(b"not a checkpoint")
    best = part / "runs" / "aurora-lstm-h4" / "checkpoints" / "best.pt"
    best.unlink()  # a hard link: replace it, do not write through it into the step checkpoint
    best.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="best.pt is unreadable"):
        summary = analyze(part, tmp_path / "rep", n_seeds=1, seed_seconds=0.32, log=lambda *a: None)
    assert "aurora-gru-h4" in summary["audio"] and summary["audio"]["aurora-gru-h4"]["error"]
    assert summary["audio"]["aurora-lstm-h4"]["clips"]  # fell back, generated
    assert len([n for n, a in summary["audio"].items() if a["clips"]]) == 7
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "could not be analysed" in page and "aurora-gru-h4" in page
