import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from gruv_hpc.errors import GenerationError
from gruv_hpc.generation import (generate, generate_refeed, generate_stateful, load_run, loop_stats, rms_db, seed_features, spectral_flatness)


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
    import gruv_hpc.generation.synthesis as g
    monkeypatch.setattr(g, "to_audio", lambda run, feats, seed_audio=None: np.full(len(feats) * 64, 3.0, np.float32))
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


# ---------------------------------------------------------------------------------------------
# Diagnostics a listener would agree with, checked against the WAV itself

def _independent_click_ratio(x: np.ndarray, hop: int) -> float:
    """Written out here, not taken from gruv_hpc: mean |step| at n = k*hop - 1 -> k*hop over the rest."""
    at, rest = [], []
    for n in range(len(x) - 1):
        (at if (n + 1) % hop == 0 else rest).append(abs(float(x[n + 1]) - float(x[n])))
    return (sum(at) / len(at)) / (sum(rest) / len(rest))


def _independent_rms_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(np.asarray(x, np.float64) ** 2))


@pytest.mark.parametrize("kind", ["clicky", "smooth", "model"])
def test_sidecar_diagnostics_agree_with_the_wav(trained_run, tmp_path, monkeypatch, kind):
    """click_ratio and level_change_db in the sidecar against a measurement of the written WAVs
    (the continuation and the seed, read back with soundfile): a continuation whose blocks jump at
    every edge, a smooth one, and the model's own."""
    import gruv_hpc.generation.synthesis as g
    rng = np.random.default_rng(1)
    if kind != "model":
        def to_audio(run, feats, seed_audio=None):
            n = len(feats) * 64
            t = np.arange(n) / 8000
            x = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(n)
            if kind == "clicky":  # a different offset on each 64-sample block: a step at each edge
                x = x + np.repeat(rng.uniform(-0.3, 0.3, len(feats)), 64)
            return x.astype(np.float32)
        monkeypatch.setattr(g, "to_audio", to_audio)
    wav, seed_wav = tmp_path / "c.wav", tmp_path / "c_seed.wav"
    side = generate(trained_run, wav, seed_seconds=0.32, length_ratio=3, seed_out=seed_wav)
    d = side["diagnostics"]
    x, sr = sf.read(wav)
    s, _ = sf.read(seed_wav)
    assert sr == 8000 and len(x) == 3 * 40 * 64
    assert d["click_ratio"] == pytest.approx(_independent_click_ratio(x, 64), rel=0.02)
    assert d["seed_click_ratio"] == pytest.approx(_independent_click_ratio(s, 64), rel=0.02)
    assert d["level_change_db"] == pytest.approx(_independent_rms_db(x) - _independent_rms_db(s), abs=0.05)
    if kind == "clicky":
        assert d["click_ratio"] > 5
    elif kind == "smooth":
        assert 0.8 < d["click_ratio"] < 1.2
    assert json.loads(wav.with_suffix(".json").read_text())["diagnostics"]["click_ratio"] == d["click_ratio"]


def test_click_ratio_of_stft_continuations_is_every_hop(corpus, tmp_path):
    """Overlapping frames: the boundaries are every hop, and the sidecar says so from the WAV."""
    from conftest import preprocess_tiny, tiny_config
    from gruv_hpc.training.trainer import main
    data = tmp_path / "stft"
    preprocess_tiny(corpus, data, transform="stft")
    main(tiny_config(data, epochs=1, limit_train_batches=4), tmp_path / "run")
    side = generate(tmp_path / "run", tmp_path / "g.wav", seed_seconds=0.16, length_ratio=2)
    x, _ = sf.read(tmp_path / "g.wav")
    assert side["diagnostics"]["frame_hop"] == 32
    assert side["diagnostics"]["click_ratio"] == pytest.approx(_independent_click_ratio(x, 32), rel=0.02)


def test_click_ratio_and_music_band_on_synthetic_signals():
    from scipy.signal import butter, sosfilt
    from gruv_hpc.generation import click_ratio, music_band
    rng = np.random.default_rng(0)
    sr, hop = 8000, 64
    t = np.arange(sr) / sr
    smooth = np.sin(2 * np.pi * 300 * t)
    steps = np.repeat(rng.uniform(-1, 1, sr // hop), hop)
    assert 0.95 < click_ratio(smooth, hop) < 1.05
    assert click_ratio(smooth + steps, hop) > 4  # steps of ~0.67 on a sine whose own steps are ~0.15
    assert click_ratio(smooth + np.roll(steps, 5), hop) < 1.2  # steps off the frame grid are not frame clicks
    low = sosfilt(butter(8, 1000, fs=sr, output="sos"), rng.standard_normal(4 * sr))
    lo, hi = music_band(low, sr)
    assert lo < 100 and 800 < hi < 1300
    # noise inside its band is flat there, and only there
    assert spectral_flatness(low, sr, band_hz=(lo, hi)) > 0.5 > spectral_flatness(low, sr)


def test_nearest_train_finds_a_copied_clip(trained_run, monkeypatch):
    import gruv_hpc.generation.measures as g
    from gruv_hpc.generation import nearest_train
    # every train frame in the pool, so the copied clip is surely in it (by default: a random subsample)
    monkeypatch.setattr(g, "NEAREST_CLIPS", 10**6)
    monkeypatch.setattr(g, "NEAREST_FRAMES", 10**7)
    run = load_run(trained_run)
    train = run.data.split("train", normalize=False)
    k = len(train) // 2
    copy = ((train.features(k) - run.mean) / run.std).astype(np.float32)
    near = nearest_train(run, copy)
    song = train.manifest["songs"][int(train.index.song_of_clip[k])]["path"]
    start = run.transform.seconds(int(train.index.clip_of_song[k]) * run.cfg.clip_blocks, run.cfg.sample_rate)
    assert near["song"] == song
    assert start <= near["offset_s"] <= start + run.transform.seconds(run.cfg.clip_blocks, run.cfg.sample_rate)
    assert near["distance"] < 1e-3 and near["relative"] < 0.5 and near["dev_train_distance"] > 0 and near["copying"]
    # a dev clip (music the model never saw) is about as far as the typical dev-train distance
    dev = run.data.split("dev", normalize=False)
    other = nearest_train(run, ((dev.features(0) - run.mean) / run.std).astype(np.float32))
    assert other["relative"] > 0.5 and other["distance"] > near["distance"] and not other["copying"]


def test_describe_and_tensorboard_name_the_diagnostics(trained_run, tmp_path):
    from gruv_hpc.generation import describe
    from gruv_hpc.generation.tensorboard import AudioSampler
    from gruv_hpc.training.hooks import EpochEnd
    side = generate(trained_run, tmp_path / "g.wav", seed_seconds=0.32, length_ratio=2)
    d = side["diagnostics"]
    for k in ("click_ratio", "level_change_db", "nearest_train", "loop_onset_s", "flatness", "flatness_band_hz",
              "spectral_distance"):
        assert k in d
    assert set(d["nearest_train"]) >= {"song", "offset_s", "distance", "relative"}
    words = describe(d, 0)
    assert "clicks" in words and "nearest train" in words and "seed's band" in words and " dB)" in words

    class Writer:
        def __init__(self):
            self.tags = {}

        def add_scalar(self, tag, v, step):
            self.tags[tag] = v

        def add_audio(self, *a, **kw):
            pass

        def add_image(self, *a, **kw):
            pass

    w, run = Writer(), load_run(trained_run)
    cfg = run.cfg.__class__(**{**run.cfg.__dict__, "gen_seconds": 0.32})
    numbers = AudioSampler()(EpochEnd(7, 7, run.model, cfg, "cpu", run.data.split("dev", as_blocks=True), w))
    assert set(numbers) >= {"click_ratio", "level_change_db", "loop_fraction", "spectral_distance"}
    for k in ("click_ratio", "level_change_db", "loop_fraction", "nearest_train_distance", "nearest_train_relative"):
        assert k in numbers  # the trainer logs them as generated/<name> (training/hooks.run_hooks)


# ---------------------------------------------------------------------------------------------
# Generation-time noise against loops

def test_generation_noise(trained_run, tmp_path):
    from gruv_hpc.generation import feedback_noise
    run = load_run(trained_run)
    seed, _ = seed_features(run, "dev", 0, 0.32)
    s = torch.from_numpy(seed)
    eps = feedback_noise(30, seed.shape[1], 0.5, seed=3)
    assert eps.shape == (29, seed.shape[1]) and abs(float(eps.std()) - 0.5) < 0.02
    assert feedback_noise(30, seed.shape[1], 0.0) is None
    a, b = generate_stateful(run.model, s, 30, eps), generate_refeed(run.model, s, 30, eps)
    assert (a - b).abs().max() <= 1e-4  # the same noise, fed back the same way by both algorithms
    clean = generate_stateful(run.model, s, 30)
    assert torch.equal(a[0], clean[0])  # the first block comes before any fed-back prediction
    assert (a[1:] - clean[1:]).abs().max() > 1e-3
    # the model's input is the prediction plus the noise: the refeed's second block from prediction 1 + eps[0]
    p2, _ = run.model(torch.cat([s, (clean[:1] + eps[:1])]).unsqueeze(0))
    assert torch.allclose(p2[0, -1], a[1], atol=1e-5)
    off = generate(trained_run, tmp_path / "off.wav", seed_seconds=0.32, length_ratio=2)
    on = generate(trained_run, tmp_path / "on.wav", seed_seconds=0.32, length_ratio=2, noise=0.5, noise_seed=3)
    assert off["noise"] == 0 and on["noise"] == 0.5 and on["noise_seed"] == 3
    x_off, _ = sf.read(tmp_path / "off.wav")
    assert not np.array_equal(x_off, sf.read(tmp_path / "on.wav")[0])
    with pytest.raises(GenerationError, match="noise"):
        generate(trained_run, tmp_path / "x.wav", noise=-1)


def test_cli_generate_noise(trained_run, tmp_path):
    from gruv_hpc.cli import main
    assert main(["generate", str(trained_run), "--out", str(tmp_path / "n.wav"), "--seed-seconds", "0.2",
                 "--noise", "0.3", "--noise-seed", "5"]) == 0
    side = json.loads((tmp_path / "n.json").read_text())
    assert side["noise"] == 0.3 and side["noise_seed"] == 5


def test_figure3_reads_the_stft_spectrum_of_the_audio(corpus, tmp_path):
    """Figure 3's truth (and so the report's band) comes through the dataset's transform: with stft,
    each frame's magnitude is |rfft| of the sqrt-Hann-windowed audio a hop apart, computed here
    from the song itself."""
    from scipy.signal import get_window
    from conftest import preprocess_tiny
    from gruv_hpc.analysis.fig3_spectrogram import truth_mean_magnitude
    from gruv_hpc.dataset.audio import load_mono
    from gruv_hpc.dataset.clips import ClipDataset
    data = tmp_path / "stft"
    preprocess_tiny(corpus, data, transform="stft")
    ds = ClipDataset(data, "dev")
    m = truth_mean_magnitude(ds, max_clips=1)  # frames 1..C of dev clip 0
    song = ds.manifest["songs"][int(ds.index.song_of_clip[0])]
    audio = load_mono(song["path"], 8000).astype(np.float64)
    start = int(ds.index.clip_of_song[0]) * 8 * 32  # clip_blocks 8, hop 32
    w = np.sqrt(get_window("hann", 64, fftbins=True))
    assert m.shape == (8, 33)
    for t in (1, 2, 5):
        frame = audio[start + t * 32: start + t * 32 + 64]
        np.testing.assert_allclose(m[t - 1], np.abs(np.fft.rfft(w * frame)), rtol=1e-3, atol=1e-4)


def test_temperature_samples_around_the_prediction(trained_run, tmp_path, monkeypatch):
    """T = 0 is the mean prediction bitwise; T > 0 feeds back and keeps samples whose spread per
    dimension is T x the train residual std, the same for the same seed, other for another."""
    import torch

    import gruv_hpc.generation.command as command
    from gruv_hpc.generation.command import train_residual_std
    monkeypatch.setattr(command, "RESIDUAL_CLIPS", 10**6)  # every train clip, as the check below takes
    run = load_run(trained_run)
    plain = generate(trained_run, tmp_path / "p.wav", seed_seconds=0.32, length_ratio=2, float32=True, run=run)
    zero = generate(trained_run, tmp_path / "z.wav", seed_seconds=0.32, length_ratio=2, float32=True, run=run,
                    temperature=0.0)
    assert np.array_equal(sf.read(tmp_path / "p.wav")[0], sf.read(tmp_path / "z.wav")[0])
    assert zero["temperature"] == 0 and plain["residual_std_mean"] is None
    hot = generate(trained_run, tmp_path / "h.wav", seed_seconds=0.32, length_ratio=2, float32=True, run=run,
                   temperature=1.0, noise_seed=3)
    again = generate(trained_run, tmp_path / "h2.wav", seed_seconds=0.32, length_ratio=2, float32=True, run=run,
                     temperature=1.0, noise_seed=3)
    other = generate(trained_run, tmp_path / "h3.wav", seed_seconds=0.32, length_ratio=2, float32=True, run=run,
                     temperature=1.0, noise_seed=4)
    h = sf.read(tmp_path / "h.wav")[0]
    assert np.array_equal(h, sf.read(tmp_path / "h2.wav")[0]) and not np.array_equal(h, sf.read(tmp_path / "h3.wav")[0])
    assert not np.allclose(h, sf.read(tmp_path / "p.wav")[0])
    std = train_residual_std(run)
    assert hot["residual_std_mean"] == pytest.approx(float(std.mean())) and other["temperature"] == 1.0
    assert again["noise_seed"] == 3 and other["noise_seed"] == 4
    # the residual, measured independently: teacher-forced predictions of every train clip
    train = run.data.split("train", normalize=False)
    res = []
    for i in range(len(train)):
        f = torch.from_numpy(((train.features(i) - run.mean) / run.std).astype(np.float32))[None]
        with torch.no_grad():
            p, _ = run.model(f, drop_last=True)
        res.append((p - f[:, 1:])[0].numpy())
    assert np.allclose(std.numpy(), np.sqrt(np.mean(np.concatenate(res) ** 2, 0)), rtol=1e-4)
    with pytest.raises(GenerationError, match="give one"):
        generate(trained_run, tmp_path / "x.wav", run=run, seed_seconds=0.32, noise=0.1, temperature=1.0)
    with pytest.raises(GenerationError, match="--temperature"):
        generate(trained_run, tmp_path / "x.wav", run=run, seed_seconds=0.32, temperature=float("nan"))


def test_loops_are_set_in_seconds_so_overlapping_frames_are_not_loops():
    """A slowly turning spectrum at a 16 ms hop: each frame is within cosine 0.95 of its neighbours
    (they overlap), never of a frame 0.25 s back: no loop. The same frames repeated with a period
    of 1 s: a loop. On the paper's 0.25 s blocks the counts are the old ones (8 steps, lag 1)."""
    from gruv_hpc.generation.measures import loop_steps
    assert loop_steps(0.25) == {"min_run": 8, "min_lag": 1}
    step = 256 / 16000
    n, dim = 400, 64
    angle = np.arange(n) * 0.02  # neighbours: cosine 0.9998; 16 steps (0.25 s) apart: turned on
    turning = np.stack([np.cos(angle[:, None] * (1 + np.arange(dim)[None, :] / 8))], 0)[0]
    assert loop_stats(turning)["loop_onset_step"] is not None  # step by step, the old rule calls it a loop
    assert loop_stats(turning, **loop_steps(step))["loop_onset_step"] is None
    period = int(round(1.0 / step))
    repeated = np.concatenate([turning[:period]] * 6)
    assert loop_stats(repeated, **loop_steps(step))["loop_onset_step"] == period


@pytest.mark.parametrize("value", [str(2 ** 64), str(2 ** 63), "-1"])
def test_a_noise_seed_the_generator_cannot_take_is_one_line(tmp_path, value):
    """Issue 32 L1: --noise-seed beyond the generator's range was a traceback; it is one line naming
    the option, checked once, in generate (which the command and the analysis both call)."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "gruv_hpc.cli", "generate", str(tmp_path / "run"), "--out",
                        str(tmp_path / "g.wav"), "--noise-seed", value], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"gruv: error: --noise-seed must be in [0, 2^63), got {value}"
