"""Issue 22's medium and low defects: each one a refusal or one-line error naming the value, or a
damaged part listed and skipped, never a silent mix-up or a traceback."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, copy_sweep
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


def analyze_args(sw, rep):
    return ["analyze", str(sw), "--out", str(rep), "--seed-clips", "1", "--seed-seconds", "0.16", "--max-clips", "4"]


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
    assert sorted(p.name for p in tmp_path.iterdir()) == [".rep.lock", "rep"]  # (the lock's file stays, empty)


def test_analyze_never_replaces_a_directory_that_is_not_a_report(small_sweep, tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    r = cli(*analyze_args(small_sweep, tmp_path))
    one_line_error(r, "not a report")
    assert (tmp_path / "mine.txt").read_text() == "precious"


@pytest.mark.parametrize("damage", ["config", "no-loss", "text-loss", "not-utf8"])
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
        elif damage == "text-loss":
            h["train_loss"] = "0.5"
        (run / "metrics.jsonl").write_bytes(json.dumps(h).encode() + (b"\xff\n" if damage == "not-utf8" else b"\n"))
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
        assert "metrics.jsonl: line 1" in st.stdout and ("not UTF-8" in st.stdout) == (damage == "not-utf8")
        best = cli("sweep", "best", sw)
        assert best.returncode in (0, 1) and "Traceback" not in best.stderr, best.stderr
        js = json.loads(cli("sweep", "status", sw, "--json").stdout)
        assert {x["name"]: x["train_loss"] for x in js["runs"]}["gru"] is None


def test_a_completed_run_without_checkpoints_is_listed(small_sweep, tmp_path):
    from gruv_hpc.analysis.report import analyze
    from gruv_hpc.cluster.sweep import analysis_listing
    sw = copy_sweep(small_sweep, tmp_path / "sw")
    shutil.rmtree(sw / "runs" / "gru" / "checkpoints")
    summary = analyze(sw, tmp_path / "rep", analysis_listing(sw), n_seed_clips=1, seed_seconds=0.16, max_clips=4, log=lambda *a: None)
    assert "no checkpoint left" in summary["skipped_runs"]["gru"]
    assert "gru: COMPLETED, but it has no checkpoint" in (tmp_path / "rep" / "index.html").read_text()


# --- a fresh machine gets what CI got ----------------------------------------------------------

def test_the_test_tools_are_pinned_and_installed_at_their_pins():
    from importlib.metadata import version
    root = Path(__file__).resolve().parent.parent
    assert "-c .ci/constraints.txt" in (root / ".ci" / "install.sh").read_text()
    pins = dict(ln.split("==") for ln in (root / ".ci" / "constraints.txt").read_text().splitlines()
                if ln.strip() and not ln.startswith("#"))
    assert {"pytest", "pluggy", "websocket-client"} <= set(pins)
    assert {k: version(k) for k in pins} == pins  # CI's environment is the pinned one


# --- LOW: one-line refusals naming the value -------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["--songs", "0"], "--songs: must be >= 1, got 0"),
    (["--min-seconds", "-1"], "--min-seconds: must be a number of seconds"),
    (["--max-seconds", "nan"], "--max-seconds: must be a number of seconds"),
    (["--min-seconds", "9", "--max-seconds", "3"], "--min-seconds 9.0 is more than --max-seconds 3.0"),
])
def test_corpus_synth_refuses_bad_values(tmp_path, args, needle):
    r = cli("corpus", "synth", "--out", tmp_path / "c", *args)
    one_line_error(r, needle)
    assert not (tmp_path / "c").exists()


def test_corpus_synth_refuses_an_out_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    one_line_error(cli("corpus", "synth", "--out", tmp_path / "f", "--songs", "1"), "is not a directory")


@pytest.mark.parametrize("kv, needle", [
    ("seed=4294967296", "seed: must be < 2**32, got 4294967296"),
    ("artists=aurora,aurora", "artists: aurora given twice"),
    ("lr=1e308", "lr: must be a finite number in (0, 3.4e+38] (the optimizers compute in float32), got 1e+308"),
    ("lr=inf", "lr: must be a finite number in (0, 3.4e+38] (the optimizers compute in float32), got inf"),
])
def test_train_refuses_bad_values(data, tmp_path, kv, needle):
    one_line_error(cli("train", "--data", data, "--run-dir", tmp_path / "r", kv), needle)


def test_a_model_beyond_memory_is_one_line(data, tmp_path):
    one_line_error(cli("train", "--data", data, "--run-dir", tmp_path / "r", "hidden=100000000", "workers=0"),
                   "hidden=100000000, layers=1: cannot allocate the model")


def test_run_dir_at_a_file_is_refused(data, tmp_path):
    (tmp_path / "f").write_text("x")
    one_line_error(cli("train", "--data", data, "--run-dir", tmp_path / "f"), "exists and is not a directory")
    assert (tmp_path / "f").read_text() == "x"


def test_resume_without_config_json_names_the_checkpoints_config(data, tmp_path):
    from conftest import tiny_config
    from gruv_hpc.training.trainer import main
    run = tmp_path / "r"
    main(tiny_config(data, epochs=1, hidden=8), run)
    (run / "config.json").unlink()
    r = cli("train", "--data", data, "--run-dir", run, "hidden=12", "epochs=2", "workers=0", "batch_size=4",
            "gen_seconds=0", "log_every_steps=5", "limit_train_batches=12")
    one_line_error(r, "has no config.json", "hidden: 8 -> 12")
    assert not (run / "config.json").exists()  # not rewritten: the right command still works
    res = main(tiny_config(data, epochs=2, hidden=8), run)
    assert res["status"] == "done" and res["epoch"] == 2


@pytest.mark.parametrize("over, needle", [
    ("slurm.signal_delay_s=-100", "slurm.signal_delay_s: must be >= 0, got -100"),
    ("slurm.max_num_timeout=-1", "slurm.max_num_timeout: must be >= 0, got -1"),
])
def test_bad_slurm_values_are_refused(data, tmp_path, over, needle):
    from conftest import write_sweep
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 1}, {"hidden": [4]})
    one_line_error(cli("sweep", "submit", f, "--out", tmp_path / "sw", "--dry-run", "--executor", "local", over), needle)


@pytest.mark.parametrize("n", ["0", "-5"])
def test_max_parallel_below_one_is_refused(data, tmp_path, n):
    from conftest import write_sweep
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 1}, {"hidden": [4]})
    one_line_error(cli("sweep", "submit", f, "--out", tmp_path / "sw", "--executor", "local", "--max-parallel", n),
                   f"--max-parallel: must be >= 1, got {n}")
    assert not (tmp_path / "sw" / "sweep.json").exists()


def test_a_sweep_file_whose_data_is_not_a_string(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text("data = 5\n[train]\nepochs = 1\n[grid]\nhidden = [4]\n")
    one_line_error(cli("sweep", "submit", f, "--out", tmp_path / "sw", "--dry-run"), "data = 5: must be a string")


def test_generate_to_an_unwritable_path_is_one_line(trained_run, tmp_path):
    one_line_error(cli("generate", trained_run, "--out", "/proc/gruv-cannot-write.wav", "--seed-seconds", "0.2",
                       "--length-ratio", "1"), "--out /proc/gruv-cannot-write.wav: cannot write it")


def test_sweep_status_into_a_closed_pipe(small_sweep):
    p = subprocess.Popen([sys.executable, "-m", "gruv_hpc.cli", "sweep", "status", str(small_sweep)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.close()  # `| head` that has read what it wanted
    err = p.stderr.read()
    p.wait()
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_header_declaring_1_hz_is_excluded(corpus, tmp_path):
    import numpy as np
    import soundfile as sf
    a = tmp_path / "a"
    shutil.copytree(corpus / "aurora", a)
    sf.write(a / "one-hertz.wav", np.zeros(20000, np.int16), 1, subtype="PCM_16")  # 40 KB "lasting" 5.6 h
    with pytest.warns(UserWarning, match="native sample rate 1 Hz is below 2000 Hz"):
        p = plan(parse_sources([f"a={a}", f"c={corpus / 'circuit'}"]), PreprocessConfig(**TINY))
    assert "one-hertz.wav" not in [s["relpath"] for s in p.songs]
    assert any(r["relpath"] == "one-hertz.wav" and "5.6 h" in r["reason"] for r in p.excluded)


def test_tensorboard_is_this_interpreters_and_a_comma_in_the_path_is_safe(tmp_path):
    from gruv_hpc.tbserver import RunLinks, command
    for name in ("plain", "with,comma"):
        tb = tmp_path / name / "runs" / "lstm" / "tb"
        tb.mkdir(parents=True)
        (tmp_path / name / "runs" / "no-tb-yet").mkdir()  # a run that has not written yet is not linked
        links = RunLinks(tmp_path / name)
        try:
            cmd = command(links.dir, "127.0.0.1", 6006)
            assert cmd[:3] == [sys.executable, "-m", "tensorboard.main"]
            # One --logdir, never a --logdir_spec (which a comma in a path would split)
            assert cmd[3:5] == ["--logdir", str(links.dir)] and "--logdir_spec" not in cmd
            assert [(p.name, p.resolve()) for p in links.dir.iterdir()] == [("lstm", tb.resolve())]
        finally:
            links.close()
        assert not links.dir.exists()


@pytest.mark.slurm
def test_an_sbatch_refusal_is_one_line_and_not_recorded(data, tmp_path):
    from conftest import write_sweep
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 1}, {"hidden": [4]})
    # (the resource check, skipped here, refuses it first: tests/test_requests.py; this is sbatch's refusal)
    r = cli("sweep", "submit", f, "--out", tmp_path / "sw", "--executor", "slurm", "slurm.partition=nosuch",
            env={**os.environ, "GRUV_SKIP_RESOURCE_CHECK": "1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("gruv: error: sbatch refused the job:") and "partition" in r.stderr
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["submissions"] == []


def _refused_pipeline(corpus, tmp_path, table: str):
    """A pipeline whose ``table`` (preprocess.slurm or analysis.slurm) names a partition sbatch
    refuses: one line, and no submission recorded. Returns the command's result."""
    from test_pipeline import tiny_tables, write
    t = tiny_tables(corpus)
    t[table] = {**t.get(table, {}), "partition": "nosuch"}
    f = write(tmp_path / "p.toml", t)
    r = cli("pipeline", "submit", f, "--out", tmp_path / "out", "--executor", "slurm",
            env={**os.environ, "GRUV_SKIP_RESOURCE_CHECK": "1"})  # (sbatch's refusal, not the resource check's)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "sbatch refused" in r.stderr, r.stderr
    st = tmp_path / "out" / "pipeline.json"
    assert not st.exists() or json.loads(st.read_text())["submissions"] == []
    return r


@pytest.mark.slurm
def test_a_refused_pipeline_submission_is_not_recorded(corpus, tmp_path):
    _refused_pipeline(corpus, tmp_path, "preprocess.slurm")


@pytest.mark.slurm
def test_a_pipeline_refused_at_its_analysis_cancels_what_it_queued_and_is_not_recorded(corpus, tmp_path):
    """Issue 32 L7: the preprocessing and runs stayed queued, recorded as a submission with no analysis."""
    from gruv_hpc.cluster import slurm
    r = _refused_pipeline(corpus, tmp_path, "analysis.slurm")
    ids = r.stdout.split("cancelled what this submission had queued: job(s) ", 1)[1].splitlines()[0].split(", ")
    assert len(ids) >= 3  # the preprocessing's array and merge, the runs
    import time
    deadline = time.time() + 60
    while any(i.state in slurm.ACTIVE for i in slurm.job_states(ids).values()):
        assert time.time() < deadline, slurm.job_states(ids)
        time.sleep(1)


# --- Issue 32: a folder gruv replaces is one gruv wrote; one writer per report --------------------

def test_analyze_refuses_a_web_folder_by_name_and_keeps_it(small_sweep, tmp_path):
    web = tmp_path / "public_html"
    (web / "blog").mkdir(parents=True)
    files = {"index.html": "<h1>my site</h1>", "blog/post1.md": "hello", "cv.pdf": "%PDF"}
    for rel, text in files.items():
        (web / rel).write_text(text)
    r = cli(*analyze_args(small_sweep, web))
    one_line_error(r, "not a report", "blog", "cv.pdf", "index.html")
    assert {rel: (web / rel).read_text() for rel in files} == files
    assert sorted(p.name for p in tmp_path.iterdir()) == [".public_html.lock", "public_html"]


def test_a_report_with_a_file_added_is_refused_by_name_and_a_plain_one_replaced(small_sweep, tmp_path):
    from gruv_hpc import cli as gcli, swap
    rep = tmp_path / "rep"
    assert gcli.main(analyze_args(small_sweep, rep)) == 0
    listed = json.loads((rep / swap.MARKER).read_text())["entries"]
    assert "index.html" in listed and "summary.json" in listed
    made = (rep / "index.html").stat().st_mtime_ns
    (rep / "audio" / "notes.md").write_text("mine")
    r = cli(*analyze_args(small_sweep, rep))
    one_line_error(r, "audio/notes.md", "not written by gruv analyze")
    assert (rep / "audio" / "notes.md").read_text() == "mine" and (rep / "index.html").stat().st_mtime_ns == made
    (rep / "audio" / "notes.md").unlink()
    # a report made before the marker (no marker, only a report's names, a report's summary) is replaced
    (rep / swap.MARKER).unlink()
    assert gcli.main(analyze_args(small_sweep, rep)) == 0
    assert (rep / swap.MARKER).is_file() and (rep / "index.html").stat().st_mtime_ns > made


def test_a_second_analysis_of_one_report_is_refused_in_one_line(small_sweep, tmp_path):
    """gruv analyze and the pipeline's analysis take one lock on --out: the second fails at once."""
    from gruv_hpc.cluster.pipeline import AnalysisConfig, run_analysis
    from gruv_hpc.lock import Lock, LockedError
    from gruv_hpc.paths import PipelinePaths
    from gruv_hpc import swap
    paths = PipelinePaths(tmp_path)
    with Lock(swap.lock_path(paths.report), "report"):  # a gruv analyze of DIR/report, running
        r = cli(*analyze_args(small_sweep, paths.report))
        one_line_error(r, f"report {paths.report} is in use by pid {os.getpid()}")
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            run_analysis(paths, AnalysisConfig())
    assert not paths.report.exists() and not list(tmp_path.glob(".report.staging*"))
    # each writer stages in its own folder, and a dead writer's is cleared by the next
    assert swap.staging_path(paths.report) != swap.staging_path(paths.report, pid=1)
    dead = swap.staging_path(paths.report, pid=2 ** 22 + 1)
    (dead / "half").mkdir(parents=True)
    assert swap.replace_dir(paths.report, "report", lambda d: d.mkdir()) is None
    assert not dead.exists() and (paths.report / swap.MARKER).is_file()


def test_a_swap_interrupted_after_its_renames_carries_the_users_files_over(tmp_path):
    from gruv_hpc import swap
    out, old = tmp_path / "ds", swap.aside_path(tmp_path / "ds")
    (old / "shards").mkdir(parents=True)
    (old / "split.tsv").write_text("mine")
    (out / "shards").mkdir(parents=True)
    from gruv_hpc.dataset.build.swap import foreign
    assert swap.recover(out, foreign) == "finished"
    assert (out / "split.tsv").read_text() == "mine" and not old.exists()
    # a user's name the new folder has too is never overwritten: the old folder stays, named
    (old / "shards").mkdir(parents=True)
    (old / "split.tsv").write_text("older")
    with pytest.raises(Exception, match="split.tsv: not written by gruv"):
        swap.recover(out, foreign)
    assert (old / "split.tsv").read_text() == "older" and (out / "split.tsv").read_text() == "mine"


def test_a_dataset_rebuild_keeps_the_users_files_and_its_split_file(corpus, tmp_path):
    from gruv_hpc.dataset.corpus import format_split
    srcs = parse_sources([f"aurora={corpus / 'aurora'}", f"circuit={corpus / 'circuit'}"])
    cfg, out = PreprocessConfig(**TINY), tmp_path / "data"
    preprocess(srcs, out, cfg, progress=False)
    (out / "split.tsv").write_text(format_split(plan(srcs, cfg)))
    (out / "NOTES.md").write_text("notes")
    for _ in range(2):  # the same command twice: the second finds its split file still there
        preprocess(srcs, out, cfg, progress=False, split_file=out / "split.tsv")
        assert sorted(p.name for p in out.iterdir()) == ["NOTES.md", "manifest.json", "shards", "split.tsv", "stats.npz"]
    preprocess(srcs, out, cfg, progress=False, overwrite=True)
    assert (out / "NOTES.md").read_text() == "notes"
    # what a rebuild would replace is refused by name: a file in shards/, a split file that is its own
    (out / "shards" / "split.tsv").write_text((out / "split.tsv").read_text())
    r = cli("preprocess", f"aurora={corpus / 'aurora'}", f"circuit={corpus / 'circuit'}", "--out", out,
            "--sample-rate", 8000, "--block-size", 64, "--clip-blocks", 8, "--split-file", out / "shards" / "split.tsv")
    one_line_error(r, "shards/split.tsv: not a shard", "move it out")
    assert (out / "shards" / "split.tsv").is_file()


@pytest.mark.parametrize("where", ["dev copy", "train copies", "other artist"])
def test_a_copy_with_other_bytes_is_found_by_its_decoded_content(corpus, tmp_path, where):
    """Issue 32 M4: the same audio with other bytes (re-saved as FLAC) landed in train and dev of one
    artist, or under two artists. A dev copy is excluded (the stats stay exact: dev blocks are in no
    moments); two train copies, or copies under two artists, are refused by name."""
    import soundfile as sf
    from gruv_hpc.dataset.corpus import format_split
    from gruv_hpc.errors import DatasetError
    a, c = tmp_path / "a", tmp_path / "c"
    shutil.copytree(corpus / "aurora", a)
    shutil.copytree(corpus / "circuit", c)
    song = sorted(a.glob("*.wav"))[0]
    audio, sr = sf.read(song, dtype="int16")
    copy = (c if where == "other artist" else a) / "resaved.flac"  # other bytes, the same audio
    sf.write(copy, audio, sr, subtype="PCM_16")
    srcs, cfg = parse_sources([f"a={a}", f"c={c}"]), PreprocessConfig(**TINY)
    split = {("a", song.name): "train", ("a", copy.name): "dev" if where == "dev copy" else "train"}
    lines = [ln if ln.startswith("#") else "\t".join([*ln.split("\t")[:2], split.get(tuple(ln.split("\t")[:2]), ln.split("\t")[2])])
             for ln in format_split(plan(srcs, cfg)).splitlines()]
    (tmp_path / "split.tsv").write_text("\n".join(lines) + "\n")
    build = lambda: preprocess(srcs, tmp_path / "ds", cfg, progress=False, split_file=tmp_path / "split.tsv")  # noqa: E731
    if where != "dev copy":
        with pytest.raises(DatasetError, match=f"resaved.flac and .*{song.name} decode to the same audio"):
            build()
        assert not (tmp_path / "ds").exists()
        return
    with pytest.warns(UserWarning, match="resaved.flac: it decodes to the same audio as"):
        m = build()
    assert next(s["skipped"] for s in m["songs"] if s["relpath"] == "resaved.flac").startswith("the same audio as")
    cut = next(s["id"] for s in m["songs"] if s["relpath"] == "resaved.flac")
    assert all(seg[0] != cut for sh in m["shards"] for seg in sh["segments"])  # none of its clips is read
    assert M_verify(tmp_path / "ds")["songs"] == m["summary"]["songs"]


def M_verify(d):
    from gruv_hpc.dataset.manifest import verify
    return verify(d)


def test_a_file_that_decodes_to_far_less_than_its_header_says_is_skipped(corpus, tmp_path):
    """Issue 32 L8: a damaged MP3 (header 324.6 s) entered the dataset as 38.9 s, silently."""
    import numpy as np
    import soundfile as sf
    a = tmp_path / "a"
    shutil.copytree(corpus / "aurora", a)
    audio, sr = sf.read(sorted(a.glob("*.wav"))[0], dtype="float32")
    sf.write(tmp_path / "whole.mp3", np.tile(audio, 3), sr, format="MP3")
    data = (tmp_path / "whole.mp3").read_bytes()
    (a / "cut.mp3").write_bytes(data[:len(data) // 4])  # the header still declares the whole song
    with pytest.warns(UserWarning, match="cut.mp3: damaged: it decodes to .* s of the .* s its header declares"):
        m = preprocess(parse_sources([f"a={a}", f"c={corpus / 'circuit'}"]), tmp_path / "ds", PreprocessConfig(**TINY),
                       progress=False)
    assert "damaged" in next(s["skipped"] for s in m["songs"] if s["relpath"] == "cut.mp3")


def test_input_noise_that_drowns_the_inputs_is_refused():
    """Issue 32 L4: input_noise=1e30 was accepted."""
    from gruv_hpc.config import build
    from gruv_hpc.errors import ConfigError
    from gruv_hpc.training.config import TrainConfig
    with pytest.raises(ConfigError, match="input_noise: must be at most 10 .* got 1e\\+30"):
        build(TrainConfig, {"data": "d", "input_noise": 1e30}).validate()
    build(TrainConfig, {"data": "d", "input_noise": 0.5}).validate()


def test_a_cosine_horizon_that_ends_before_the_epochs_is_said(data):
    """Issue 32 L4: epochs past the horizon trained at lr 0 with no warning."""
    from gruv_hpc.training.config import resolve
    m = load_manifest(data)
    with pytest.warns(UserWarning, match="epochs 3..5 train at lr 0"):
        resolve(tiny_config_of(data, epochs=5, lr_schedule="cosine", lr_horizon_epochs=2), m)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve(tiny_config_of(data, epochs=5, lr_schedule="cosine", lr_horizon_epochs=2, lr_min_ratio=0.1), m)


def tiny_config_of(data, **kw):
    from conftest import tiny_config
    return tiny_config(data, **kw)


def test_analyze_on_a_full_disk_is_one_line_and_leaves_the_report_and_no_staging(small_sweep, tmp_path, monkeypatch):
    """Issue 32 L1: a full disk mid-analysis was a traceback and left a partial .staging."""
    import errno
    from gruv_hpc import cli as gcli
    from gruv_hpc.analysis import report
    rep = tmp_path / "rep"
    assert gcli.main(analyze_args(small_sweep, rep)) == 0
    before = sorted(p.name for p in rep.iterdir())

    def full(runs, out, *a, **kw):
        (out / "half.png").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "fig2_hidden.png"))
    monkeypatch.setattr(report, "fig2", full)
    import io
    import contextlib
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert gcli.main(analyze_args(small_sweep, rep)) == 2
    assert len(err.getvalue().strip().splitlines()) == 1 and "No space left on device" in err.getvalue()
    assert sorted(p.name for p in rep.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".rep.lock", "rep"]
    assert (gcli.main(["analyze", str(small_sweep), "--out", "/"]) == 2)
