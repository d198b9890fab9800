"""bench/real_music.py's own scoring: the linear floor it fits, its bootstrap, and its own
measures of a generated WAV (level, clicks at frame edges, loops, spectral distance), which the
real-music table sets beside the project's diagnostics. Pure numpy, milliseconds each."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import real_music  # noqa: E402

SR = 16000


def _ar1(a, b, n=4000, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = np.zeros((n, d))
    for t in range(1, n):
        x[t] = a * x[t - 1] + b + 0.1 * rng.standard_normal(d)
    return x


def test_the_linear_floor_recovers_a_per_bin_map():
    a, b = np.array([0.9, 0.5, -0.3, 0.0, 0.7, 0.2]), np.array([0.1, -0.2, 0.0, 0.3, 0.0, 0.05])
    x = _ar1(a, b)
    lin = real_music.LinearFloor([x[:2000], x[2000:]], complex_layout=False)
    assert lin.a == pytest.approx(a, abs=0.05) and lin.b == pytest.approx(b, abs=0.05)
    # [Re | Im]: a rotation of each bin's (Re, Im) is a 2x2 map a per-feature scalar cannot fit
    rng, th = np.random.default_rng(1), 0.6
    z = np.zeros((3000, 2), complex)
    for t in range(1, 3000):
        z[t] = 0.95 * np.exp(1j * th) * z[t - 1] + 0.1 * (rng.standard_normal(2) + 1j * rng.standard_normal(2))
    feats = np.concatenate([z.real, z.imag], 1)
    pairs = real_music.LinearFloor([feats], complex_layout=True)
    scalar = real_music.LinearFloor([feats], complex_layout=False)
    err = lambda f: float(((f(feats[:-1]) - feats[1:]) ** 2).mean())  # noqa: E731
    assert err(pairs) < 0.6 * err(scalar)
    assert err(pairs) == pytest.approx(0.01, rel=0.2)  # the innovation's variance per part


def test_the_ratio_and_its_bootstrap_interval():
    floor = [1.0, 2.0, 3.0, 4.0]
    stat = real_music.ratio_stat([[0.5, 1.0, 1.5, 2.0], [1.0, 2.0, 3.0, 4.0]], floor,
                                 real_music._resamples([0, 0, 1, 1], b=200))
    assert stat["mean"] == pytest.approx(0.75) and stat["per_seed"] == pytest.approx([0.5, 1.0])
    assert stat["lo"] <= stat["mean"] <= stat["hi"]
    assert real_music.ratio_stat([[1.0]], floor, [])["mean"] is None  # a run scored on other clips: no ratio


def test_own_measures_of_a_wav():
    rng = np.random.default_rng(0)
    noise = 0.1 * rng.standard_normal(SR * 3)
    assert real_music.own_level_db(0.5 * noise, noise) == pytest.approx(-6.02, abs=0.01)
    assert real_music.own_click_ratio(noise, 256) == pytest.approx(1.0, abs=0.1)
    clicky = noise.copy()
    clicky[256::256] += 0.5  # a step at every frame edge
    assert real_music.own_click_ratio(clicky, 256) > 3
    # a 0.19 s tile (12 hops: a model's loop is a whole number of its frames, all multiples of 256
    # samples here) repeated is a loop over the whole continuation; noise is not
    tile = 0.1 * rng.standard_normal(12 * 256)
    loops = real_music.own_loops(np.tile(tile, 16), SR)
    assert loops["own_loops_whole"] and loops["own_loop_fraction"] > 0.9
    assert not real_music.own_loops(noise, SR)["own_loops_whole"]
    ref = real_music._own_mean_spectrum(noise)
    assert real_music.own_spectral_distance(noise[:SR], noise[SR:2 * SR], ref) == pytest.approx(1.0, rel=0.3)
    tone = 0.1 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)  # a drone, far from the noise's spectrum
    assert real_music.own_spectral_distance(tone, noise[:SR], ref) > 5


def test_the_true_continuation_row_is_summarized_by_own_measures_only():
    """The dev song's own continuation: a reference row at every temperature, with this script's
    measures and goals and no diagnostics (which need a run)."""
    clips = [{"seed_index": 0, "generated_s": 6.0, "own_level_change_db": 1.0, "own_click_ratio": 1.0,
              "own_spectral_distance": 0.5, "own_loops_whole": False, "own_loop_onset_s": None},
             {"seed_index": 1, "generated_s": 6.0, "own_level_change_db": 9.0, "own_click_ratio": 1.0,
              "own_spectral_distance": 3.0, "own_loops_whole": False, "own_loop_onset_s": None}]
    tab = real_music.summarize({"floors": {}, "runs": {}, "truth": {"logmag": clips}})
    row = tab["logmag (the dev song's own continuation)"]
    c = row["continuations"]["T1"]
    assert c["own_goals_all"] == 1 and c["clips"] == 2 and c["own_spectral_distance"]["mean"] == 1.75
    assert c["level_change_db"]["mean"] is None and c["loop_onset_s"]["mean"] is None
    md = real_music.markdown(tab, {"date": "d", "scale": "s", "ran": ["logmag"]})
    assert md.count("| logmag (the dev song's own continuation) |") == 2 and "all: 1 of 2" in md


def test_goals_are_counted_by_seed_clip_over_runs_and_draws():
    """With several draws per seed clip (table --draws), the count of continuations meeting all
    the checks is also given per seed clip: a failure that is one clip's shows as such."""
    def clip(k, d, level):
        return {"seed_index": k, "draw": d, "generated_s": 6.0, "own_level_change_db": level, "own_click_ratio": 1.0,
                "own_spectral_distance": 0.5, "own_loops_whole": False, "own_loop_onset_s": None}
    clips = [clip(0, d, 12.0) for d in range(3)] + [clip(24, d, 1.0 + 4 * d) for d in range(3)]
    assert real_music.goals_by_seed_clip(clips, real_music.OWN_GOALS) == {"0": [0, 3], "24": [2, 3]}
