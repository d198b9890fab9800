"""The log-magnitude transforms (logmag: Griffin-Lim back; logmag_if: exact back), what their
stored values mean, a dataset built and trained with each, and a transform registered from a test
followed through preprocess, train and generate (the registry is the only place that names one)."""
import json

import numpy as np
import pytest

from conftest import TINY, preprocess_tiny, tiny_config
from gruv_hpc.dataset.transforms import TRANSFORMS, Transform, from_params, get_transform, register


def music(sr=8000, seconds=2.0, seed=0):
    """Two partials, one gliding, and a little noise: phases that move at other than bin centres."""
    t = np.arange(int(sr * seconds)) / sr
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1234.5 * t * (1 + 0.1 * t))
            + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.mark.parametrize("n,hop", [(64, None), (63, None), (256, 128), (2048, None)])
def test_logmag_if_round_trip_is_exact_away_from_the_edges(n, hop):
    tf = get_transform("logmag_if", n, hop)
    assert tf.hop == (hop or n // 4) and tf.feature_dim == tf.storage_dim == 2 * (n // 2 + 1)
    audio = music(seconds=max(1.0, 40 * n / 8000))
    feats = tf.features(audio)
    assert feats.shape == (tf.n_frames(len(audio)), tf.feature_dim) and feats.dtype == np.float32
    inst = feats[:, tf.n_bins:]
    assert inst.min() >= -np.pi and inst.max() < np.pi  # wrapped to [-pi, pi)
    back = tf.synthesize(feats)
    assert len(back) == tf.n_samples(len(feats))
    inner = slice(n, len(back) - n)
    assert np.max(np.abs(back[inner] - audio[inner])) <= 1e-4
    # a build computes rows a batch at a time, each batch reading the frame before it: the same rows
    frames = tf.frames(audio)
    rows = np.concatenate([tf.analyze_rows(frames, s, min(s + 7, len(frames))) for s in range(0, len(frames), 7)])
    np.testing.assert_array_equal(rows, feats)


def test_logmag_values_mean_what_the_transform_says():
    sr, n = 8000, 256
    tone = (0.5 * np.sin(2 * np.pi * 1000 * np.arange(4 * n) / sr)).astype(np.float32)  # 1 kHz = bin 32
    for name in ("logmag", "logmag_if"):
        tf = get_transform(name, n)
        f = tf.features(tone)
        mag = tf.magnitude(f)
        assert mag.shape == (len(f), n // 2 + 1) and int(np.argmax(mag[0])) == 32
        assert tf.frequencies(sr)[32] == 1000.0
        np.testing.assert_allclose(mag, np.abs(tf.spectrum(tf.frames(tone))), rtol=1e-5, atol=1e-5)
        power = np.zeros(tf.n_bins)
        tf.add_power(power, f)
        np.testing.assert_allclose(power, np.square(mag).sum(0))
        assert tf.stored_value_name(32, sr) == ("log|X|", 1000.0)
        assert tf.stored_bound(1.0) < 20 and get_transform("fft", n).stored_bound(1.0) == n  # no float16 worry
        runaway = np.full_like(f[:8], 500.0)  # a drifting model's prediction: exp(500) is no float32
        assert np.isfinite(tf.synthesize(runaway)).all() and np.isfinite(tf.magnitude(runaway)).all()
        with pytest.raises(NotImplementedError, match="stores no phase"):
            tf.to_frames(f)
        with pytest.raises(ValueError, match="values per frame"):
            tf.synthesize(f[:, :-1])
    assert get_transform("logmag_if", n).stored_value_name(n // 2 + 1 + 32, sr) == ("IF", 1000.0)
    # eps: recorded, and read back from what a manifest records, not from today's default
    tf = get_transform("logmag", 2048)
    assert (tf.frame, tf.hop, tf.params()["eps"]) == (2048, 512, 1e-5) and get_transform("logmag").frame == 2048
    other = from_params({**tf.params(), "eps": 1e-3})
    assert other.eps == 1e-3 and other.features(np.zeros(4096, np.float32)).max() == pytest.approx(np.log(1e-3))
    assert "eps" not in get_transform("fft", 64).params()  # the paper's manifest is unchanged


def test_griffin_lim_is_librosas():
    """With librosa's random start and nothing held fixed, our iteration is librosa.griffinlim."""
    import librosa

    from gruv_hpc.dataset.phase import griffin_lim
    tf = get_transform("logmag", 256)
    mag = tf.magnitude(tf.features(music())).T.astype(np.float32)
    ours = tf.inverse_stft(griffin_lim(mag, 256, 64, 4).T)
    theirs = librosa.griffinlim(mag, n_iter=4, hop_length=64, win_length=256, n_fft=256, window="hann", center=False,
                                init="random", random_state=0, length=len(ours))
    inner = slice(256, len(ours) - 256)
    assert np.max(np.abs(ours[inner] - theirs[inner])) <= 1e-5


def test_a_continuation_runs_on_from_the_seeds_own_phases():
    """Given the seed's audio, its frames keep their phases and the next ones start from the last
    of them advanced per bin: the join is the true audio's, where a Griffin-Lim of everything is not."""
    audio = music()
    tf = get_transform("logmag", 256)
    feats = tf.features(audio)
    k, n = 30, 50
    cut = k * tf.hop
    seed = audio[: tf.n_samples(k)]
    rms = lambda a, b: float(np.sqrt(np.mean(np.square(a - b))))  # noqa: E731
    joined = tf.synthesize(feats[:n], seed_audio=seed, n_iter=8)
    free = tf.synthesize(feats[:n], n_iter=8)
    assert len(joined) == len(free) == tf.n_samples(n)
    assert np.max(np.abs(joined[256:cut] - audio[256:cut])) <= 1e-4  # the seed is itself
    near = slice(cut - 64, cut + 64)
    assert rms(joined[near], audio[near]) < 0.02 < rms(free[near], audio[near])
    # logmag_if: a clip from inside a song has lost its phase at the start; the seed gives it back
    tf = get_transform("logmag_if", 256)
    clip = tf.features(audio)[40:100]
    start = 40 * tf.hop
    back = tf.synthesize(clip, seed_audio=audio[start: start + tf.n_samples(10)])
    inner = slice(256, len(back) - 256)
    assert np.max(np.abs(back[inner] - audio[start:][inner])) <= 1e-4
    assert rms(tf.synthesize(clip)[inner], audio[start:][inner]) > 0.01  # without it: one phase per bin off


@pytest.mark.parametrize("name", ["logmag", "logmag_if"])
def test_a_log_magnitude_dataset_builds_trains_and_generates(name, corpus, tmp_path):
    """A tiny preprocess (eps in the manifest, each song's bandwidth from its magnitudes, rows equal
    to the transform's own features of the song), training with predict=delta, and generation."""
    from gruv_hpc.dataset.audio import load_mono
    from gruv_hpc.dataset.clips import ClipDataset
    from gruv_hpc.generation import generate
    from gruv_hpc.training.trainer import main
    out = tmp_path / "ds"
    clip = 32  # 32 frames a hop of 16 apart: as long as the tiny fft dataset's clips, and as few
    preprocess_tiny(corpus, out, transform=name, dtype="float16", clip_blocks=clip)
    m = json.loads((out / "manifest.json").read_text())
    tf = get_transform(name, TINY["block_size"])
    assert m["params"]["eps"] == 1e-5 and m["params"]["feature_dim"] == tf.feature_dim
    assert m["params"]["hop"] == 16 and m["params"]["window"] == "hann"
    assert all(0 < s["bandwidth_hz"] <= 4000 for s in m["songs"])
    train = ClipDataset(out, "train", normalize=False)
    song = m["songs"][int(train.index.song_of_clip[0])]
    assert int(train.index.clip_of_song[0]) == 0
    want = tf.features(load_mono(song["path"], TINY["sample_rate"]))[: clip + 1]
    np.testing.assert_allclose(train.features(0), want, atol=2e-2)  # float16
    run = tmp_path / "run"
    # gen_seconds: the end of training logs a continuation and its spectrogram (magnitude, frequencies)
    from gruv_hpc.generation.tensorboard import training_hooks
    res = main(tiny_config(out, predict="delta", epochs=1, limit_train_batches=3, gen_seconds=0.1), run,
               hooks=training_hooks())
    assert res["status"] == "done"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tb = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "audio": 0})
    tb.Reload()
    assert "generated/spectrogram" in tb.Tags()["images"] and "generated/audio" in tb.Tags()["audio"]
    side = generate(run, tmp_path / "g.wav", seed_seconds=0.1, length_ratio=1.0)
    assert side["generated_blocks"] == side["seed"]["blocks"] > 1
    assert side["seed"]["phase_from"] == "the seed's audio"  # the dev song decoded again for its phases


class Samples(Transform):
    """The throwaway transform: each frame's samples, as they are."""

    name = "samples"
    help = "the raw samples of each block (a test's)"
    default_frame = 64

    @property
    def feature_dim(self):
        return self.frame

    def expansion(self):
        return np.arange(self.frame), np.ones(self.frame, np.float32)

    def analyze(self, frames):
        return np.asarray(frames, np.float32)

    def features(self, audio):
        return self.analyze(self.frames(audio))

    def to_frames(self, features):
        return np.asarray(features, np.float32)

    def magnitude(self, features):
        return np.abs(np.fft.rfft(np.asarray(features, np.float64), axis=-1))

    def add_power(self, power, stored):
        power += np.square(self.magnitude(stored)).sum(0)

    def stored_value_name(self, j, sample_rate):
        return f"sample {j}", 0.0


@pytest.fixture
def samples_transform():
    register(Samples)
    yield Samples
    TRANSFORMS.pop("samples")


def test_a_registered_transform_goes_through_preprocess_train_and_generate(samples_transform, corpus, tmp_path):
    from gruv_hpc.analysis.baseline import mean_prediction_loss
    from gruv_hpc.errors import DatasetError
    from gruv_hpc.generation import generate
    from gruv_hpc.training.trainer import main
    out = tmp_path / "ds"
    preprocess_tiny(corpus, out, transform="samples")
    m = json.loads((out / "manifest.json").read_text())
    assert m["params"]["transform"] == "samples" and m["params"]["feature_dim"] == 64
    assert all(s["bandwidth_hz"] for s in m["songs"])
    with pytest.raises(DatasetError, match="'transform' is 'samples', but the config asks for 'stft'"):
        main(tiny_config(out, transform="stft"), tmp_path / "other")
    run = tmp_path / "run"
    assert main(tiny_config(out, epochs=1, limit_train_batches=3), run)["status"] == "done"
    side = generate(run, tmp_path / "g.wav", seed_seconds=0.08, length_ratio=1.0)
    assert side["generated_blocks"] == 10
    loss, n = mean_prediction_loss(out, None, detail={})
    assert n > 0 and loss > 0
