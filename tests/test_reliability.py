"""Issue 22's medium and low defects: each one a refusal or one-line error naming the value, or a
damaged part listed and skipped, never a silent mix-up or a traceback."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY
from gruv_hpc.dataset.build import PreprocessConfig, parse_sources, plan, preprocess
from gruv_hpc.dataset.manifest import load_manifest


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "gruv_hpc.cli", *map(str, args)], capture_output=True, text=True, **kw)


def one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for n in needles:
        assert n in r.stderr, (n, r.stderr)


# --- N3: a copy of a song within one artist --------------------------------------------------------

def test_a_copy_within_one_artist_is_excluded_not_put_in_train_and_dev(corpus, tmp_path):
    a = tmp_path / "a"
    shutil.copytree(corpus / "aurora", a)
    songs = sorted(a.iterdir())
    (a / "zz-copy.wav").write_bytes(songs[0].read_bytes())  # the same song under another name
    with pytest.warns(UserWarning, match="zz-copy.wav: the same content as"):
        p = plan(parse_sources([f"a={a}", f"c={corpus / 'circuit'}"]), PreprocessConfig(**TINY))
    assert "zz-copy.wav" not in [s["relpath"] for s in p.songs]
    assert [r["reason"] for r in p.excluded if r["relpath"] == "zz-copy.wav"] == \
        [f"the same content as {songs[0].name} (a copy)"]
    with pytest.warns(UserWarning):
        preprocess(parse_sources([f"a={a}", f"c={corpus / 'circuit'}"]), tmp_path / "ds", PreprocessConfig(**TINY),
                   progress=False)
    m = load_manifest(tmp_path / "ds")
    by_split = {}
    for s in m["songs"]:
        by_split.setdefault(s["sha256"], set()).add(s["split"])
    assert all(len(v) == 1 for v in by_split.values())  # no content in both splits


# --- N4, N6: the analysis of a sweep: atomic, and one damaged run never fatal ---------------------

@pytest.fixture(scope="module")
def small_sweep(data, tmp_path_factory):
    from conftest import write_sweep
    from gruv_hpc.cluster import sweep
    root = tmp_path_factory.mktemp("small")
    f = write_sweep(root / "s.toml", data, {"epochs": 1, "batch_size": 4, "workers": 0, "gen_seconds": 0.0,
                                             "hidden": 4, "limit_train_batches": 4}, {"cell": ["lstm", "gru", "lstm-fused"]})
    res = sweep.submit(f, root / "sweep", executor="local", progress=False, out=lambda *a: None, max_parallel=1)
    assert not res["failed"]
    return root / "sweep"


def copy_sweep(sw, part):
    shutil.copytree(sw, part)
    state = json.loads((part / "sweep.json").read_text())
    for r in state["runs"].values():
        r["run_dir"] = r["run_dir"].replace(str(sw), str(part))
    (part / "sweep.json").write_text(json.dumps(state))
    return part


def analyze_args(sw, rep):
    return ["analyze", str(sw), "--out", str(rep), "--seeds", "1", "--seed-seconds", "0.16", "--max-clips", "4"]


def test_a_killed_analyze_leaves_the_previous_report_whole(small_sweep, tmp_path, monkeypatch):
    from gruv_hpc import cli as gcli
    from gruv_hpc.analysis import report
    rep = tmp_path / "rep"
    assert gcli.main(analyze_args(small_sweep, rep)) == 0
    before = {p.name: p.stat().st_mtime_ns for p in rep.iterdir()}
    assert {"index.html", "results.csv", "summary.json", "fig1_loss.png"} <= set(before)

    def killed(*a, **kw):
        raise KeyboardInterrupt  # the rerun is killed after its figures, before its page
    monkeypatch.setattr(report, "write_html", killed)
    assert gcli.main(analyze_args(small_sweep, rep)) == 130
    assert {p.name: p.stat().st_mtime_ns for p in rep.iterdir()} == before  # not one new file beside the old page
    monkeypatch.undo()
    assert gcli.main(analyze_args(small_sweep, rep)) == 0  # the next run replaces it (and its leftover staging)
    assert (rep / "index.html").stat().st_mtime_ns > before["index.html"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_analyze_never_replaces_a_directory_that_is_not_a_report(small_sweep, tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    r = cli(*analyze_args(small_sweep, tmp_path))
    one_line_error(r, "not a report")
    assert (tmp_path / "mine.txt").read_text() == "precious"


@pytest.mark.parametrize("damage", ["config", "no-loss", "text-loss"])
def test_one_damaged_run_is_listed_and_skipped(small_sweep, tmp_path, damage):
    sw = copy_sweep(small_sweep, tmp_path / "sw")
    run = sw / "runs" / "gru"
    if damage == "config":
        (run / "config.json").write_text("{not json")
    else:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        h = json.loads(lines[0])
        if damage == "no-loss":
            del h["train_loss"]
        else:
            h["train_loss"] = "0.5"
        (run / "metrics.jsonl").write_text(json.dumps(h) + "\n")
    rep = tmp_path / "rep"
    r = cli(*analyze_args(sw, rep))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    summary = json.loads((rep / "summary.json").read_text())
    assert {x["name"] for x in summary["runs"]} == {"lstm", "lstm-fused"}
    assert "gru" in summary["skipped_runs"] and ("config.json" if damage == "config" else "metrics.jsonl") in \
        summary["skipped_runs"]["gru"]
    page = (rep / "index.html").read_text()
    assert "could not be analysed" in page and "gru:" in page
    # gruv sweep status shows the run, its damaged values as "-", and names the damage
    if damage != "config":
        st = cli("sweep", "status", sw)
        assert st.returncode == 0 and "Traceback" not in st.stderr, st.stderr
        assert "metrics.jsonl: line 1" in st.stdout
        js = json.loads(cli("sweep", "status", sw, "--json").stdout)
        assert {x["name"]: x["train_loss"] for x in js["runs"]}["gru"] is None


def test_a_completed_run_without_checkpoints_is_listed(small_sweep, tmp_path):
    from gruv_hpc.analysis.report import analyze
    sw = copy_sweep(small_sweep, tmp_path / "sw")
    shutil.rmtree(sw / "runs" / "gru" / "checkpoints")
    summary = analyze(sw, tmp_path / "rep", n_seeds=1, seed_seconds=0.16, max_clips=4, log=lambda *a: None)
    assert "no checkpoint left" in summary["skipped_runs"]["gru"]
    assert "gru: COMPLETED, but it has no checkpoint" in (tmp_path / "rep" / "index.html").read_text()
