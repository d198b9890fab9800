import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from gruv_hpc.errors import GenerationError
from gruv_hpc.generate import (generate, generate_refeed, generate_stateful, load_run, loop_stats, rms_db, seed_features, spectral_flatness)


def test_stateful_equals_refeed_on_trained_model(trained_run):
    run = load_run(trained_run)
    seed, _ = seed_features(run, "dev", 0, 8 * 64 / 8000)
    s = torch.from_numpy(seed)
    a = generate_stateful(run.model, s, 24)
    b = generate_refeed(run.model, s, 24)
    assert a.shape == (24, 128)
    assert (a - b).abs().max() <= 1e-4
    # and it is a continuation, not a copy of the seed
    assert (a[: len(seed)] - s[: min(len(seed), 24)]).abs().mean() > 1e-3


def test_generate_writes_wav_and_sidecar(trained_run, tmp_path):
    out = tmp_path / "g.wav"
    side = generate(trained_run, out, seed_seconds=0.32, length_ratio=3)
    audio, sr = sf.read(out)
    assert sr == 8000
    seed_blocks = side["seed"]["blocks"]
    assert seed_blocks == 40
    assert len(audio) == 3 * seed_blocks * 64  # the continuation only
    assert np.all(np.isfinite(audio))
    side2 = json.loads(out.with_suffix(".json").read_text())
    for k in ("run", "checkpoint", "seed", "generated_blocks", "algorithm", "wall_s", "clipped_samples", "diagnostics"):
        assert k in side2
    assert side2["seed"]["source"] == "dev" and side2["seed"]["index"] == 0 and side2["algorithm"] == "stateful"
    for k in ("loop_onset_step", "loop_fraction", "flatness", "seed_flatness", "rms_db", "seed_rms_db"):
        assert k in side2["diagnostics"]
    generate(trained_run, tmp_path / "s.wav", seed_seconds=0.32, length_ratio=3, with_seed=True, float32=True)
    a2, _ = sf.read(tmp_path / "s.wav")
    assert len(a2) == 4 * seed_blocks * 64 and sf.info(tmp_path / "s.wav").subtype == "FLOAT"
    np.testing.assert_allclose(a2[seed_blocks * 64:], audio, atol=2 / 32768)  # same continuation after the seed


def test_clipping_is_reported(trained_run, tmp_path, monkeypatch):
    import gruv_hpc.generate as g
    monkeypatch.setattr(g, "to_audio", lambda run, feats: np.full(len(feats) * 64, 3.0, np.float32))
    side = generate(trained_run, tmp_path / "c.wav", seed_seconds=0.16, length_ratio=1)
    assert side["clipped_samples"] == 20 * 64
    a, _ = sf.read(tmp_path / "c.wav")
    assert a.max() <= 1.0 and a.min() > 0.99  # clipped, never wrapped negative
    side = generate(trained_run, tmp_path / "n.wav", seed_seconds=0.16, length_ratio=1, normalize=True)
    assert side["clipped_samples"] == 0


def test_seed_from_file_other_rate_and_channels(trained_run, tmp_path):
    t = np.arange(22050) / 22050
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t)], 1)
    sf.write(tmp_path / "seed.wav", stereo, 22050)
    side = generate(trained_run, tmp_path / "f.wav", seed_from=str(tmp_path / "seed.wav"), seed_seconds=0.5, length_ratio=2)
    assert side["seed"]["blocks"] == round(0.5 * 8000 / 64)
    assert sf.info(tmp_path / "f.wav").samplerate == 8000


def test_bad_inputs(trained_run, tmp_path):
    with pytest.raises(GenerationError, match="length ratio"):
        generate(trained_run, tmp_path / "x.wav", length_ratio=0)
    with pytest.raises(GenerationError, match="shorter than one frame"):
        generate(trained_run, tmp_path / "x.wav", seed_seconds=0.001)
    sf.write(tmp_path / "tiny.wav", np.zeros(10), 8000)
    with pytest.raises(GenerationError, match="shorter than one frame"):
        generate(trained_run, tmp_path / "x.wav", seed_from=str(tmp_path / "tiny.wav"))
    empty = tmp_path / "empty_run"
    empty.mkdir()
    shutil.copy(trained_run / "config.json", empty / "config.json")
    with pytest.raises(GenerationError, match="no readable checkpoint"):
        generate(empty, tmp_path / "x.wav")
    with pytest.raises(GenerationError, match="not a run directory"):
        generate(tmp_path / "nothing", tmp_path / "x.wav")
    with pytest.raises(GenerationError, match="out of range"):
        generate(trained_run, tmp_path / "x.wav", seed_index=10**6)
    assert not (tmp_path / "x.wav").exists()  # no silent WAV from any of these


def test_loop_detector():
    rng = np.random.default_rng(0)
    random = rng.standard_normal((60, 128))
    s = loop_stats(random)
    assert s["loop_onset_step"] is None and s["loop_fraction"] == 0
    pattern = rng.standard_normal((4, 128))
    looped = np.concatenate([rng.standard_normal((20, 128)), np.tile(pattern, (10, 1))])
    s = loop_stats(looped)
    assert 20 <= s["loop_onset_step"] <= 24 and s["loop_fraction"] > 0.5
    stuck = np.concatenate([random[:10], np.repeat(random[10:11], 20, axis=0)])  # a fixed point
    assert loop_stats(stuck)["loop_onset_step"] is not None


def test_flatness_and_rms():
    rng = np.random.default_rng(0)
    sr = 44100
    noise = rng.standard_normal(sr * 2) * 0.1
    tone = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(sr * 2) / sr)
    assert spectral_flatness(noise, sr) > 0.85
    assert spectral_flatness(tone, sr) < 0.05
    assert abs(rms_db(tone) - 20 * np.log10(0.5 / np.sqrt(2))) < 0.1
    assert rms_db(np.zeros(10)) == float("-inf")


def test_cli_generate(trained_run, tmp_path):
    from gruv_hpc.cli import main
    assert main(["generate", str(trained_run), "--out", str(tmp_path / "c.wav"), "--seed-seconds", "0.2",
                 "--algorithm", "refeed", "--checkpoint", "last"]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["algorithm"] == "refeed"
    assert main(["generate", str(trained_run), "--out", str(tmp_path / "d.wav"), "--length-ratio", "-1"]) == 2


def test_cli_generate_non_audio_seed_is_one_line(trained_run, tmp_path, capsys):
    from gruv_hpc.cli import main
    bad = tmp_path / "bad.wav"
    bad.write_text("this is not audio")
    assert main(["generate", str(trained_run), "--out", str(tmp_path / "o.wav"), "--seed-from", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.wav" in err and "Traceback" not in err


def test_stft_dataset_trains_and_generates_through_the_transform(corpus, tmp_path):
    """The stft transform end to end: the manifest records its hop and window, clips are frames a
    hop apart, training runs, and generation overlap-adds a continuation a hop per frame long."""
    from conftest import preprocess_tiny, tiny_config
    from gruv_hpc.dataset.manifest import load_manifest
    from gruv_hpc.training.trainer import main
    data = tmp_path / "stft"
    preprocess_tiny(corpus, data, transform="stft")
    p = load_manifest(data)["params"]
    assert (p["transform"], p["hop"], p["window"], p["feature_dim"]) == ("stft", 32, "sqrt_hann", 66)
    main(tiny_config(data, epochs=1, limit_train_batches=4), tmp_path / "run")
    side = generate(tmp_path / "run", tmp_path / "g.wav", seed_seconds=0.16, length_ratio=2, with_seed=True)
    audio, sr = sf.read(tmp_path / "g.wav")
    assert side["seed"]["blocks"] == 40 and side["seed"]["seconds"] == pytest.approx(0.16)
    assert side["generated_blocks"] == 80 and side["generated_s"] == pytest.approx(0.32)
    # One sequence of 120 frames a hop apart: its audio spans (120 - 1) hops and one frame.
    assert len(audio) == 119 * 32 + 64 and np.all(np.isfinite(audio))
