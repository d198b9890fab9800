"""What the figures show (gruv_hpc/analysis/fig1_loss.py, common.py), on constructed runs: no training needed."""
import json

import pytest

from gruv_hpc.analysis.common import RunInfo


def run(artist, cell, seed, dev):
    cfg = {"artists": [artist], "cell": cell, "hidden": 8, "seed": seed}
    hist = [{"epoch": e + 1, "train_loss": 1.0 / (e + 1), "dev_loss": d} for e, d in enumerate(dev)]
    return RunInfo(f"{artist}-{cell}-s{seed}", "COMPLETED", cfg, {"cell": cell, "seed": seed}, None, hist)


def test_figure_1_draws_and_labels_every_seed_on_a_log_axis_when_the_range_is_wide(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gruv_hpc.analysis.fig1_loss import fig1
    runs = [run("a", c, s, [105.0, 104.0, 103.0]) for c in ("lstm", "gru") for s in (1, 2)] + \
        [run("b", c, s, [0.9, 0.8, 0.7]) for c in ("lstm", "gru") for s in (1, 2)]
    captured = {}
    real_close = plt.close
    plt.close = lambda fig=None: captured.setdefault("fig", fig)  # keep the figure to look at it
    try:
        data = fig1(runs, tmp_path, baseline={"a": {"dev_loss": 0.7}, "b": {"dev_loss": 1.0}})
    finally:
        plt.close = real_close
    assert data["log_y"] == ["a"]  # 0.33 .. 105: log; 0.33 .. 1: linear
    ax_a, ax_b = captured["fig"].axes[:2]
    assert ax_a.get_yscale() == "log" and ax_b.get_yscale() == "linear"
    labels = ax_a.get_legend_handles_labels()[1]
    for c in ("LSTM", "GRU"):
        for s in (1, 2):
            assert f"{c} seed {s} dev" in labels and f"{c} seed {s} train" in labels
    assert len({json.dumps(v["seed"]) for v in data["curves"].values()}) == 2


def test_figure_1_tells_runs_of_other_grid_values_apart(tmp_path):
    """A sweep with another axis (predict = delta and damped): each curve's label names it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gruv_hpc.analysis.fig1_loss import fig1
    runs = []
    for p in ("delta", "damped"):
        r = run("a", "lstm", 1, [0.9, 0.8])
        r.grid["predict"], r.config["predict"], r.name = p, p, f"a-lstm-s1-{p}"
        runs.append(r)
    captured = {}
    real_close = plt.close
    plt.close = lambda fig=None: captured.setdefault("fig", fig)
    try:
        data = fig1(runs, tmp_path)
    finally:
        plt.close = real_close
    labels = captured["fig"].axes[0].get_legend_handles_labels()[1]
    assert {"LSTM delta seed 1 dev", "LSTM damped seed 1 dev"} <= set(labels) and len(set(labels)) == len(labels)
    assert sorted(v["variant"] for v in data["curves"].values()) == ["damped", "delta"]


def test_no_figure_labels_its_ticks_with_an_offset(tmp_path):
    """Figure 2 read 0.01 .. 0.09 under a '+1.049e2' offset."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gruv_hpc.analysis.common import no_offset_ticks
    fig, ax = plt.subplots()
    ax.plot([8, 16], [104.91, 104.99])
    fig.canvas.draw()
    assert ax.yaxis.get_major_formatter().get_offset() != ""  # matplotlib's default would offset these
    no_offset_ticks(fig)
    fig.canvas.draw()
    assert ax.yaxis.get_major_formatter().get_offset() == ""
    assert any("104.9" in t.get_text() for t in ax.get_yticklabels())
    plt.close(fig)


def test_flatness_is_taken_over_the_music_band():
    """Band-limited music scored ~1e-7 over all bins; over its band it is judged on what it has."""
    import numpy as np
    from scipy.signal import butter, sosfilt

    from gruv_hpc.generation import spectral_flatness
    sr = 22050
    noise = np.random.default_rng(0).standard_normal(4 * sr)
    low = sosfilt(butter(12, 1000, fs=sr, output="sos"), noise)  # noise, but only below 1 kHz
    everywhere, in_band = spectral_flatness(low, sr), spectral_flatness(low, sr, band_hz=(20.0, 900.0))
    assert everywhere < 0.05 and in_band > 0.5
    assert spectral_flatness(noise, sr, band_hz=(20.0, 900.0)) == pytest.approx(spectral_flatness(noise, sr), rel=0.1)


def test_words_mean_one_thing():
    """--seed-clips counts the dev clips generated from (not the grid's seeds); stateful and refeed
    are equal up to float rounding, not 'the same blocks'."""
    import gruv_hpc.generation.algorithms as gen
    from gruv_hpc.cli import build_parser
    p = build_parser()
    a = p.parse_args(["analyze", "sw", "--out", "rep", "--seed-clips", "3"])
    assert a.seed_clips == 3
    with pytest.raises(SystemExit):
        p.parse_args(["analyze", "sw", "--out", "rep", "--seeds", "3"])
    assert "equal up to float rounding, which a trained\nrecurrent model can amplify" in gen.__doc__
    assert "same blocks" not in gen.__doc__ and "same blocks" not in gen.generate_stateful.__doc__


def test_an_artist_name_with_dollars_is_drawn_as_written(tmp_path):
    """Issue 32 M7: '$...$' in a name was read as math and failed every figure, so every report."""
    from gruv_hpc.analysis.fig1_loss import fig1
    from gruv_hpc.analysis.fig2_hidden import fig2
    name = "Ke$ha_&_A$AP_Rocky"
    runs = [run(name, c, s, [105.0, 10.0, 0.3]) for c in ("lstm", "gru") for s in (1, 2)]  # a log axis: math ticks
    d1 = fig1(runs, tmp_path, baseline={name: {"dev_loss": 0.7}})
    assert d1["log_y"] == [name] and (tmp_path / "fig1_loss.png").stat().st_size > 0
    fig2(runs, tmp_path, {name: {"dev_loss": 0.7}})
    assert (tmp_path / "fig2_hidden.png").stat().st_size > 0
