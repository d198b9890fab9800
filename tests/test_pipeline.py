"""gruv pipeline: the pipeline file, the sweep validated against the planned dataset, the three
stages run locally, and queued at once on the local Slurm cluster."""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY
from gruv_hpc.cluster import pipeline
from gruv_hpc.cluster import sweep as sw
from gruv_hpc.config import read_file
from gruv_hpc.errors import ConfigError, DatasetError
from gruv_hpc.dataset.manifest import load_manifest
from gruv_hpc.paths import BuildPaths, PipelinePaths

SLURM_SMALL = {"time_min": 10, "cpus_per_task": 1, "mem_gb": 1.0, "signal_delay_s": 30}


def toml(tables: dict) -> str:
    """A TOML file from {"table.sub": {key: value}} ("" = the top level); values as JSON (valid TOML here)."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in tables.get("", {}).items()]
    for name, kv in tables.items():
        if name:
            lines.append(f"[{name}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in kv.items()]
    return "\n".join(lines) + "\n"


def tiny_tables(corpus, /, **changes) -> dict:
    t = {
        "corpus": {"aurora": str(corpus / "aurora"), "circuit": str(corpus / "circuit")},
        "preprocess": {"jobs": 2, **TINY},
        "preprocess.slurm": dict(SLURM_SMALL),
        "sweep.train": {"epochs": 1, "hidden": 8, "batch_size": 4, "workers": 0, "gen_seconds": 0.0},
        "sweep.grid": {"cell": ["lstm", "gru"]},
        "sweep.slurm": dict(SLURM_SMALL),
        "analysis": {"seed_clips": 1, "seed_seconds": 1.0, "max_clips": 4},
        "analysis.slurm": {**SLURM_SMALL, "mem_gb": 2.0},
    }
    for k, v in changes.items():
        if v is None:
            t.pop(k, None)
        else:
            t[k] = v
    return t


def write(path: Path, tables: dict) -> Path:
    path.write_text(toml(tables))
    return path


# ---------------------------------------------------------------------------------------------
# The file

@pytest.mark.parametrize("change, needle", [
    ({"": {"sweeps": "x"}}, "unknown top-level key(s) sweeps; valid: corpus, preprocess, sweep, analysis"),
    ({"corpus": {}}, "[corpus]: no artist"),
    ({"corpus": {"aurora": "NOWHERE"}}, "[corpus]: source 'aurora=NOWHERE': NOWHERE is not a directory"),
    ({"preprocess": {"jobz": 2}}, "unknown key(s) 'jobz' in FILE [preprocess]; valid keys: sample_rate"),
    ({"preprocess": {"jobs": 0}}, "jobs: must be >= 1, got 0"),
    ({"preprocess": {"transform": "dct"}}, "transform: 'dct' is not one of fft, rfft"),
    ({"preprocess.slurm": {"mem": 2}}, "unknown key(s) 'mem' in FILE [preprocess.slurm]; valid keys: partition"),
    ({"sweep.train": None, "sweep.grid": None, "sweep.slurm": None}, "no sweep; give a [sweep] table"),
    ({"sweep": {"data": "/d"}}, "[sweep] data: the pipeline's dataset is OUT/data; remove this key"),
    ({"sweep.train": {"hiden": 8}}, "unknown key(s) 'hiden' in FILE [sweep] [train]"),
    ({"analysis": {"seed": 1}}, "unknown key(s) 'seed' in FILE [analysis]; valid keys: hidden, seed_clips, seed_seconds, max_clips"),
    ({"analysis": {"seed_seconds": -1.0}}, "seed_seconds: must be a finite number > 0"),
    ({"analysis.slurm": {"time_min": 0}}, "slurm.time_min: must be >= 1"),
    ({"analysis.slurm": {"gpus_per_node": 1}}, "FILE [analysis.slurm]: gpus_per_node=1, but the analysis runs on the CPU"),
])
def test_bad_pipeline_files_name_the_file_and_key(corpus, tmp_path, change, needle):
    f = write(tmp_path / "p.toml", tiny_tables(corpus, **change))
    with pytest.raises(ConfigError) as e:
        pipeline.load_pipeline(f, tmp_path / "out")
    assert needle.replace("FILE", str(f)).replace("OUT", str(tmp_path / "out")) in str(e.value)


@pytest.mark.parametrize("overrides, needle", [
    (["epochs=3"], "override epochs=3: expected corpus.ARTIST, preprocess.KEY"),
    (["sweep.data=/x"], "sweep.data: the pipeline's dataset is"),
    (["preprocess.nope=1"], "unknown key(s) 'nope' in the command line (preprocess.)"),
    (["sweep.hiden=3"], "unknown key(s) 'hiden' in the command line"),
    (["analysis.slurm.mem_gb=zero"], "mem_gb: expected float, got 'zero'"),
])
def test_bad_overrides(corpus, tmp_path, overrides, needle):
    f = write(tmp_path / "p.toml", tiny_tables(corpus))
    with pytest.raises(ConfigError) as e:
        pipeline.load_pipeline(f, tmp_path / "out", overrides)
    assert needle in str(e.value)


def test_overrides_and_a_sweep_file(corpus, data, tmp_path):
    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text(toml({"": {"data": str(data)}, "train": {"epochs": 5, "hidden": 8}, "grid": {"cell": ["gru"]}}))
    f = write(tmp_path / "p.toml", tiny_tables(corpus, **{"": {"sweep": str(sweep_file)}, "sweep.train": None,
                                                          "sweep.grid": None, "sweep.slurm": None}))
    pl = pipeline.load_pipeline(f, tmp_path / "out", ["corpus.aurora=" + str(corpus / "circuit"), "preprocess.jobs=3",
                                                      "preprocess.slurm.mem_gb=3", "sweep.epochs=2", "sweep.slurm.nodes=1",
                                                      "analysis.seed_clips=0", "analysis.slurm.cpus_per_task=3"])
    assert pl.corpus["aurora"] == corpus / "circuit" and pl.options.jobs == 3 and pl.preprocess_slurm.mem_gb == 3
    assert pl.preprocess.block_size == 64 and pl.preprocess_slurm.cpus_per_task == 1
    assert [r.name for r in pl.sweep.runs] == ["gru"] and pl.sweep.runs[0].config["epochs"] == 2
    assert pl.sweep.data == str(tmp_path / "out" / "data")  # the sweep file's data is replaced
    assert pl.analysis.seed_clips == 0 and pl.analysis_slurm.cpus_per_task == 3
    assert pl.analysis_slurm.time_min == 10  # from the file; other keys from ANALYSIS_SLURM_DEFAULTS


@pytest.mark.parametrize("name, runs", [("pipeline_demo.toml", 40), ("pipeline_paper.toml", 16)])
def test_the_example_pipeline_files_load(tmp_path, monkeypatch, name, runs):
    jobs = Path(__file__).parent.parent / "jobs"
    monkeypatch.chdir(jobs.parent)  # (their relative paths are relative to the current directory)
    raw = read_file(jobs / name)
    dirs = [f"corpus.{a}={tmp_path}" for a in raw["corpus"]]
    pl = pipeline.load_pipeline(jobs / name, tmp_path / "out", dirs)
    assert len(pl.sweep.runs) == runs and pl.options.jobs >= 2 and pl.preprocess.block_size == 11025
    assert pl.sweep.data == str(tmp_path / "out" / "data")


def test_cli_errors_are_one_line(corpus, tmp_path):
    f = write(tmp_path / "p.toml", tiny_tables(corpus, preprocess={"jobs": "two"}))
    r = subprocess.run([sys.executable, "-m", "gruv_hpc.cli", "pipeline", "submit", str(f), "--out", str(tmp_path / "o"),
                        "--executor", "local"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == ["gruv: error: jobs: expected int, got 'two'"]
    assert not (tmp_path / "o").exists()
    r = subprocess.run([sys.executable, "-m", "gruv_hpc.cli", "pipeline", "status", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "not a pipeline directory" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------------
# The sweep against the planned dataset

def test_the_sweep_is_validated_against_the_planned_dataset_before_anything_is_queued(corpus, tmp_path):
    out = tmp_path / "out"
    for change, err, needle in [
        ({"sweep.grid": {"artists": [["aurora"], ["nobody"]]}}, DatasetError, "run nobody: artist(s) nobody not in the dataset; it has: aurora, circuit"),
        ({"sweep.train": {"epochs": 1, "sample_rate": 16000}}, DatasetError, "dataset parameter 'sample_rate' is 8000, but the"),
        # (2 tasks: 3 would be refused first, by the resource check, on the local 2-CPU node)
        ({"sweep.slurm": {**SLURM_SMALL, "tasks_per_node": 2},
          "sweep.train": {"epochs": 1, "hidden": 8, "batch_size": 3, "workers": 0, "gen_seconds": 0.0}},
         ConfigError, "batch_size: 3 is not divisible by the 2"),
    ]:
        f = write(tmp_path / "p.toml", tiny_tables(corpus, **change))
        with pytest.raises(err, match=needle.replace("(", r"\(").replace(")", r"\)")):
            pipeline.submit(f, out, executor="slurm", say=lambda *a: None)  # (refused before Slurm is asked anything)
        assert not BuildPaths(out / "data").staging.exists() and not (out / "data").exists()
        assert pipeline.load_state(PipelinePaths(out)).submissions == []  # (typed: PipelineState)


def test_planned_and_built_datasets_resolve_runs_alike(corpus, tmp_path):
    """What the sweep validates against before the dataset exists is what training resolves against."""
    out = tmp_path / "out"
    f = write(tmp_path / "p.toml", tiny_tables(corpus, **{"sweep.grid": {"artists": [["aurora"], ["circuit"]]}}))
    pl = pipeline.load_pipeline(f, out)
    pre, planned = pipeline._preprocess_plan(pl, PipelinePaths(out), "local")
    assert pre["state"] == "build" and planned["artists"] == ["aurora", "circuit"]
    pipeline._validate_sweep(pl, PipelinePaths(out), "local", planned)
    before = [r.config for r in pl.sweep.runs]
    pipeline._preprocess_run(pl, PipelinePaths(out), pre, "local", False, lambda *a: None)
    real = pipeline.load_pipeline(f, out)
    sw.validate(real.sweep, out / "sweep", "local")
    assert [r.config for r in real.sweep.runs] == before
    assert before[0]["feature_dim"] == load_manifest(out / "data")["params"]["feature_dim"] == 128
    assert pipeline._preprocess_plan(pl, PipelinePaths(out), "local") == ({"state": "complete"}, None)


# ---------------------------------------------------------------------------------------------
# Local executor: the stages in order, in the foreground

def test_local_pipeline_end_to_end_and_resubmission(corpus, data, tmp_path):
    out = tmp_path / "out"
    paths = PipelinePaths(out)
    f = write(tmp_path / "p.toml", tiny_tables(corpus))
    said = []
    sub = pipeline.submit(f, out, executor="local", progress=False, say=said.append)
    assert sub["preprocess"] == {"state": "built", "tasks": 2, "ran": [0, 1]}
    assert sorted(sub["train"]["submitted"]) == ["gru", "lstm"] and not sub["train"]["failed"]
    assert sub["analysis"]["ran"] and paths.report_index.is_file()
    assert load_manifest(paths.data)["summary"]["tasks"] == 2
    st = pipeline.status(out)
    assert (st["preprocess"]["state"], st["train"]["state"], st["analysis"]["state"]) == ("COMPLETED",) * 3
    assert st["train"]["by_state"] == {"COMPLETED": 2} and st["preprocess"]["tasks_done"] == 2
    made = paths.report_index.stat().st_mtime_ns
    dataset = paths.data.stat().st_ino, (paths.data / "manifest.json").stat().st_mtime_ns

    # Again: nothing is redone.
    sub = pipeline.submit(f, out, executor="local", progress=False, say=said.append)
    assert sub["preprocess"] == {"state": "complete"} and sub["train"]["submitted"] == []
    assert sub["analysis"] == {"skipped": "the report is up to date"}
    assert paths.report_index.stat().st_mtime_ns == made
    assert (paths.data.stat().st_ino, (paths.data / "manifest.json").stat().st_mtime_ns) == dataset

    # More epochs: the runs continue, the report is made again; the dataset stays.
    sub = pipeline.submit(f, out, executor="local", overrides=["sweep.epochs=2"], progress=False, say=said.append)
    assert sub["preprocess"] == {"state": "complete"} and sorted(sub["train"]["submitted"]) == ["gru", "lstm"]
    assert sub["analysis"]["ran"] and paths.report_index.stat().st_mtime_ns > made
    assert (paths.data.stat().st_ino, (paths.data / "manifest.json").stat().st_mtime_ns) == dataset

    # A missing report alone is made again.
    shutil.rmtree(paths.report)
    sub = pipeline.submit(f, out, executor="local", overrides=["sweep.epochs=2"], progress=False, say=said.append)
    assert sub["train"]["submitted"] == [] and sub["analysis"] == {"ran": True, "why": "no report yet"}
    assert paths.report_index.is_file() and not list(paths.root.glob(".report.staging*"))

    # Another corpus for the same DIR is refused: its runs were trained on this dataset.
    f2 = write(tmp_path / "p2.toml", tiny_tables(corpus, corpus={"aurora": str(corpus / "aurora")}))
    with pytest.raises(DatasetError, match="other songs or parameters.*another --out"):
        pipeline.submit(f2, out, executor="local", progress=False, say=said.append)

    r = subprocess.run([sys.executable, "-m", "gruv_hpc.cli", "pipeline", "status", str(out), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    js = json.loads(r.stdout)
    assert js["analysis"]["report"] == str(paths.report_index) and js["train"]["runs"] == 2
    r = subprocess.run([sys.executable, "-m", "gruv_hpc.cli", "pipeline", "status", str(out)], capture_output=True, text=True)
    assert "train       COMPLETED     2 run(s): 2 COMPLETED" in r.stdout, r.stdout


# ---------------------------------------------------------------------------------------------
# On the local Slurm cluster: three stages queued at once

def _script(folder: Path, job: str) -> str:
    return (folder / f"{job.split('_')[0]}_submission.sh").read_text()


@pytest.mark.slurm
def test_slurm_pipeline_queues_three_stages_and_ends_with_a_report(corpus, data, tmp_path):
    out = tmp_path / "out"
    paths = PipelinePaths(out)
    f = write(tmp_path / "p.toml", tiny_tables(corpus))
    t0 = time.time()
    sub = pipeline.submit(f, out, executor="slurm", say=lambda *a: None)
    submit_s = time.time() - t0
    pre, train, an = sub["preprocess"], sub["train"], sub["analysis"]
    assert pre["state"] == "submitted" and sorted(pre["tasks"]) == ["0", "1"]
    assert f"#SBATCH --dependency=afterok:{pre['array']}" in _script(paths.logs, pre["merge"])
    assert sorted(train["submitted"]) == ["gru", "lstm"] and train["dependency"] == f"afterok:{pre['merge']}"
    arrays = {j.split("_")[0] for j in train["job_ids"]}
    assert len(arrays) == 1
    assert f"#SBATCH --dependency=afterok:{pre['merge']}" in _script(paths.sweep.logs, train["job_ids"][0])
    assert an["dependency"] == f"afterany:{arrays.pop()},afterok:{pre['merge']}"
    assert f"#SBATCH --dependency={an['dependency']}" in _script(paths.logs, an["job"])
    for _ in range(60):  # the analysis waits for the training arrays: Slurm says so, and so does the status
        st = pipeline.status(out)
        if st["analysis"]["job_reason"] == "Dependency":
            break
        time.sleep(0.5)
    assert (st["analysis"]["job_state"], st["analysis"]["job_reason"]) == ("PENDING", "Dependency"), st
    assert f"job {an['job']} PENDING (Dependency)" in pipeline.format_status(st)
    st = pipeline.wait(out, poll_s=1, timeout_s=400)
    assert (st["preprocess"]["state"], st["train"]["state"], st["analysis"]["state"]) == ("COMPLETED",) * 3, st
    assert paths.report_index.is_file() and st["analysis"]["job_state"] == "COMPLETED"
    runs = sw.load_state(paths.sweep.root)
    for name in ("lstm", "gru"):
        cfg = json.loads(runs.run_paths(name).config.read_text())
        assert cfg["dataset"]["id"] and cfg["config"]["feature_dim"] == 128  # resolved against the real dataset
    # Resubmitting: every stage is done.
    again = pipeline.submit(f, out, executor="slurm", say=lambda *a: None)
    assert again["preprocess"] == {"state": "complete"} and again["train"]["submitted"] == []
    assert again["analysis"] == {"job": None, "skipped": "the report is up to date"}
    print(f"submission of the three stages: {submit_s:.1f} s")


def test_status_line_says_why_runs_wait():
    st = {"dir": "/p", "executor": "slurm", "submitted": 0.0, "submissions": 1,
          "preprocess": {"state": "RUNNING", "tasks_done": 1, "tasks_total": 2, "merge_job": "8", "merge_state": "PENDING",
                         "merge_reason": "Dependency", "dataset": "/p/data"},
          "train": {"state": "PENDING", "runs": 3, "by_state": {"PENDING": 3},
                    "pending_reasons": {"Dependency": 2, "Resources": 1}},
          "analysis": {"state": "PENDING", "job": "10", "job_state": "PENDING", "job_reason": "Dependency",
                       "report": "/p/report/index.html", "report_exists": False, "stale": None}}
    lines = pipeline.format_status(st).splitlines()
    assert lines[1].endswith("merge job 8 PENDING (Dependency); /p/data")
    assert lines[2].endswith("3 run(s): 3 PENDING (2 Dependency, 1 Resources)")
    assert "job 10 PENDING (Dependency); report" in lines[3]


@pytest.mark.slurm
def test_slurm_pipeline_resumes_after_its_preprocessing_was_cancelled(corpus, tmp_path):
    """The preprocess tasks are cancelled before they start: the merge, the training array and the
    analysis can never run, so Slurm cancels them (--kill-on-invalid-dep) and status and wait say
    why. Resubmitting runs the preprocessing again, and ends with a report."""
    out = tmp_path / "out"
    paths = PipelinePaths(out)
    held = tiny_tables(corpus, **{"preprocess.slurm.additional": {"begin": "now+600"}})  # (sbatch --begin)
    f = write(tmp_path / "p.toml", held)
    first = pipeline.submit(f, out, executor="slurm", say=lambda *a: None)
    subprocess.run(["scancel", first["preprocess"]["array"]], check=True)
    for _ in range(100):
        st = pipeline.status(out)
        if st["preprocess"]["state"] == "FAILED":
            break
        time.sleep(0.3)
    assert st["preprocess"]["state"] == "FAILED"
    for _ in range(100):  # its dependants are cancelled, not left PENDING forever
        st = pipeline.status(out)
        if st["train"]["by_state"] == {"CANCELLED": 2}:
            break
        time.sleep(0.3)
    assert st["train"]["by_state"] == {"CANCELLED": 2}, st
    assert "the preprocessing failed" in st["train"]["note"] and "the preprocessing failed" in st["analysis"]["note"]
    assert "(not yet)" not in pipeline.format_status(st) or "preprocessing failed" in pipeline.format_status(st)
    said = []
    assert pipeline.wait(out, poll_s=1, say=said.append)["preprocess"]["state"] == "FAILED"  # wait does not hang on it
    assert any("train and analysis: cancelled" in s and "preprocessing failed" in s for s in said), said
    f = write(tmp_path / "p.toml", tiny_tables(corpus))
    again = pipeline.submit(f, out, executor="slurm", say=lambda *a: None)
    assert again["preprocess"]["state"] == "submitted" and sorted(again["train"]["submitted"]) == ["gru", "lstm"]
    from gruv_hpc.cluster.slurm import job_states
    old = [first["preprocess"]["merge"], *first["train"]["job_ids"], first["analysis"]["job"]]
    for _ in range(60):  # the accounting database can take a moment to list a job cancelled while pending
        infos = job_states(old)
        if {infos[j].state if j in infos else None for j in old} == {"CANCELLED"}:
            break
        time.sleep(0.5)
    assert {infos[j].state if j in infos else None for j in old} == {"CANCELLED"}, infos
    st = pipeline.wait(out, poll_s=1, timeout_s=400)
    assert (st["preprocess"]["state"], st["train"]["state"], st["analysis"]["state"]) == ("COMPLETED",) * 3, st
    assert paths.report_index.is_file()
