"""Issue 31, "a first week on real music": warnings raised inside jobs reach the terminal, thin data
is warned about by name before compute is spent, and the commands say what a result rests on."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import TINY, write_sweep
from gruv_hpc.cluster import sweep
from gruv_hpc.dataset.manifest import load_manifest
from gruv_hpc.paths import BuildPaths

ROOT = Path(__file__).resolve().parents[1]
TINY_FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]


def cli(*args, cwd=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "gruv_hpc.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def thin_corpus(corpus: Path, d: Path) -> Path:
    """The session corpus, plus a file in circuit's folder too short for one clip."""
    shutil.copytree(corpus, d)
    sf.write(d / "circuit" / "zz_short.wav", np.zeros(80, dtype=np.float32), 8000)  # 10 ms: under one clip
    return d


def warning_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("warning: ")]


# ---------------------------------------------------------------------------------------------
# 1. A build's warnings reach the user wherever it ran; 2. thin data, said by name

@pytest.mark.slurm
def test_slurm_build_warnings_reach_the_terminal(corpus, tmp_path):
    """Built by a Slurm array and merge job with --wait, the merge's warnings (dropped files, a
    one-song dev split) print as one-line warnings: recorded in the manifest, and shown again by
    `gruv dataset info`. Before, they stayed in the merge job's log as raw UserWarnings."""
    c = thin_corpus(corpus, tmp_path / "corpus")
    out = tmp_path / "ds"
    r = cli("preprocess", f"aurora={c / 'aurora'}", f"circuit={c / 'circuit'}", "--out", out, "--quiet", *TINY_FLAGS,
            "--jobs", "2", "--executor", "slurm", "--wait", "slurm.time_min=10", "slurm.mem_gb=1")
    assert r.returncode == 0, r.stderr
    warned = warning_lines(r.stderr)
    dropped = [w for w in warned if w.startswith("warning: artist circuit: 1 of 4 file(s) dropped: zz_short.wav "
                                                 "(shorter than one clip")]
    assert len(dropped) == 1 and "--clip-blocks" in dropped[0]
    dev = [w for w in warned if w.startswith("warning: artist aurora: its dev split is one song")]
    assert len(dev) == 1 and "--dev-fraction" in dev[0] and "--split-file" in dev[0]
    assert "UserWarning" not in r.stderr
    merge_log = BuildPaths(out).jobs.glob("*_log.err")  # the jobs' own logs: one-line warnings too
    assert not any("UserWarning" in p.read_text() for p in merge_log)
    m = load_manifest(out)
    assert any(w.startswith("artist circuit: 1 of 4 file(s) dropped") for w in m["warnings"])
    info = cli("dataset", "info", out)
    assert info.returncode == 0, info.stderr
    assert warning_lines(info.stderr) == [f"warning: {w}" for w in m["warnings"]]


def test_sweep_dry_run_and_submit_warn_of_thin_data(data, tmp_path):
    """A grid whose batch size leaves an artist under 10 optimizer steps an epoch is warned about
    by name, with the data's own warnings, at dry run and at submit, before anything trains."""
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 1, "hidden": 4, "batch_size": 40},
                    {"artists": [["aurora"], ["circuit"]]})
    for dry in (True, False):
        out = []
        sweep.submit(f, tmp_path / "sw", executor="local", dry_run=dry, out=out.append, progress=False,
                     overrides=["limit_train_batches=1", "gen_seconds=0", "workers=0"])
        warned = warning_lines("\n".join(out))
        steps = [w for w in warned if "optimizer step(s) an epoch at the grid's batch_size 40, fewer than 10" in w]
        assert [w.split(":")[1].strip() for w in steps] == ["artist aurora", "artist circuit"], out
        assert all("a shorter --clip-blocks" in w for w in steps)
        assert sum("artist aurora: its dev split is one song" in w for w in warned) == 1


# ---------------------------------------------------------------------------------------------
# 5. gruv sweep preempt: one call, one requeue

def _sweep_state(d: Path) -> dict:
    return json.loads((d / "sweep.json").read_text())


@pytest.mark.slurm
def test_sweep_preempt_sends_one_signal_and_makes_one_requeue(data, tmp_path):
    from gruv_hpc.cluster.slurm import job_states
    from gruv_hpc.paths import RunPaths
    train = {"epochs": 40, "batch_size": 4, "workers": 0, "gen_seconds": 0.0, "hidden": 8}
    f = write_sweep(tmp_path / "s.toml", data, train, {"cell": ["lstm"]}, slurm={"signal_delay_s": 60})
    d = tmp_path / "sw"
    sweep.submit(f, d, executor="slurm", out=lambda *a: None)
    run = RunPaths(d / "runs" / "lstm")
    t0 = time.time()
    while not run.step_ckpts():  # training, its signal handlers installed
        assert time.time() - t0 < 120, "no first checkpoint"
        time.sleep(0.2)
    t = time.time()
    r = cli("sweep", "preempt", d, "lstm")
    took = time.time() - t
    assert r.returncode == 0, r.stderr
    assert took < 10 and "sent USR2 to job" in r.stdout
    jid = _sweep_state(d)["runs"]["lstm"]["jobs"][-1]["job_id"]
    # a second call before the requeue is refused (a second signal would abort the checkpointing run)
    again = cli("sweep", "preempt", d, "lstm")
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
    assert "gruv: error: run lstm: job" in again.stderr
    log = d / "logs" / f"{jid}_0_log.out"
    t0 = time.time()
    while "resumed after requeue 1" not in (log.read_text() if log.exists() else ""):
        assert time.time() - t0 < 120, "the run did not resume"
        time.sleep(0.5)
    # A late second signal (a retrying scancel) would arrive seconds after the restart (11 s measured):
    # the resumed run trains on for longer, and it stays one requeue.
    newest = run.step_ckpts()[0]  # (newest first)
    t0 = time.time()
    while time.time() - t0 < 15 or run.step_ckpts()[0] == newest:
        assert time.time() - t0 < 120, "no checkpoint after the resume"
        time.sleep(0.5)
    info = job_states([jid])[jid]
    assert info.requeues == 1 and info.state in ("RUNNING", "COMPLETED")  # exactly one
    assert log.read_text().count("stop signal USR2") == 1
    sweep.cancel(d, out=lambda *a: None)
    for _ in range(60):
        if job_states([jid])[jid].state not in sweep.ACTIVE:
            break
        time.sleep(0.5)
    # an ended run is refused, in one line, and nothing is sent
    done = cli("sweep", "preempt", d, "lstm")
    # (CANCELLED, or COMPLETED when the run finished its epochs before the cancel reached it)
    assert done.returncode == 2 and re.match(rf"gruv: error: run lstm: job {jid} is (CANCELLED|COMPLETED), not RUNNING:",
                                             done.stderr), done.stderr
    assert "it has ended" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_grid_of_one_artist_is_warned_of_its_own_data_only(data, tmp_path):
    f = write_sweep(tmp_path / "s.toml", data, {"epochs": 1, "hidden": 4}, {"artists": [["circuit"]]})
    out = []
    sweep.submit(f, tmp_path / "sw", executor="local", dry_run=True, out=out.append)
    warned = warning_lines("\n".join(out))
    assert any("artist circuit: its dev split" in w for w in warned) and not any("aurora" in w for w in warned)


# ---------------------------------------------------------------------------------------------
# 7. The README's cluster path, followed literally on the local Slurm (6: the canary named)

def readme_cluster_commands() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## On your cluster", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [ln.split(" #")[0].strip() for ln in block.splitlines() if ln.startswith("gruv ")]


@pytest.mark.slurm
def test_the_readme_cluster_section_works_as_written(corpus, tmp_path):
    """Each `gruv` line of the README's cluster section, in order, on the local Slurm. Only the
    user's own values change: the music folders and artist names (the tiny corpus's), /scratch/$USER
    (a temporary folder); tiny data and a one-epoch grid go on the command lines as the README says
    other values do. The preprocessing is a Slurm array, the first grid needs no file edited."""
    cmds = readme_cluster_commands()
    assert [c.split()[1] for c in cmds] == ["preprocess", "dataset", "sweep", "sweep", "sweep", "sweep"]
    assert "--executor slurm" in cmds[0] and "--jobs" in cmds[0]
    mine = {"/music/a": str(corpus / "aurora"), "/music/b": str(corpus / "circuit"), "artist_a": "aurora",
            "artist_b": "circuit", "/scratch/$USER": str(tmp_path)}
    extra = {"preprocess": [*TINY_FLAGS, "--quiet", "slurm.mem_gb=1"],
             "submit": ["epochs=1", "grid.hidden=8", "grid.cell=lstm", "limit_train_batches=2", "gen_every_epochs=0",
                        "slurm.mem_gb=1"]}
    outputs = []
    for c in cmds:
        for k, v in mine.items():
            c = c.replace(k, v)
        argv = c.split()[1:]
        if argv[:2] == ["sweep", "logs"]:
            argv[3] = "aurora-lstm-h8"  # RUN
        argv += extra.get(argv[0], []) + extra.get(argv[1] if argv[0] == "sweep" else "", [])
        r = cli(*argv, cwd=ROOT, timeout=400)
        assert r.returncode == 0, (argv, r.stdout, r.stderr)
        outputs.append(r)
        if argv[:2] == ["sweep", "submit"] and "--canary" in argv:
            canary = _sweep_state(tmp_path / "grid")["submissions"][-1]["canary"]
            assert f"they wait for canary job {canary} (afterok" in r.stdout and f"{canary}_0_log.out" in r.stdout
            sweep.wait(tmp_path / "grid", poll_s=1, progress=False, timeout_s=300)
    pre, info, dry, sub, status, logs = outputs
    assert "submitted as job array" in pre.stdout and "6 tasks)" in pre.stdout  # a Slurm array, not the login node
    assert any("its dev split is one song" in w for w in warning_lines(pre.stderr))  # the merge job's, here
    assert warning_lines(info.stderr) and "aurora:" in info.stdout
    assert "resources checked against partition(s) debug" in dry.stdout
    assert any("[[slurm.when]] #1 selects hidden = 256, which no run trains" in w for w in warning_lines(dry.stdout))
    assert "canary job" in status.stdout and "COMPLETED" in status.stdout
    assert "2 COMPLETED" in status.stdout, status.stdout
    assert logs.stdout.strip()


# ---------------------------------------------------------------------------------------------
# 8. Small untruths

def _hparams_of(run: Path) -> dict:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2
    for f in sorted((run / "tb").glob("events.*")):
        for ev in EventFileLoader(str(f)).Load():
            for v in ev.summary.value:
                if v.tag == "_hparams_/session_start_info":
                    pd = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                    return {k: x.WhichOneof("kind") and getattr(x, x.WhichOneof("kind"))
                            for k, x in pd.session_start_info.hparams.items()}
    raise AssertionError(f"no hparams in {run / 'tb'}")


def test_hparams_record_the_effective_amp_on_cpu(data, tmp_path):
    """amp (bf16 autocast) is on by default and takes effect on CUDA only: a CPU run records amp = 0."""
    from conftest import tiny_config
    from gruv_hpc.training.trainer import main
    cfg = tiny_config(data, epochs=1, limit_train_batches=2, device="cpu")
    assert cfg.amp  # the default: the config says on, the run cannot
    main(cfg, tmp_path / "run")
    hp = _hparams_of(tmp_path / "run")
    assert hp["amp"] == 0 and hp["hidden"] == 8  # torch writes a bool as a number (it was 1)


def test_no_doc_page_repeats_a_section():
    """Every heading, and every paragraph that opens with a bold title, is there once per page
    (docs/reproducing.md had two sections twice, almost word for word)."""
    import re
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        titles = re.findall(r"^(#+ .+|\*\*[^*]+\*\*)", page.read_text(), flags=re.M)
        twice = sorted({t for t in titles if titles.count(t) > 1})
        assert not twice, f"{page.name} repeats {twice}"


def test_every_option_with_a_default_shows_it_in_help():
    """`gruv ... --help` everywhere: an option with a default (not None, not a flag's False) says it."""
    import argparse
    from gruv_hpc.cli import build_parser
    missing = []

    def walk(p, path):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    walk(sp, path + [name])
            elif a.option_strings and a.default not in (None, False, argparse.SUPPRESS) and a.help != argparse.SUPPRESS:
                shown = p._get_formatter()._expand_help(a) if a.help else ""  # what --help prints for it
                if "default" not in shown:
                    missing.append(f"gruv {' '.join(path)} {a.option_strings[-1]}")
    walk(build_parser(), [])
    assert not missing, missing
    text = " ".join(cli("generate", "--help").stdout.split())
    assert "--seed-seconds SEED_SECONDS seconds of seed audio the model continues (default: 10.0)" in text


def test_the_stft_sentence_says_what_overlap_add_does_not_remove():
    readme = " ".join((ROOT / "README.md").read_text().split())
    gen = " ".join((ROOT / "docs" / "generation.md").read_text().split())
    assert "stft continuations do not click" not in readme
    for text in (readme, gen):
        assert "Overlap-add removes" in text and "it does not remove a change the model makes" in text


def test_a_pipeline_warns_of_thin_data_before_its_dataset_is_built(corpus, tmp_path):
    """A pipeline queues the build and the grid at once: its dry run and its submission warn from
    the files' headers (a one-song dev split, a file shorter than a clip, too few steps an epoch at
    the grid's batch size), before anything is queued or decoded."""
    from gruv_hpc.cluster import pipeline
    from test_pipeline import tiny_tables, write
    c = thin_corpus(corpus, tmp_path / "corpus")
    t = tiny_tables(c)
    t["sweep.train"] = {**t["sweep.train"], "batch_size": 64}  # the runs train on both artists: ~400 clips
    f = write(tmp_path / "p.toml", t)
    said = []
    pipeline.dry_run(f, tmp_path / "out", executor="local", say=said.append)
    warned = warning_lines("\n".join(said))
    assert any(w.startswith("warning: artist circuit: 1 of 4 file(s) dropped: zz_short.wav") for w in warned), said
    assert any(w.startswith("warning: artist aurora: its dev split is one song") for w in warned)
    assert any(w.startswith("warning: artists aurora,circuit: its train split is") and
               "optimizer step(s) an epoch at the grid's batch_size 64, fewer than 10" in w for w in warned)
    assert not (tmp_path / "out").exists()


def test_pipeline_status_prints_the_built_datasets_warnings(data):
    from gruv_hpc.cluster import pipeline
    from gruv_hpc.cluster.preprocess import build_status
    pre = build_status(data)
    assert pre["state"] == "COMPLETED" and pre["warnings"] == load_manifest(data)["warnings"] and pre["warnings"]
    st = {"dir": "/x", "submitted": 0, "submissions": 1, "executor": "slurm", "preprocess": pre,
          "train": {"state": "COMPLETED", "runs": 2, "by_state": {"COMPLETED": 2}},
          "analysis": {"state": "COMPLETED", "job": None, "report": "/x/report/index.html", "report_exists": True,
                       "stale": None}}
    text = pipeline.format_status(st)
    assert warning_lines(text) == [f"warning: {w}" for w in pre["warnings"]]
