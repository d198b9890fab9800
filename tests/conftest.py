"""Shared fixtures: a tiny synthetic corpus and dataset (8 kHz, 64-sample blocks, 8-block clips)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

# A shell starts a background job (`bash .ci/run &`, nohup ... &) with SIGINT ignored, and every
# process it starts inherits that: the tests that send a Ctrl-C to a run, a sweep or a follower
# would then test an ignored signal. They stand for a terminal's foreground job, so the suite's
# processes start with Python's own handler. (tests/test_faults.py tests the inherited case itself.)
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

TINY = dict(sample_rate=8000, block_size=64, clip_blocks=8)


def pytest_collection_modifyitems(config, items):
    # Browser tests need Chromium (tests/run.sh installs Debian's); GRUV_REQUIRE_BROWSER=1 (CI)
    # makes a missing one a failure, not a skip.
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        for item in items:
            if item.get_closest_marker("browser"):
                if os.environ.get("GRUV_REQUIRE_BROWSER") == "1":
                    item.add_marker(pytest.mark.xfail(reason="Chromium is required but not installed", strict=True,
                                                      run=False))
                else:
                    item.add_marker(pytest.mark.skip(reason="no Chromium (apt-get install chromium)"))
    # Slurm tests need the local cluster (tests/run.sh starts it). Where it is required
    # (GRUV_REQUIRE_SLURM=1, as in CI) a missing cluster is a failure, not a skip.
    up = shutil.which("sinfo") and subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0
    if up:
        return
    for item in items:
        if "slurm" in item.keywords:
            if os.environ.get("GRUV_REQUIRE_SLURM") == "1":
                item.add_marker(pytest.mark.xfail(reason="local Slurm is required but not running", strict=True, run=False))
            else:
                item.add_marker(pytest.mark.skip(reason="no local Slurm cluster (slurm/cluster.sh start)"))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    from gruv_hpc.dataset.synth import make_corpus
    d = tmp_path_factory.mktemp("corpus")
    make_corpus(d, songs_per_artist=3, min_s=6, max_s=9, seed=1)
    return d


def preprocess_tiny(corpus: Path, out: Path, **kw):
    from gruv_hpc.dataset.build import PreprocessConfig, parse_sources, preprocess
    cfg = PreprocessConfig(**{**TINY, **kw})
    return preprocess(parse_sources([f"aurora={corpus / 'aurora'}", f"circuit={corpus / 'circuit'}"]), out, cfg, progress=False)


@pytest.fixture(scope="session")
def data(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "ds"
    preprocess_tiny(corpus, out)
    return out


def tiny_config(data: Path, **kw):
    from gruv_hpc.training.config import TrainConfig
    from gruv_hpc.config import build
    base = dict(data=str(data), hidden=8, epochs=2, batch_size=4, workers=0, gen_seconds=0.0, log_every_steps=5,
                limit_train_batches=12)
    base.update(kw)
    return build(TrainConfig, base)


@pytest.fixture(scope="session")
def trained_run(data, tmp_path_factory) -> Path:
    """A tiny LSTM trained for a few epochs, shared by the generation and analysis tests."""
    from gruv_hpc.training.trainer import main
    run = tmp_path_factory.mktemp("runs") / "lstm"
    main(tiny_config(data, epochs=3, hidden=12), run)
    return run


def write_sweep(path: Path, data, train: dict, grid: dict, slurm: dict | None = None) -> Path:
    """A sweep file with small Slurm resources (the local cluster has 2 cores)."""
    def val(v):
        return json.dumps(v)
    lines = [f"data = {val(str(data))}", "[train]"] + [f"{k} = {val(v)}" for k, v in train.items()]
    lines += ["[grid]"] + [f"{k} = {val(v)}" for k, v in grid.items()]
    lines += ["[slurm]"] + [f"{k} = {val(v)}" for k, v in {"time_min": 10, "cpus_per_task": 1, "mem_gb": 1.0,
                                                          "signal_delay_s": 30, **(slurm or {})}.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def copy_sweep(sw: Path, part: Path) -> Path:
    """A copy of a sweep directory whose state points at the copy's own run directories."""
    shutil.copytree(sw, part)
    state = json.loads((part / "sweep.json").read_text())
    for r in state["runs"].values():
        r["run_dir"] = r["run_dir"].replace(str(sw), str(part))
    (part / "sweep.json").write_text(json.dumps(state))
    return part


def wait_for_checkpoint(run, timeout: float = 120) -> None:
    """Until run directory ``run`` holds a step checkpoint (a Slurm job may queue first)."""
    import time

    from gruv_hpc.paths import RunPaths
    t = time.time()
    while not RunPaths(run).step_ckpts():
        assert time.time() - t < timeout, "no first checkpoint"
        time.sleep(0.1)


def wait_for_epoch(run, n: int = 1, timeout: float = 120) -> None:
    """Until run directory ``run`` has logged ``n`` epochs (a Slurm job may queue first)."""
    import time

    from gruv_hpc.paths import read_jsonl
    t = time.time()
    while len(read_jsonl(Path(run) / "metrics.jsonl")) < n:
        assert time.time() - t < timeout, "training did not get going"
        time.sleep(0.05)
