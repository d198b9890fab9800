import numpy as np
import pytest
import soundfile as sf

from gruv_hpc.dataset.audio import AudioError, load_mono, resample, to_pcm, write_wav
from gruv_hpc.dataset.transforms import blocks_to_stored, get_transform
from gruv_hpc.errors import ConfigError


@pytest.mark.parametrize("transform", ["fft", "rfft"])
@pytest.mark.parametrize("n", [11025, 64, 63])
def test_round_trip(transform, n):
    rng = np.random.default_rng(0)
    audio = rng.uniform(-1, 1, n * 5).astype(np.float32)
    tf = get_transform(transform, n)
    feats = tf.features(audio)
    assert feats.shape == (5, tf.feature_dim) and feats.dtype == np.float32
    back = tf.synthesize(feats)
    assert np.max(np.abs(back - audio)) <= 1e-5


def test_paper_feature_layout():
    n = 11025
    x = np.sin(2 * np.pi * 441 * np.arange(n) / 44100).astype(np.float32)  # 441 Hz = bin 110
    f = get_transform("fft", n).features(x)[0]
    assert f.shape == (2 * n,)
    spec = np.fft.fft(x.astype(np.float64))
    np.testing.assert_allclose(f[:n], spec.real, atol=2e-2)
    np.testing.assert_allclose(f[n:], spec.imag, atol=2e-2)
    assert get_transform("rfft", n).feature_dim == 2 * (n // 2 + 1)
    mag = get_transform("fft", n).magnitude(f[None])[0]
    assert mag.shape == (n // 2 + 1,) and int(np.argmax(mag)) == 110


@pytest.mark.parametrize("n", [11025, 64, 63, 2, 3])
def test_stored_half_expands_to_either_feature_layout(n):
    """N stored values per block give the fft and rfft features exactly; nothing stored is redundant."""
    rng = np.random.default_rng(1)
    blocks = rng.uniform(-1, 1, (7, n)).astype(np.float32)
    stored = blocks_to_stored(blocks)
    for transform in ("fft", "rfft"):
        tf = get_transform(transform, n)
        assert stored.shape == (7, tf.storage_dim) == (7, n) and stored.dtype == np.float32
        want = tf.features(blocks.reshape(-1))
        np.testing.assert_allclose(tf.stored_to_features(stored), want, rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(tf.stored_to_features(tf.analyze(tf.frames(blocks.reshape(-1)))), want, rtol=1e-6,
                                   atol=1e-4)
        idx, sign = tf.expansion()
        assert idx.shape == sign.shape == (tf.feature_dim,)
        assert set(np.unique(sign)) <= {-1.0, 0.0, 1.0}
        assert np.all(want[:, sign == 0] == 0)  # Im of DC (and of Nyquist for even n) is always 0
        assert set(idx[sign != 0]) == set(range(n))  # every stored value is used
    # the paper's N: 2N = 22050 features from 11025 stored values
    if n == 11025:
        assert get_transform("fft", n).feature_dim == 2 * get_transform("fft", n).storage_dim


def test_wrong_feature_size_is_an_error():
    with pytest.raises(ValueError, match="values per frame"):
        get_transform("fft", 64).to_frames(np.zeros((2, 10)))


def test_transforms_are_named_in_the_registry_only():
    """An unknown transform lists the valid ones; the paper's transforms refuse an overlapping hop."""
    with pytest.raises(ConfigError, match="not one of fft, rfft, stft"):
        get_transform("wavelet", 64)
    for name in ("fft", "rfft"):
        with pytest.raises(ConfigError, match="hop must equal block_size"):
            get_transform(name, 64, hop=32)
        tf = get_transform(name, 64)
        assert (tf.hop, tf.n_frames(64 * 5 + 3), tf.n_samples(5), tf.seconds(4, 64)) == (64, 5, 320, 4.0)
        assert tf.params()["hop"] == 64 and tf.params()["transform"] == name


def tone(sr, seconds=1.0, hz=1000.0, amp=0.5):
    return (amp * np.sin(2 * np.pi * hz * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


@pytest.mark.parametrize("fmt,subtype,ext,tol", [
    ("WAV", "PCM_U8", "wav", 1e-2), ("WAV", "PCM_16", "wav", 1e-4), ("WAV", "PCM_24", "wav", 1e-6),
    ("WAV", "PCM_32", "wav", 1e-6), ("WAV", "FLOAT", "wav", 1e-7), ("FLAC", "PCM_16", "flac", 1e-4),
    ("FLAC", "PCM_24", "flac", 1e-6), ("AIFF", "PCM_16", "aiff", 1e-4), ("OGG", "VORBIS", "ogg", None),
    ("MP3", "MPEG_LAYER_III", "mp3", None),
])
def test_decode_formats(tmp_path, fmt, subtype, ext, tol):
    x = tone(44100)
    p = tmp_path / f"t.{ext}"
    sf.write(p, x, 44100, format=fmt, subtype=subtype)
    y = load_mono(p, 44100)
    if tol is not None:  # lossless: sample-exact up to the format's quantization
        assert len(y) == len(x)
        assert np.max(np.abs(y - x)) <= tol * 2
    else:  # lossy codecs: the tone survives (the original code's 32-bit bug gave white noise)
        m = min(len(x), len(y))
        spec = np.abs(np.fft.rfft(y[:m]))
        freq = np.argmax(spec) * 44100 / m
        assert abs(freq - 1000) < 5
        assert 0.3 < np.max(np.abs(y)) < 0.7


def test_32bit_int_wav_is_not_noise(tmp_path):
    x = tone(44100)
    sf.write(tmp_path / "t.wav", x, 44100, subtype="PCM_32")
    y = load_mono(tmp_path / "t.wav", 44100)
    assert np.corrcoef(x, y)[0, 1] > 0.9999


def test_stereo_downmix(tmp_path):
    x = tone(44100)
    sf.write(tmp_path / "s.wav", np.stack([x, 0.5 * x], 1), 44100, subtype="FLOAT")
    y = load_mono(tmp_path / "s.wav", 44100)
    np.testing.assert_allclose(y, 0.75 * x, atol=1e-6)


@pytest.mark.parametrize("sr", [22050, 48000])
def test_resample_known_tone(tmp_path, sr):
    x = tone(sr, seconds=2.0, hz=1000.0, amp=0.5)
    sf.write(tmp_path / "r.wav", x, sr, subtype="FLOAT")
    y = load_mono(tmp_path / "r.wav", 44100)
    assert abs(len(y) - 2 * 44100) <= 1
    mid = y[4410:-4410]  # away from the filter's edges
    ref = tone(44100, seconds=2.0, hz=1000.0, amp=0.5)[4410:-4410]
    assert np.max(np.abs(mid - ref)) < 1e-2
    assert abs(np.sqrt(np.mean(mid**2)) - 0.5 / np.sqrt(2)) < 1e-3


def test_resample_identity():
    x = tone(100)
    assert resample(x, 100, 100) is not None and np.array_equal(resample(x, 100, 100), x)


def test_corrupt_file_error_names_file(tmp_path):
    p = tmp_path / "broken.wav"
    p.write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(AudioError, match="broken.wav"):
        load_mono(p, 44100)


def test_pcm_never_wraps_and_reports_clipping(tmp_path):
    x = np.array([0.0, 0.5, 1.5, -2.0, np.nan, -0.25], np.float32)
    y, clipped = to_pcm(x)
    assert clipped == 3 and y.max() <= 1 and y.min() >= -1
    p = tmp_path / "c.wav"
    assert write_wav(p, x, 8000) == 3
    back, sr = sf.read(p, dtype="float32")
    assert sr == 8000 and back[2] > 0.99 and back[3] < -0.99  # clipped, not wrapped to the other sign
    y, clipped = to_pcm(x, peak=0.9)
    assert clipped == 1 and abs(np.max(np.abs(y)) - 0.9) < 1e-6  # only the NaN counts


@pytest.mark.parametrize("n,hop", [(64, None), (64, 16), (63, None), (11025, None), (11025, 2756)])
def test_stft_round_trip_is_exact_away_from_the_edges(n, hop):
    """Weighted overlap-add inverts the sqrt-Hann analysis to float rounding wherever full frames
    overlap, also for the paper's odd N (where Hann's shifts by N // 2 do not add up to a constant)."""
    tf = get_transform("stft", n, hop)
    assert tf.hop == (hop or n // 2) and tf.params()["window"] == "sqrt_hann"
    audio = np.random.default_rng(2).uniform(-1, 1, 20 * n).astype(np.float32)
    feats = tf.features(audio)
    assert feats.shape == (tf.n_frames(len(audio)), tf.feature_dim)
    np.testing.assert_allclose(tf.stored_to_features(tf.analyze(tf.frames(audio))), feats, atol=1e-3)
    back = tf.synthesize(feats)
    assert len(back) == tf.n_samples(len(feats)) <= len(audio)
    inner = slice(n, len(back) - n)
    assert np.max(np.abs(back[inner] - audio[inner])) <= 1e-5
    assert np.max(np.abs(back[:n])) <= 1.0 + 1e-5  # the ends fade: never divided by a weight near zero


def test_stft_frames_overlap_and_refuse_gaps():
    tf = get_transform("stft", 64)
    a = np.arange(200, dtype=np.float32)
    f = tf.frames(a)
    assert f.shape == (tf.n_frames(200), 64) == (5, 64) and f[1, 0] == 32  # hop 32: a view, no copy
    assert tf.seconds(2, 64) == 1.0  # two steps of a 32-sample hop at 64 Hz
    with pytest.raises(ConfigError, match="hop <= block_size / 2"):
        get_transform("stft", 64, hop=40)
    assert tf.frames(a[:10]).shape == (0, 64)
