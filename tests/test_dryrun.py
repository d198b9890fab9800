"""Dry runs that tell the truth (effective values, collapsed axes, what a resubmission does with
each run, another dataset refused), grid axes from the command line, and ``gruv sweep best``.
The local executor trains a tiny sweep for real (tests/conftest.py's fixtures)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gruv_hpc.cluster import sweep
from gruv_hpc.cluster.sweep.best import best_runs, format_best
from gruv_hpc.errors import ConfigError, DatasetError, GruvError

from conftest import preprocess_tiny, write_sweep

ROOT = Path(__file__).parent.parent
DEMO = ROOT / "jobs" / "demo.toml"


def cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "gruv_hpc.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd)


def tree(d: Path) -> dict:
    """Every file under d with its bytes and mtime: what a dry run must leave as it was."""
    return {str(p.relative_to(d)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# The listing: effective values, and a warning when an override collapses an axis

def test_dry_run_lists_the_values_runs_train_with(tmp_path):
    """hidden=64 over the grid axis hidden = [32, 128]: the runs are named -h64 and train 64, so the
    listing says 64 (it said 32), and a warning names the axis that collapsed."""
    r = cli("sweep", "submit", DEMO, "--out", tmp_path / "sw", "--executor", "local", "--dry-run", "hidden=64",
            f"data={tmp_path / 'nodata'}")
    assert r.returncode == 0, r.stderr
    listing = [ln for ln in r.stdout.splitlines() if ln.startswith("aurora-lstm-h64-s1: ")]
    assert listing and json.loads(listing[0].split(": ", 1)[1])["hidden"] == 64
    assert '"hidden": 32' not in r.stdout
    warn = [ln for ln in r.stdout.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "grid axis hidden = [32, 128]" in warn[0] and "2 points" in warn[0]
    assert not (tmp_path / "sw").exists()
    # a key that is no grid axis is no collapse, and an axis of one value collapses nothing
    sw = sweep.load_sweep(write_sweep(tmp_path / "s.toml", tmp_path / "nodata", {"epochs": 1},
                                      {"cell": ["lstm", "gru"], "hidden": [4]}), ["lr=0.5", "hidden=8"])
    assert sw.notes == [] and [r.grid for r in sw.runs] == [{"cell": "lstm", "hidden": 8}, {"cell": "gru", "hidden": 8}]
    assert sw.overrides == {"lr": 0.5, "hidden": 8}


def test_submit_warns_of_a_collapsed_axis_too(data, tmp_path):
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 1}, {"cell": ["lstm", "gru"], "hidden": [4, 6]})
    out = []
    sweep.submit(f, tmp_path / "sw", executor="local", dry_run=True, overrides=["hidden=5"], out=out.append)
    assert any(ln.startswith("warning: hidden=5 on the command line collapses the grid axis hidden") for ln in out)


# ---------------------------------------------------------------------------------------------
# grid.KEY=v1,v2 from the command line

def test_grid_axis_from_the_command_line(tmp_path):
    f = write_sweep(tmp_path / "s.toml", tmp_path / "nodata", {"epochs": 1},
                    {"artists": [["aurora"]], "cell": ["lstm"], "hidden": [4]})
    sw = sweep.load_sweep(f, ["grid.hidden=32,128", "grid.cell=lstm,gru", "grid.seed=1,2,3"])
    assert len(sw.runs) == 2 * 2 * 3 and sw.notes == []
    assert [r.name for r in sw.runs[:3]] == ["aurora-lstm-h32-s1", "aurora-lstm-h32-s2", "aurora-lstm-h32-s3"]
    hidden = {r.grid["hidden"] for r in sw.runs}
    assert hidden == {32, 128} and all(type(h) is int for h in hidden)  # typed, not "32"
    assert all(type(r.config["seed"]) is int for r in sw.runs)
    # a list key's element joins its items with '+', as the run names show them
    sw = sweep.load_sweep(f, ["grid.artists=aurora,aurora+circuit"])
    assert [r.grid["artists"] for r in sw.runs] == [["aurora"], ["aurora", "circuit"]]
    assert [r.name for r in sw.runs] == ["aurora-lstm-h4", "aurora+circuit-lstm-h4"]
    # floats stay floats; an axis the file does not have is added
    sw = sweep.load_sweep(f, ["grid.lr=1e-3,3e-4"])
    assert [r.config["lr"] for r in sw.runs] == [1e-3, 3e-4] and sw.runs[0].name == "aurora-lstm-h4-lr0.001"


@pytest.mark.parametrize("override, match", [
    ("grid.hiden=4,8", r"grid.hiden: unknown grid axis; this sweep's axes: artists, cell, hidden; any train key"),
    ("grid.hidden=4,x", r"grid.hidden=4,x: hidden: expected int, got 'x'"),
    ("grid.hidden=", r"grid.hidden=: expected comma-separated values"),
    ("grid.hidden=4,,8", r"grid.hidden=4,,8: expected comma-separated values"),
    ("grid.hidden=4,4", r"grid.hidden=4,4: 4 given twice"),
    ("grid.cell=lstm,rnn", r"rnn"),
])
def test_bad_grid_axis_is_one_line(tmp_path, override, match):
    f = write_sweep(tmp_path / "s.toml", tmp_path / "nodata", {"epochs": 1},
                    {"artists": [["aurora"]], "cell": ["lstm"], "hidden": [4]})
    with pytest.raises(ConfigError, match=match):
        sweep.load_sweep(f, [override])
    r = cli("sweep", "submit", f, "--out", tmp_path / "sw", "--dry-run", "--executor", "local", override)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("gruv: error: ")


def test_grid_axis_and_a_pinned_value_at_once_is_refused(tmp_path):
    f = write_sweep(tmp_path / "s.toml", tmp_path / "nodata", {"epochs": 1}, {"hidden": [4]})
    with pytest.raises(ConfigError, match="both hidden=8 and grid.hidden=4,8"):
        sweep.load_sweep(f, ["hidden=8", "grid.hidden=4,8"])


# ---------------------------------------------------------------------------------------------
# A resubmission's dry run: per run, continue / start / skip / fail; another dataset refused

@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A sweep file of cell x hidden [4, 6], of which the hidden=4 runs were trained 1 epoch."""
    root = tmp_path_factory.mktemp("trained")
    f = write_sweep(root / "s.toml", data, {"epochs": 1, "limit_train_batches": 3, "gen_seconds": 0.0, "workers": 0,
                                            "batch_size": 4}, {"cell": ["lstm", "gru"], "hidden": [4, 6]})
    d = root / "sw"
    res = sweep.submit(f, d, executor="local", overrides=["grid.hidden=4"], progress=False, out=lambda *a: None)
    assert res["submitted"] == ["lstm-h4", "gru-h4"] and not res["failed"]
    return f, d


@pytest.fixture(scope="module")
def other_data(tmp_path_factory):
    """A dataset of other songs (another synthetic corpus), with the same artists and parameters."""
    from gruv_hpc.dataset.synth import make_corpus
    c = tmp_path_factory.mktemp("corpus2")
    make_corpus(c, songs_per_artist=3, min_s=6, max_s=9, seed=7)
    out = tmp_path_factory.mktemp("data2") / "ds"
    preprocess_tiny(c, out)
    return out


def test_resubmission_dry_run_says_what_becomes_of_each_run(trained, tmp_path):
    f, d = trained
    before = tree(d)
    out = []
    res = sweep.submit(f, d, executor="local", dry_run=True, overrides=["epochs=2"], out=out.append)
    assert res["plan"]["lstm-h4"] == {"action": "continue", "why": "from epoch 1 -> 2", "from_epoch": 1, "epochs": 2}
    assert res["plan"]["gru-h4"]["action"] == "continue" and res["plan"]["lstm-h6"]["action"] == "start"
    assert "continue lstm-h4: from epoch 1 -> 2" in out and "start gru-h6: epoch 0 -> 2" in out
    assert res["todo"] == ["lstm-h4", "lstm-h6", "gru-h4", "gru-h6"] and not res["failing"]
    # the same target: the trained runs are done
    res = sweep.submit(f, d, executor="local", dry_run=True, out=out.append)
    assert res["skipped"] == {"lstm-h4": "done", "gru-h4": "done"} and "skip gru-h4: done" in out
    # another config: those runs would fail, named, and the dry run says the submission would be refused
    out = []
    res = sweep.submit(f, d, executor="local", dry_run=True, overrides=["lr=0.5"], out=out.append)
    assert set(res["failing"]) == {"lstm-h4", "gru-h4"} and res["plan"]["lstm-h6"]["action"] == "start"
    assert any(ln.startswith("fail lstm-h4: run lstm-h4 in") and "lr: 0.001 -> 0.5" in ln for ln in out)
    assert out[-1].startswith("# 2 run(s) would fail: the submission would be refused")
    r = cli("sweep", "submit", f, "--out", d, "--executor", "local", "--dry-run", "lr=0.5")
    assert r.returncode == 1 and "fail gru-h4:" in r.stdout
    assert tree(d) == before  # nothing written, nothing touched


def test_a_run_recorded_before_a_key_existed_goes_on_at_its_default(trained, tmp_path):
    """A sweep recorded before `predict` existed (its configs lack the key) is resubmitted after the
    upgrade: the missing key had its default then, so the runs go on; another value still fails."""
    import shutil
    f, d = trained
    old = tmp_path / "old"
    shutil.copytree(d, old)
    state = json.loads((old / "sweep.json").read_text())
    for r in state["runs"].values():
        r["config"].pop("predict")
    (old / "sweep.json").write_text(json.dumps(state))
    for c in (old / "runs").glob("*/config.json"):
        rec = json.loads(c.read_text())
        rec["config"].pop("predict")
        c.write_text(json.dumps(rec))
    res = sweep.submit(f, old, executor="local", dry_run=True, overrides=["epochs=2"], out=lambda *a: None)
    assert not res["failing"] and res["plan"]["lstm-h4"]["action"] == "continue"
    res = sweep.submit(f, old, executor="local", dry_run=True, overrides=["predict=delta"], out=lambda *a: None)
    assert "predict: 'next' -> 'delta'" in res["failing"]["lstm-h4"]


def test_another_dataset_is_flagged_at_dry_run_and_refused_at_submit(trained, other_data):
    from gruv_hpc.dataset.manifest import dataset_id, load_manifest
    f, d = trained
    was = json.loads((d / "runs" / "lstm-h4" / "config.json").read_text())["dataset"]["id"]
    now = dataset_id(load_manifest(other_data))
    assert was != now
    before = tree(d)
    out = []
    res = sweep.submit(f, d, executor="local", dry_run=True, overrides=[f"data={other_data}"], out=out.append)
    assert set(res["failing"]) == {"lstm-h4", "gru-h4"} and res["plan"]["gru-h6"]["action"] == "start"
    assert f"was trained on dataset {was}" in res["failing"]["lstm-h4"]
    with pytest.raises(DatasetError) as e:
        sweep.submit(f, d, executor="local", overrides=[f"data={other_data}", "epochs=2"], out=lambda *a: None)
    msg = str(e.value)
    assert msg.startswith("run lstm-h4 was trained on dataset") and was in msg and now in msg and str(other_data) in msg
    assert "\n" not in msg
    after = tree(d)
    assert after.pop(".lock") and before.pop(".lock")  # (the submission lock was taken: its mtime)
    assert after == before  # refused before anything was recorded or queued
    r = cli("sweep", "submit", f, "--out", d, "--executor", "local", f"data={other_data}")
    assert r.returncode == 2 and r.stderr.startswith("gruv: error: run lstm-h4 was trained on dataset")
    # on Slurm too: refused before sbatch, not when the jobs start after their queue wait
    with pytest.raises(DatasetError, match="^run lstm-h4 was trained on dataset"):
        sweep.submit(f, d, executor="slurm", overrides=[f"data={other_data}"], out=lambda *a: None)
    after = tree(d)
    assert after.pop(".lock") and after == before


# ---------------------------------------------------------------------------------------------
# gruv sweep best

def test_best_run_by_dev_loss_with_its_paths(trained):
    f, d = trained
    res = best_runs(d, top=5)
    rows = sweep.status(d)
    trained_rows = {r["name"]: r for r in rows if r["best_dev_loss"] is not None}
    assert {r["name"] for r in res["runs"]} == set(trained_rows) == {"lstm-h4", "gru-h4"}
    want = min(trained_rows, key=lambda n: trained_rows[n]["best_dev_loss"])
    top = res["runs"][0]
    assert top["name"] == want and top["value"] == trained_rows[want]["best_dev_loss"]
    assert top["checkpoint"] == str(d / "runs" / want / "checkpoints" / "best.pt") and Path(top["checkpoint"]).is_file()
    assert top["generate"] == f"gruv generate {d / 'runs' / want} --out {want}.wav"
    assert {s["name"] for s in res["skipped"]} == set()  # the h6 runs were never submitted: not in sweep.json
    assert [r["name"] for r in best_runs(d, cell="gru")["runs"]] == ["gru-h4"]
    # another metric; --highest flips the order
    lo, hi = best_runs(d, by="train_loss", top=2)["runs"], best_runs(d, by="train_loss", top=2, highest=True)["runs"]
    assert [r["name"] for r in lo] == [r["name"] for r in reversed(hi)] and lo[0]["value"] <= lo[1]["value"]
    text = format_best(best_runs(d))
    assert text.startswith(f"1. {want}: best_dev_loss ") and f"gruv generate {d / 'runs' / want}" in text
    r = cli("sweep", "best", d, "--cell", "lstm", "--json")
    assert r.returncode == 0 and [x["name"] for x in json.loads(r.stdout)["runs"]] == ["lstm-h4"]


def test_best_shows_each_runs_floor_and_says_when_the_best_sits_at_it(trained, data, tmp_path):
    """Each run's floor (the dev loss of predicting its artists' train mean) and whether it beats
    it; a best checkpoint at the floor is named as such, with the last checkpoint's command line."""
    from gruv_hpc.analysis.baseline import mean_prediction_loss
    _, d0 = trained
    d = tmp_path / "sw"
    shutil.copytree(d0, d)
    state = json.loads((d / "sweep.json").read_text())
    for r in state["runs"].values():
        r["run_dir"] = r["run_dir"].replace(str(d0), str(d))
    (d / "sweep.json").write_text(json.dumps(state))
    from gruv_hpc.training.config import run_config
    floor = mean_prediction_loss(data, None, std_floor=run_config(state["runs"]["gru-h4"]["config"])["std_floor"])[0]
    # gru-h4 trained to exactly its floor at epoch 1, then (an epoch 2 written here) went on: the
    # "best" checkpoint is the near-mean model, the last one is another
    m = d / "runs" / "gru-h4" / "metrics.jsonl"
    [line] = [json.loads(ln) for ln in m.read_text().splitlines()]
    m.write_text(json.dumps({**line, "best_dev_loss": floor, "dev_loss": floor}) + "\n"
                 + json.dumps({**line, "epoch": 2, "best_dev_loss": floor, "dev_loss": floor * 1.2}) + "\n")
    res = best_runs(d, top=2)
    by = {r["name"]: r for r in res["runs"]}
    assert by["gru-h4"]["floor"] == pytest.approx(floor, rel=1e-12) == by["lstm-h4"]["floor"]
    assert by["gru-h4"]["beats_floor"] is False and by["gru-h4"]["at_floor"] is True
    assert by["lstm-h4"]["beats_floor"] == (by["lstm-h4"]["value"] < floor)
    text = format_best(res)
    assert f"best_dev_loss {floor:.6g} at epoch 1 of 1 (COMPLETED); floor {floor:.6g} (predicting the train mean): " \
           "does NOT beat it" in text
    assert "note: its best checkpoint (epoch 1) sits at or above the floor" in text and "the last checkpoint (epoch 2)" in text
    assert f"gruv generate {d / 'runs' / 'gru-h4'} --out gru-h4-last.wav --checkpoint last" in text
    # a metric the floor does not measure gets none
    assert "floor" not in best_runs(d, by="train_loss")["runs"][0]


def test_best_skips_damaged_runs_and_names_bad_options(trained, tmp_path):
    _, d0 = trained
    d = tmp_path / "sw"
    shutil.copytree(d0, d)
    m = d / "runs" / "lstm-h4" / "metrics.jsonl"
    m.write_text(m.read_text().replace('"dev_loss"', '"dev_loss": "oops", "x"', 1))
    res = best_runs(d, top=3)
    assert [r["name"] for r in res["runs"]] == ["gru-h4"]
    assert res["skipped"][0]["name"] == "lstm-h4" and "damaged" in res["skipped"][0]["why"]
    assert "skipped lstm-h4: damaged:" in format_best(res)
    with pytest.raises(GruvError, match="no run matches --artist nobody; artists: -; cells: gru, lstm"):
        best_runs(d, artist="nobody")
    with pytest.raises(GruvError, match="records 'dev_los'.*metrics: .*best_dev_loss"):
        best_runs(d, by="dev_los")
    with pytest.raises(GruvError, match="--top: must be >= 1"):
        best_runs(d, top=0)
    r = cli("sweep", "best", tmp_path / "nothing")
    assert r.returncode == 2 and "not a sweep directory" in r.stderr


# ---------------------------------------------------------------------------------------------
# gruv pipeline submit --dry-run

def test_pipeline_dry_run_prints_every_stage_and_writes_nothing(corpus, tmp_path):
    from gruv_hpc.cluster import pipeline
    from test_pipeline import tiny_tables, write
    f = write(tmp_path / "p.toml", tiny_tables(corpus))
    out = tmp_path / "out"
    said = []
    res = pipeline.dry_run(f, out, executor="slurm", say=said.append)
    text = "\n".join(said)
    tasks, merge = res["preprocess"]["scripts"]
    assert "#SBATCH --array=0-1%" in tasks and "--dependency" not in tasks
    assert "#SBATCH --dependency=afterok:PREPROCESS_TASKS" in merge and "#SBATCH --job-name=gruv-merge-data" in merge
    [train] = res["train"]["scripts"]
    assert "#SBATCH --dependency=afterok:MERGE" in train and "#SBATCH --array=0-1%" in train
    [analysis] = res["analysis"]["scripts"]
    assert "#SBATCH --dependency=afterany:TRAIN_ARRAYS,afterok:MERGE" in analysis
    for script in (tasks, merge, train, analysis):
        assert script in text
    assert "start lstm: epoch 0 -> 1" in said and "# stage 3 of 3: analysis" in text
    assert not out.exists()
    said = []
    res = pipeline.dry_run(f, out, executor="local", say=said.append)
    assert [res[s]["scripts"] for s in ("preprocess", "train", "analysis")] == [[], [], []]
    assert any(ln.startswith("# runs here: 2 process(es)") for ln in said)
    assert any(ln.startswith("# runs here, last: gruv analyze") for ln in said) and not out.exists()
    r = cli("pipeline", "submit", f, "--out", out, "--executor", "slurm", "--dry-run", "sweep.grid.hidden=4,8")
    assert r.returncode == 0, r.stderr
    assert "lstm-h8: " in r.stdout and r.stdout.count("#SBATCH --dependency=") == 3 and not out.exists()


def test_pipeline_dry_run_over_a_built_dataset_changes_nothing(corpus, data, tmp_path):
    """DIR holds the dataset already (the same songs and parameters): preprocessing is skipped, the
    runs are checked against the real manifest, training waits for nothing; DIR is as it was."""
    from gruv_hpc.cluster import pipeline
    from test_pipeline import tiny_tables, write
    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(data, out / "data")
    f = write(tmp_path / "p.toml", tiny_tables(corpus, preprocess={"jobs": 1, **__import__("conftest").TINY}))
    before = tree(out)
    said = []
    res = pipeline.dry_run(f, out, executor="slurm", say=said.append)
    assert res["preprocess"]["state"] == "complete" and res["preprocess"]["scripts"] == []
    [train] = res["train"]["scripts"]
    assert "--dependency" not in train and "#SBATCH --dependency=afterany:TRAIN_ARRAYS" in res["analysis"]["scripts"][0]
    assert tree(out) == before
    with pytest.raises(ConfigError, match="hidden"):  # the sweep is checked as a submission checks it
        pipeline.dry_run(f, out, executor="slurm", overrides=["sweep.hidden=0"], say=said.append)


def test_best_finds_all_artist_runs_and_recommends_a_checkpoint_that_loads(trained, tmp_path):
    """Issue 32 L5: --artist A finds the runs trained on all the dataset's artists (A among them), and
    a best.pt that does not load is not recommended: the newest checkpoint that loads is, said so."""
    from conftest import copy_sweep

    from gruv_hpc.training.checkpoint import load_checkpoint
    _, d0 = trained
    d = copy_sweep(d0, tmp_path / "sw")
    assert {r["name"] for r in best_runs(d, artist="aurora", top=5)["runs"]} == {"lstm-h4", "gru-h4"}
    top = best_runs(d)["runs"][0]
    best = Path(top["checkpoint"])
    assert best.name == "best.pt" and "note" not in top
    best.write_bytes(b"a torn copy")
    again = best_runs(d)["runs"][0]
    assert again["name"] == top["name"] and again["checkpoint"] != str(best)
    assert "does not load" in again["note"] and f"--checkpoint {again['checkpoint']}" in again["generate"]
    assert load_checkpoint(Path(again["checkpoint"]))["model"]  # the one recommended loads
    assert f"note: {again['note']}" in format_best(best_runs(d))
