"""The three floors (analysis/baseline.py), the paired bootstrap against them, and the rollout
horizons (gruv_hpc/generation/rollout.py): on constructed data with known answers, and on the tiny dataset."""
import numpy as np
import pytest
import torch

from gruv_hpc.analysis.baseline import (bin_features, fit_linear, floor_losses, paired_interval, predict_linear)
from gruv_hpc.dataset.transforms import get_transform


class RealLayout:
    """A transform with one real value per bin (as a log magnitude has)."""
    name, parts = "logmag-like", 1


def test_bins_follow_the_transforms_layout():
    fft = get_transform("fft", 8)  # [Re_0..Re_7 | Im_0..Im_7]: bin k is features (k, 8 + k)
    assert bin_features(fft, fft.feature_dim).tolist() == [[k, 8 + k] for k in range(8)]
    assert bin_features(RealLayout(), 5).tolist() == [[k] for k in range(5)]


def test_the_linear_floor_recovers_a_per_bin_linear_process():
    """y[bin] = A_bin (Re, Im) + c_bin, exactly: the fit finds each bin's 2x2 map and intercept;
    and for a real layout each bin's scalar and intercept."""
    rng = np.random.default_rng(0)
    n_bins = 6
    a = rng.normal(size=(n_bins, 2, 2)) * 0.5
    c = rng.normal(size=(n_bins, 2))
    idx = bin_features(get_transform("fft", n_bins), 2 * n_bins)

    def clip():
        x = rng.normal(size=(20, 2 * n_bins))
        y = np.empty_like(x)
        y[:, idx] = np.einsum("tbi,bji->tbj", x[:, idx], a) + c
        return x, y
    clips = [clip() for _ in range(4)]
    w = fit_linear(clips, idx)
    np.testing.assert_allclose(w[:, :2, :], a.transpose(0, 2, 1), atol=1e-10)
    np.testing.assert_allclose(w[:, 2, :], c, atol=1e-10)
    x, y = clip()
    np.testing.assert_allclose(predict_linear(w, x, idx), y, atol=1e-10)
    # Real layout: y = s x + b per value.
    s, b = rng.normal(size=5), rng.normal(size=5)
    real = [(x, x * s + b) for x in (rng.normal(size=(30, 5)) for _ in range(2))]
    w1 = fit_linear(real, bin_features(RealLayout(), 5))
    np.testing.assert_allclose(w1[:, 0, 0], s, atol=1e-10)
    np.testing.assert_allclose(w1[:, 1, 0], b, atol=1e-10)


def test_floors_on_the_tiny_dataset(data):
    """Against numpy on the clips themselves: the mean floor is the mean square of the normalized
    dev targets, persistence the mean square of the frame-to-frame step; the linear map, fitted by
    least squares, is on train no worse than either (both are linear maps it could have chosen)."""
    from gruv_hpc.dataset.clips import DatasetHandle
    per = floor_losses(data, ["aurora"])
    h = DatasetHandle(data, ["aurora"])
    dev = h.split("dev")
    assert len(per["mean"]) == len(per["persistence"]) == len(per["linear"]) == len(per["songs"]) == len(dev) > 0
    for i in range(len(dev)):
        x, y = (t.double().numpy() for t in dev[i])
        assert per["mean"][i] == pytest.approx(np.mean(y ** 2), rel=1e-9)
        assert per["persistence"][i] == pytest.approx(np.mean((y - x) ** 2), rel=1e-9)
    assert np.all(np.isfinite(per["linear"]))
    train = h.split("train")
    pairs = [tuple(t.double().numpy() for t in train[i]) for i in range(len(train))]
    idx = bin_features(h.transform, len(h.expand_index))
    w = fit_linear(pairs, idx)
    lin = np.mean([np.mean((y - predict_linear(w, x, idx)) ** 2) for x, y in pairs])
    assert lin <= np.mean([np.mean(y ** 2) for _, y in pairs]) + 1e-9
    assert lin <= np.mean([np.mean((y - x) ** 2) for x, y in pairs]) + 1e-9


def test_the_paired_bootstrap_resamples_songs():
    """Clips of one song are not independent: one song far below 0 and three above gives an
    interval that spans 0, though most clips are below it."""
    songs = np.repeat([0, 1, 2, 3], [20, 2, 2, 2])
    diff = np.where(songs == 0, -1.0, 0.5) + np.random.default_rng(1).normal(0, 0.01, len(songs))
    iv = paired_interval(diff, songs)
    assert iv["songs"] == 4 and iv["clips"] == 26 and iv["diff"] < 0
    assert iv["low"] < 0 < iv["high"]
    clear = paired_interval(np.full(12, -0.1) + np.linspace(0, 0.01, 12), np.repeat([0, 1, 2], 4))
    assert clear["high"] < 0 and clear["low"] <= clear["diff"] <= clear["high"]
    assert paired_interval(diff, songs) == iv  # a fixed resampling seed: the same interval every time


def test_rollout_horizons_score_the_free_run_against_persistence_and_the_mean():
    from gruv_hpc.generation.rollout import rollout_horizons
    from gruv_hpc.generation import generate_stateful
    from gruv_hpc.training.model import GRUVModel
    torch.manual_seed(0)
    model = GRUVModel(6, 5, "lstm")
    clips = torch.randn(3, 20, 6)
    fps = 4.0  # horizons 0.25, 1, 3 s: 1, 4 and 12 frames ahead
    out = rollout_horizons(model, clips, fps, context=10)
    assert out["rollout_context_frames"] == 10 and out["rollout_clips"] == 3
    assert "rollout_3s_model" not in out  # 12 frames do not fit after 10 of 20
    with torch.no_grad():
        pred = [generate_stateful(model, c[:10], 4) for c in clips]
    for h, n in ((0.25, 1), (1, 4)):
        assert out[f"rollout_{h:g}s_model"] == pytest.approx(
            np.mean([float((p[n - 1] - c[9 + n]).square().mean()) for p, c in zip(pred, clips)]), rel=1e-6)
        assert out[f"rollout_{h:g}s_persistence"] == pytest.approx(
            np.mean([float((c[9] - c[9 + n]).square().mean()) for c in clips]), rel=1e-6)
        assert out[f"rollout_{h:g}s_mean"] == pytest.approx(np.mean([float(c[9 + n].square().mean()) for c in clips]),
                                                          rel=1e-6)
    # By default the seed is at least half the clip and leaves room for the longest horizon that fits.
    assert rollout_horizons(model, clips, fps)["rollout_context_frames"] == 10
    assert "rollout_3s_model" in rollout_horizons(model, torch.randn(1, 30, 6), fps)
