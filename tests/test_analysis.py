"""A reduced demo end to end (local executor, tiny shapes), and the report's numbers against their sources."""
import csv
import html
import json
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import soundfile as sf

from conftest import copy_sweep, write_sweep
from gruv_hpc.cluster import sweep
from gruv_hpc.dataset.manifest import load_manifest
from gruv_hpc.dataset.transforms import get_transform
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
                        "--max-parallel", "2", "--wait"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr  # (--wait: 0 only if every run completed)
    assert r.stdout.count("8 COMPLETED") == 1, r.stdout
    # Progress into a pipe (a Slurm log, nohup, CI): plain lines, one per change, no redrawn bar.
    assert "\r" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith(("sweep:", "waiting:"))]
    assert 1 <= len(lines) <= 3 * 8 + 2 and "sweep: 8/8 runs" in r.stderr, r.stderr
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
    anchors = set(re.findall(r"id='([^']+)'", page))
    for ref in refs:
        assert not ref.startswith(("http:", "https:", "/")), ref  # works offline, opened as a file
        if ref.startswith("#"):  # a link within the page (the claims table to the floor section)
            assert ref[1:] in anchors, ref
            continue
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
        for p in pts:  # one seed here: the mean is the run's value, there is no spread
            assert p["n"] == 1 and p["std"] is None and p["runs"] == [f"{artist}-{cell}-h{p['hidden']}"]
            assert p["mean"] == pytest.approx(float(rows[p["runs"][0]]["best_dev_loss"]), rel=1e-12)
    assert summary["fig1"]["hidden"] == 8
    for name, curve in summary["fig1"]["curves"].items():  # Figure 1 = metrics.jsonl
        hist = read_jsonl(sw / "runs" / name / "metrics.jsonl")
        assert curve["train"] == [h["train_loss"] for h in hist] and curve["dev"] == [h["dev_loss"] for h in hist]
    claims = {c["claim"][:20]: c for c in summary["claims"]}
    lstm, gru = float(rows["aurora-lstm-h8"]["best_dev_loss"]), float(rows["aurora-gru-h8"]["best_dev_loss"])
    c = claims["The LSTM's dev loss "]
    # Else neither beat the best floor, clip by clip: nothing to compare (gruv_hpc/analysis/claims.py).
    learned = any(rows[n]["beats_floor"] == "True" for n in ("aurora-lstm-h8", "aurora-gru-h8"))
    why = "one seed" if learned else "nothing beat the best floor"
    assert f"aurora H=8: LSTM {lstm:.4g} vs GRU {gru:.4g} (one seed each), D = {lstm - gru:+.2g}: {why}" in c["evidence"]
    # one seed: the noise between seeds is unknown
    assert c["verdict"] in ("inconclusive", "not decided: nothing beat the best floor")


def dev_targets(data, manifest: dict, artist: str) -> list[np.ndarray]:
    """Every dev clip's targets (blocks 1..C, unnormalized features, float64), read straight from
    the shards: the test fixture's clips are 8 blocks of 64 samples, fft features."""
    clips = []
    for sh in manifest["shards"]:
        if sh["artist"] != artist or sh["split"] != "dev":
            continue
        with h5py.File(data / sh["file"]) as h:
            for _, off, n, _ in sh["segments"]:
                clips += [get_transform("fft", 64).stored_to_features(h["blocks"][off + 8 * k + 1: off + 8 * k + 9]).astype(np.float64)
                          for k in range(n)]
    return clips


def test_fig3_truth_equals_direct_computation(demo, data):
    _, rep = demo
    z = np.load(rep / "fig3_data.npz")
    m = json.loads((data / "manifest.json").read_text())
    for artist in ("aurora", "circuit"):
        direct = np.mean([get_transform("fft", 64).magnitude(y) for y in dev_targets(data, m, artist)[:64]], axis=0)
        np.testing.assert_allclose(z[f"{artist}/truth"], direct, rtol=1e-6)
        assert z[f"{artist}/lstm"].shape == direct.shape and z[f"{artist}/gru"].shape == direct.shape
    assert z["freqs"][-1] == 4000.0  # Hz, up to Nyquist


def test_baseline_is_the_dev_loss_of_predicting_the_train_mean(demo, data):
    """Computed here from the shards, with numpy: each dev clip's targets (blocks 1..C), normalized
    by the artist's own train statistics, squared, averaged per clip, then over clips."""
    from gruv_hpc.dataset.manifest import load_stats
    _, rep = demo
    summary = json.loads((rep / "summary.json").read_text())
    rows = read_csv(rep / "results.csv")
    m = json.loads((data / "manifest.json").read_text())
    page = (rep / "index.html").read_text()
    for artist in ("aurora", "circuit"):
        clips = dev_targets(data, m, artist)
        mean, std = load_stats(data, m, [artist])
        direct = np.mean([np.mean(((y - mean) / std) ** 2) for y in clips])
        pooled_mean, pooled_std = load_stats(data, m, None)
        pooled = np.mean([np.mean(((y - pooled_mean) / pooled_std) ** 2) for y in clips])
        assert abs(pooled - direct) > 1e-3  # the test would see the wrong statistics
        b = summary["baseline"][artist]
        assert b["dev_clips"] == len(clips) and b["dev_loss"] == pytest.approx(direct, rel=1e-5)
        assert summary["fig2"]["baseline"][artist] == b["dev_loss"] == summary["fig1"]["baseline"][artist]
        for name, r in rows.items():
            if r["artists"] == artist:
                assert float(r["baseline_dev_loss"]) == pytest.approx(b["dev_loss"], rel=1e-12)
        assert f"{artist}: predicting the train mean {b['dev_loss']:.4g}, " in page
        assert f"over {len(clips)} dev clips of {b['dev_songs']} song(s)" in page


def test_the_three_floors_and_the_rollouts_in_the_report(demo, data):
    """Every floor in results.csv, summary.json, Figures 1-2 and the page; each run's best
    checkpoint against them clip by clip, with the dev songs and clips it rests on; its rollout."""
    from gruv_hpc.analysis.baseline import floor_losses
    _, rep = demo
    summary = json.loads((rep / "summary.json").read_text())
    rows = read_csv(rep / "results.csv")
    page = (rep / "index.html").read_text()
    noise = summary["numerical_noise"]
    assert noise["threads"] >= 1 and noise["runs"] == 8 and 0 <= noise["noise"] < 1e-4
    assert f"this analysis ran on {noise['threads']} thread(s)" in page
    for artist in ("aurora", "circuit"):
        per = floor_losses(data, [artist])
        b = summary["baseline"][artist]
        for k in ("mean", "persistence", "linear"):
            assert b[f"{k}_dev_loss"] == pytest.approx(per[k].mean(), rel=1e-9)
            assert summary["fig1"]["floors"][artist][k] == summary["fig2"]["floors"][artist][k] == b[f"{k}_dev_loss"]
        best = min(("mean", "persistence", "linear"), key=lambda k: b[f"{k}_dev_loss"])
        assert b["best_floor"] == best and b["dev_songs"] == len(set(per["songs"].tolist()))
        assert f"persistence (next = current) {b['persistence_dev_loss']:.4g}" in page
        for name, r in rows.items():
            if r["artists"] != artist:
                continue
            assert float(r["persistence_dev_loss"]) == pytest.approx(b["persistence_dev_loss"], rel=1e-12)
            assert r["best_floor"] == best and int(r["floor_clips"]) == b["dev_clips"]
            assert int(r["floor_songs"]) == b["dev_songs"]
            # The checkpoint's dev loss measured here is the one training recorded for it.
            assert float(r["eval_dev_loss"]) == pytest.approx(float(r["best_dev_loss"]), rel=1e-5)
            diff = float(r["eval_dev_loss"]) - b[f"{best}_dev_loss"]
            assert float(r["floor_diff"]) == pytest.approx(diff, rel=1e-6, abs=1e-12)
            assert float(r["floor_diff_low"]) <= float(r["floor_diff"]) <= float(r["floor_diff_high"])
            assert r["beats_floor"] == str(float(r["floor_diff_high"]) < 0)
            # 8 blocks of 64 samples at 8 kHz: 125 frames/s, a clip of 9 frames; 0.25 s does not fit
            assert all(r[f"rollout_{h}s_model"] == "" for h in ("0.25", "1", "3"))
    assert "95% bootstrap over" in page


def test_rollout_table_marks_runs_worse_than_persistence_or_the_mean():
    from gruv_hpc.analysis.report import rollout_html
    rows = [{"name": "good", "rollout_1s_model": 0.1, "rollout_1s_persistence": 0.2, "rollout_1s_mean": 1.0},
            {"name": "drifts", "rollout_1s_model": 3.0, "rollout_1s_persistence": 0.2, "rollout_1s_mean": 1.0},
            {"name": "none"}]
    page = rollout_html(rows)
    assert "<th>1 s: model</th>" in page and "0.25 s" not in page and ">none<" not in page
    assert "<td class='left'>good</td><td class='good'>0.1</td>" in page
    assert "<td class='left'>drifts</td><td class='bad'>3</td>" in page
    assert rollout_html([{"name": "x"}]) == ""


def test_floor_section_repeats_the_data_warnings(demo, data):
    """The fixture's artists each have a one-song dev split of seconds: the floor section says so by
    name, as preprocessing did (issue 31), after the floor's own list."""
    _, rep = demo
    page = (rep / "index.html").read_text()
    floor = page[page.index("<h2 id='floor'>"):]
    floor = floor[:floor.find("<h2", 4)]
    for w in load_manifest(data)["warnings"]:
        assert f"<li class='bad'>{html.escape(w)}</li>" in floor
    assert "artist aurora: its dev split is one song" in floor


def test_floor_names_the_groups_that_do_not_beat_it():
    from gruv_hpc.analysis.report import baseline_html
    groups = [{"group": "a-lstm-h8", "artists": "a", "best_dev_loss_mean": 0.9},
              {"group": "a-gru-h8", "artists": "a", "best_dev_loss_mean": 1.2},
              {"group": "a-gru-h4", "artists": "a", "best_dev_loss_mean": None},
              {"group": "b-lstm-h8", "artists": "b", "best_dev_loss_mean": 0.5}]
    page = baseline_html(groups, {"a": {"dev_loss": 1.1, "dev_clips": 3}, "b": {"dev_loss": 0.7, "dev_clips": 2},
                                  "c": {"dev_loss": None, "dev_clips": 0}, "d": {"error": "d/manifest.json: missing"}})
    assert "a: predicting the train mean 1.1 over 3 dev clips of ? song(s); <span class='bad'>not beaten by 1 of 2 group(s): a-gru-h8</span>" in page
    assert "b: predicting the train mean 0.7 over 2 dev clips of ? song(s); <span class='good'>every group (1) beats the best floor</span>" in page
    assert "c: the dev split has no clips" in page and "d: not computed: d/manifest.json: missing" in page
    assert baseline_html(groups, {}) == ""

def test_partial_sweep_with_failed_and_running_runs(demo, tmp_path):
    from gruv_hpc.analysis.report import analyze
    from gruv_hpc.cluster.sweep import analysis_listing
    sw, _ = demo
    part = tmp_path / "sweep"
    state = json.loads((copy_sweep(sw, part) / "sweep.json").read_text())
    failed, running = part / "runs" / "circuit-gru-h4", part / "runs" / "aurora-lstm-h8"
    (failed / "done.json").unlink()
    (failed / "error.txt").write_text("Traceback...\nRuntimeError: CUDA out of memory\n")
    (running / "done.json").unlink()
    lines = (running / "metrics.jsonl").read_text().splitlines()
    (running / "metrics.jsonl").write_text(lines[0] + "\n")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "submitit"])
    job = state["runs"]["aurora-lstm-h8"]["jobs"][-1]
    job["pid"], job["job_id"] = sleeper.pid, str(sleeper.pid)  # a local job's id is its controller's pid
    (part / "sweep.json").write_text(json.dumps(state))
    try:
        rep = tmp_path / "rep"
        summary = analyze(part, rep, analysis_listing(part), n_seed_clips=1, seed_seconds=0.32, log=lambda *a: None)
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
    summary = analyze(part, tmp_path / "rep2", analysis_listing(part), n_seed_clips=1, seed_seconds=0.32, log=lambda *a: None)
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
    from gruv_hpc.cluster.sweep import analysis_listing
    sw, _ = demo
    part = tmp_path / "sweep"
    copy_sweep(sw, part)
    for p in (part / "runs" / "aurora-gru-h4" / "checkpoints").glob("*.pt"):
        p.write_bytes(b"not a checkpoint")
    best = part / "runs" / "aurora-lstm-h4" / "checkpoints" / "best.pt"
    best.unlink()  # a hard link: replace it, do not write through it into the step checkpoint
    best.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="best.pt is unreadable"):
        summary = analyze(part, tmp_path / "rep", analysis_listing(part), n_seed_clips=1, seed_seconds=0.32, log=lambda *a: None)
    assert "aurora-gru-h4" in summary["audio"] and summary["audio"]["aurora-gru-h4"]["error"]
    assert summary["audio"]["aurora-lstm-h4"]["clips"]  # fell back, generated
    assert len([n for n, a in summary["audio"].items() if a["clips"]]) == 7
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "could not be analysed" in page and "aurora-gru-h4" in page


def test_each_runs_checkpoint_is_loaded_once(demo, tmp_path, monkeypatch):
    """Figure 3's predictions and the audio come from one load of each run's best checkpoint (the
    analysis loaded it twice: once for the figure, once for the audio)."""
    from collections import Counter
    from pathlib import Path

    import torch

    from gruv_hpc.analysis.report import analyze
    from gruv_hpc.cluster.sweep import analysis_listing
    sw, _ = demo
    loads, real = Counter(), torch.load

    def counting(f, *a, **kw):
        loads[Path(f)] += 1
        return real(f, *a, **kw)
    monkeypatch.setattr(torch, "load", counting)
    summary = analyze(sw, tmp_path / "rep", analysis_listing(sw), n_seed_clips=1, seed_seconds=0.32, log=lambda *a: None)
    runs = sorted(p for p in (sw / "runs").iterdir() if p.is_dir())
    assert len(runs) == 8 and loads == Counter({r / "checkpoints" / "best.pt": 1 for r in runs}), loads
    assert len(summary["fig3"]["band_runs"]) == 4 and all(a["clips"] for a in summary["audio"].values())


# --- the report in a real browser ----------------------------------------------------------------------

PROBE = """(async () => {
  const wait = (a) => new Promise((done) => {
    const info = () => done({src: a.getAttribute('src'), duration: a.duration, error: a.error && a.error.code});
    if (a.readyState >= 1 || a.error) return info();
    a.addEventListener('loadedmetadata', info, {once: true});
    a.addEventListener('error', info, {once: true});
    if (a.preload === 'none') { a.preload = 'metadata'; a.load(); }
  });
  const images = [...document.images].map((i) => ({src: i.getAttribute('src'), width: i.naturalWidth}));
  const audio = await Promise.all([...document.querySelectorAll('audio')].map(wait));
  return {images, audio};
})()"""


class Chromium:
    """Headless Chromium driven through its DevTools protocol (one page, one websocket)."""

    def __init__(self, exe, profile):
        import websocket
        self.proc = subprocess.Popen([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                                      "--disable-background-networking", "--disable-component-update", "--disable-sync",
                                      "--mute-audio", f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                      "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in self.proc.stderr:  # it says where it listens, then goes on logging to the pipe
            if line.startswith("DevTools listening on "):
                browser_ws = line.split(" on ", 1)[1].strip()
                break
        else:
            raise RuntimeError(f"chromium exited ({self.proc.wait()}) without opening its DevTools port")
        import threading
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # keep draining it
        port = browser_ws.split("/")[2].split(":")[1]
        import urllib.request
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(p for p in pages if p["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.next_id, self.events = 0, []

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                assert "error" not in msg, msg
                return msg["result"]
            self.events.append(msg)

    def wait_event(self, method):
        while not any(e.get("method") == method for e in self.events):
            self.events.append(json.loads(self.ws.recv()))

    def errors(self) -> list:
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown" or (m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert")) \
                    or (m == "Log.entryAdded" and p["entry"]["level"] == "error"):
                out.append(e)
        return out

    def close(self):
        try:
            self.call("Browser.close")
        except Exception:  # noqa: BLE001 - it may be gone already; it is killed below if not
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def probe_page(page, profile, *expressions: str) -> tuple[dict, list, list]:
    """``page`` opened from disk in headless Chromium: PROBE's images and audio players, the value
    of each of ``expressions``, and the console's errors."""
    browser = Chromium(shutil.which("chromium") or shutil.which("chromium-browser"), profile)
    try:
        for domain in ("Runtime", "Log", "Page"):
            browser.call(f"{domain}.enable")
        browser.call("Page.navigate", url=page.resolve().as_uri())
        browser.wait_event("Page.loadEventFired")
        res = browser.call("Runtime.evaluate", expression=PROBE, awaitPromise=True, returnByValue=True)["result"]["value"]
        values = [browser.call("Runtime.evaluate", returnByValue=True, expression=e)["result"]["value"]
                  for e in expressions]
        return res, values, browser.errors()
    finally:
        browser.close()


def assert_every_player_reads_its_file(rep, players: list[dict]) -> None:
    for a in players:
        assert a["error"] is None, a
        assert a["duration"] == pytest.approx(sf.info(rep / a["src"]).duration, abs=1e-3), a


@pytest.mark.browser
def test_report_in_a_real_browser(demo, tmp_path):
    """Opened from disk in headless Chromium: every image loads, every audio player reads the
    duration soundfile reports, and the console stays free of errors."""
    _, rep = demo
    res, _, errors = probe_page(rep / "index.html", tmp_path / "profile")
    page = (rep / "index.html").read_text()
    assert len(res["images"]) == page.count("<img") >= 3 + 8 * 2  # 3 figures + a spectrogram per clip
    assert [i for i in res["images"] if i["width"] == 0] == []
    assert len(res["audio"]) == 8 * 2 * 2
    assert_every_player_reads_its_file(rep, res["audio"])
    assert errors == []


@pytest.mark.browser
def test_listening_page_in_a_real_browser(demo, tmp_path):
    """listen.html from disk: every player reads its seed-then-continuation WAV, every image loads,
    the blinded keys are closed until asked for, and the console stays free of errors."""
    _, rep = demo
    res, [closed], errors = probe_page(rep / "listen.html", tmp_path / "profile",
                                       "[...document.querySelectorAll('details')].map((d) => d.open)")
    assert len(res["audio"]) == 8 * 2 + 4 * 2 * 2
    assert_every_player_reads_its_file(rep, res["audio"])
    assert res["images"] and [i for i in res["images"] if i["width"] == 0] == []
    assert closed == [False] * 8
    assert errors == []


# --- seeds: grouped, judged against their spread ----------------------------------------------------

def test_seeds_in_the_grid_are_grouped_and_judged(data, tmp_path):
    f = write_sweep(tmp_path / "seeds.toml", data, {"epochs": 2, "batch_size": 4, "workers": 0, "gen_seconds": 0.0,
                                                     "limit_train_batches": 6},
                    {"artists": [["aurora"]], "cell": ["lstm", "gru"], "hidden": [6], "seed": [1, 2]})
    sw, rep = tmp_path / "sweep", tmp_path / "report"
    r = subprocess.run([sys.executable, "-m", "gruv_hpc.cli", "sweep", "submit", str(f), "--out", str(sw), "--executor", "local",
                        "--quiet", "--wait"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    names = {"aurora-lstm-h6-s1", "aurora-lstm-h6-s2", "aurora-gru-h6-s1", "aurora-gru-h6-s2"}
    assert {p.name for p in (sw / "runs").iterdir()} == names
    r = subprocess.run([sys.executable, "-m", "gruv_hpc.cli", "analyze", str(sw), "--out", str(rep), "--seed-clips", "1",
                        "--seed-seconds", "0.32"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = read_csv(rep / "results.csv")
    assert set(rows) == names and {r["seed"] for r in rows.values()} == {"1", "2"}
    assert {r["group"] for r in rows.values()} == {"aurora-lstm-h6", "aurora-gru-h6"}
    lstm = [float(rows[f"aurora-lstm-h6-s{s}"]["best_dev_loss"]) for s in (1, 2)]
    assert lstm[0] != lstm[1]  # the seed is used: two runs, two results
    summary = json.loads((rep / "summary.json").read_text())
    g = {x["group"]: x for x in summary["groups"]}["aurora-lstm-h6"]
    assert g["n_seeds"] == 2 and g["seeds"] == [1, 2] and g["best_dev_loss_n"] == 2
    assert g["best_dev_loss_mean"] == pytest.approx(np.mean(lstm)) and g["best_dev_loss_std"] == pytest.approx(np.std(lstm, ddof=1))
    (pt,) = summary["fig2"]["points"]["aurora/lstm"]  # Figure 2's point: the mean, the spread as its error bar
    assert pt["n"] == 2 and pt["mean"] == pytest.approx(np.mean(lstm)) and pt["std"] == pytest.approx(np.std(lstm, ddof=1))
    claims = {c["claim"][:20]: c for c in summary["claims"]}
    (cmp,) = claims["The LSTM's dev loss "]["comparisons"]
    learned = any(all(rows[f"aurora-{c}-h6-s{s}"]["beats_floor"] == "True" for s in (1, 2)) for c in ("lstm", "gru"))
    judged = ("holds", "contradicts", "within noise", "marginal") if learned else \
        ("nothing beat the best floor",)  # neither side learned anything: not decided (gruv_hpc/analysis/claims.py)
    assert cmp["n_a"] == cmp["n_b"] == 2 and cmp["threshold"] > 0 and cmp["verdict"] in judged
    assert claims["Dev loss falls as th"]["verdict"] == "inconclusive"
    assert "needs at least 2 hidden sizes per cell" in claims["Dev loss falls as th"]["why"]
    page = (rep / "index.html").read_text()
    assert "2 seeds per grid point" in page and "(2 vs 2 seeds)" in page
    for c in summary["claims"]:
        assert f"<b>{c['verdict']}</b>" in page


def test_panels_with_nothing_to_show_say_so(corpus, tmp_path):
    """An artist without dev clips, a run without a finished epoch: a note, not blank axes."""
    from conftest import preprocess_tiny
    from gruv_hpc.analysis.common import RunInfo
    from gruv_hpc.analysis.fig1_loss import fig1
    from gruv_hpc.analysis.fig2_hidden import fig2
    from gruv_hpc.analysis.fig3_spectrogram import fig3
    from gruv_hpc.paths import RunPaths
    nodev = tmp_path / "nodev"
    preprocess_tiny(corpus, nodev, dev_fraction=0.0)

    def run(name, artist, cell, history):
        paths = RunPaths(tmp_path / "runs" / name)
        paths.ckpt_dir.mkdir(parents=True)
        paths.best.write_bytes(b"")  # a checkpoint is there (the dev split is empty: it is never read)
        cfg = {"cell": cell, "hidden": 8, "artists": [artist], "data": str(nodev), "block_size": 64, "sample_rate": 8000}
        return RunInfo(name, "COMPLETED", cfg, {}, paths, history)

    hist = [{"epoch": e, "train_loss": 1.0 / e, "dev_loss": None} for e in (1, 2)]
    runs = [run("a-lstm", "aurora", "lstm", hist), run("a-gru", "aurora", "gru", hist), run("c-lstm", "circuit", "lstm", [])]
    f1, f2, f3 = fig1(runs, tmp_path / "r"), fig2(runs, tmp_path / "r"), fig3(runs, tmp_path / "r")
    assert "circuit, H = 8: no run with a finished epoch yet" in f1["notes"]
    assert "aurora: no dev loss: the dev split has no clips" in f1["notes"]
    assert f2 == {}  # no run has a dev loss: no figure (the page says so)
    assert f3["notes"] == ["aurora: the dev split has no clips, so there is nothing to predict",
                           "circuit: the dev split has no clips, so there is nothing to predict"]
    runs[0].history = [{"epoch": 1, "train_loss": 1.0, "dev_loss": 2.0}]
    f2 = fig2(runs, tmp_path / "r")
    assert f2["notes"] == ["circuit: no dev loss yet (no run has finished an epoch)"]


def test_listening_page(demo):
    """listen.html: every grid point's seed then its level-matched continuation, the loop marked;
    and the blinded LSTM-vs-GRU pairs with their key behind a <details>."""
    import html as H
    _, rep = demo
    page = (rep / "listen.html").read_text()
    summary = json.loads((rep / "summary.json").read_text())
    refs = re.findall(r"src='([^']+)'", page)
    assert refs and all((rep / r).exists() for r in refs)
    # 8 grid points x 2 seed clips, then 4 LSTM/GRU pairs (2 artists x 2 sizes) x 2 seed clips x A and B
    players = re.findall(r"src='(listen/[^']+\.wav)'", page)
    assert len(players) == 8 * 2 + 4 * 2 * 2
    for name, a in summary["audio"].items():
        for c in a["clips"]:
            wav = rep / "listen" / name / f"seed{c['seed_index']}.wav"
            if not wav.exists():
                continue
            mix, _ = sf.read(wav)
            seed, _ = sf.read(rep / c["seed_wav"])
            cont = mix[len(seed):]
            cont_rms, seed_rms = np.sqrt(np.mean(cont ** 2)), np.sqrt(np.mean(mix[:len(seed)] ** 2))
            if np.sqrt(np.mean(sf.read(rep / c["wav"])[0] ** 2)) > 1e-3:  # not a silent continuation
                assert abs(20 * np.log10(cont_rms / seed_rms)) < 0.2  # level-matched
            assert len(mix) == len(seed) + len(sf.read(rep / c["wav"])[0])
    assert "class='tl loop'" in page or "no loop" in page
    blind = page[page.index("id='blind'"):]
    keys = re.findall(r"<details><summary>Show the key</summary>A = (\w+) \(([^)]+)\), B = (\w+) \(([^)]+)\)</details>",
                      blind)
    assert len(keys) == 8 and all({a, b} == {"LSTM", "GRU"} for a, _, b, _ in keys)
    assert {a for a, _, _, _ in keys} == {"LSTM", "GRU"}  # the order is not always the same
    for a, run_a, b, run_b in keys:
        assert f"-{a.lower()}-" in H.unescape(run_a) and f"-{b.lower()}-" in H.unescape(run_b)
    assert "href='listen.html'" in (rep / "index.html").read_text()


def test_report_says_whether_seeds_converge(demo):
    _, rep = demo
    summary = json.loads((rep / "summary.json").read_text())
    page = (rep / "index.html").read_text()
    assert "Do different seeds end the same?" in page
    rows = read_csv(rep / "results.csv")
    for name, a in summary["audio"].items():
        c = a["convergence"]
        assert c["clips"] == len(a["clips"]) and -1 <= c["end_cosine"] <= 1 + 1e-9
        assert rows[name]["seeds_converge"] == str(c["converged"])
        for k in ("click_ratio", "level_change_db", "nearest_train_distance", "flatness", "spectral_distance"):
            assert rows[name][k] != ""
