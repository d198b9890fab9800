"""The report's continuations can be sampled (issue 30: temperature-1 continuations on the
listening page): ``gruv analyze --temperature`` / the pipeline's ``[analysis] temperature`` hand
the temperature to gruv generate; the page and summary.json say which it was."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from conftest import tiny_config
from gruv_hpc.errors import ConfigError


@pytest.fixture(scope="module")
def one_run(data, tmp_path_factory):
    from gruv_hpc.training.trainer import main
    run = tmp_path_factory.mktemp("temp") / "aurora-lstm"
    main(tiny_config(data, epochs=2, limit_train_batches=2, artists=["aurora"], predict="delta"), run)
    return run, [{"name": run.name, "state": "COMPLETED", "error": None, "run_dir": str(run),
                  "config": json.loads((run / "config.json").read_text())["config"], "grid": {"artists": ["aurora"]}}]


def test_sampled_continuations_in_the_report(one_run, tmp_path):
    from gruv_hpc.analysis.report import analyze
    from gruv_hpc.generation import generate, load_run
    run, listing = one_run
    kw = dict(n_seed_clips=1, seed_seconds=0.16, max_clips=4, log=lambda *a: None)
    mean = analyze("sweep", tmp_path / "t0", listing, **kw)
    hot = analyze("sweep", tmp_path / "t1", listing, temperature=1.0, **kw)
    assert mean["generation"]["temperature"] == 0.0 and hot["generation"]["temperature"] == 1.0
    clip = hot["audio"][run.name]["clips"][0]
    assert clip["temperature"] == 1.0
    w0 = sf.read(tmp_path / "t0" / mean["audio"][run.name]["clips"][0]["wav"])[0]
    w1 = sf.read(tmp_path / "t1" / clip["wav"])[0]
    assert w0.shape == w1.shape and not np.array_equal(w0, w1)  # sampled, not the mean prediction
    # the same continuation gruv generate makes at that temperature, its draws seeded by the clip's index
    k = clip["seed_index"]
    lr = load_run(run)
    secs = min(0.16, lr.transform.seconds(lr.cfg.clip_blocks, lr.cfg.sample_rate))  # the analysis' seed: at most a clip
    side = generate(run, tmp_path / "direct.wav", run=lr, seed_seconds=secs, seed_from="dev", seed_index=k, temperature=1.0,
                    noise_seed=k)
    assert side["temperature"] == 1.0 and np.array_equal(sf.read(tmp_path / "direct.wav")[0], w1)
    assert "sampled at temperature 1</b>" in (tmp_path / "t1" / "listen.html").read_text()
    assert "<b>mean predictions</b>" in (tmp_path / "t0" / "listen.html").read_text()


def test_a_bad_temperature_is_refused_by_name(one_run, tmp_path):
    from gruv_hpc.analysis.report import analyze
    from gruv_hpc.cluster.pipeline import AnalysisConfig
    _, listing = one_run
    for t in (-1.0, float("nan")):
        with pytest.raises(ConfigError, match="temperature: must be a finite number >= 0"):
            analyze("sweep", tmp_path / "bad", listing, temperature=t)
        with pytest.raises(ConfigError, match="temperature: must be a finite number >= 0"):
            AnalysisConfig(temperature=t).validate()
    assert not (tmp_path / "bad").exists()
