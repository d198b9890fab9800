"""The claims table's verdicts (gruv_hpc/analysis/claims.py), on constructed results: no training needed."""
import math

import pytest
from scipy.stats import ttest_ind

from gruv_hpc.analysis.claims import claims, compare, verdict


def rows_of(values: dict, key="best_dev_loss") -> list[dict]:
    """{(artist, cell, hidden): [value per seed]} -> results rows, one per run."""
    out = []
    for (artist, cell, hidden), vals in values.items():
        for seed, v in enumerate(vals):
            out.append({"name": f"{artist}-{cell}-h{hidden}-s{seed}", "artists": artist, "cell": cell, "hidden": hidden,
                        "variant": "", "seed": seed, key: v})
    return out


def by_claim(table):
    return {c["claim"].split(" ")[1]: c for c in table}  # LSTM's / loss / GRU's / ...


def lstm_vs_gru(lstm, gru, hidden=256):
    return by_claim(claims(rows_of({("aurora", "lstm", hidden): lstm, ("aurora", "gru", hidden): gru})))["LSTM's"]


def test_a_clear_difference_holds_and_its_reverse_does_not():
    c = lstm_vs_gru([1.00, 1.01], [1.20, 1.21])
    assert c["verdict"] == "holds" and c["comparisons"][0]["verdict"] == "holds"
    assert c["comparisons"][0]["effect"] == pytest.approx(-0.2)
    assert "aurora H=256: LSTM 1.005 ± 0.0071 vs GRU 1.205 ± 0.0071 (2 vs 2 seeds), D = -0.2, noise threshold 0.03: " \
           "holds" in c["evidence"]
    assert lstm_vs_gru([1.20, 1.21], [1.00, 1.01])["verdict"] == "does not hold"


def test_the_real_music_case_is_inconclusive():
    """LSTM 1.180 vs GRU 1.186: a difference smaller than the seeds' own spread is no evidence."""
    c = lstm_vs_gru([1.176, 1.184], [1.181, 1.191])
    assert c["verdict"] == "inconclusive" and c["comparisons"][0]["verdict"] == "within noise"
    assert "within the noise" in c["why"]


def test_a_tie_is_not_a_no():
    table = by_claim(claims(rows_of({("a", "lstm", 8): [0.008, 0.009], ("a", "gru", 8): [0.009, 0.008]}, "flatness")))
    assert table["GRU's"]["verdict"] == "inconclusive" and table["GRU's"]["comparisons"][0]["effect"] == 0
    exact = compare([0.008, 0.008], [0.008, 0.008], ">")  # no spread at all, no difference either
    assert exact["verdict"] == "within noise"


def test_one_seed_is_inconclusive_whatever_the_difference():
    c = lstm_vs_gru([1.0], [5.0])
    assert c["verdict"] == "inconclusive" and c["comparisons"][0]["verdict"] == "one seed"
    assert "(one seed each), D = -4: one seed" in c["evidence"]


def test_nan_never_counts():
    c = lstm_vs_gru([1.00, float("nan"), 1.01, None], [1.20, 1.21])
    assert c["verdict"] == "holds" and c["comparisons"][0]["n_a"] == 2
    none = lstm_vs_gru([float("nan"), None], [1.2, 1.21])  # nothing left on a side: no comparison at all
    assert none["verdict"] == "inconclusive" and none["comparisons"] == [] and "no LSTM/GRU pair" in none["why"]


def test_mixed_evidence_is_inconclusive():
    rows = rows_of({("a", "lstm", 8): [1.0, 1.01], ("a", "gru", 8): [1.2, 1.21],
                    ("b", "lstm", 8): [1.2, 1.21], ("b", "gru", 8): [1.0, 1.01]})
    c = by_claim(claims(rows))["LSTM's"]
    assert [x["verdict"] for x in c["comparisons"]] == ["holds", "contradicts"] and c["verdict"] == "inconclusive"
    assert verdict([{"verdict": v} for v in ("holds", "holds", "within noise")])[0] == "holds"  # a majority, none against
    assert verdict([{"verdict": v} for v in ("holds", "within noise", "one seed")])[0] == "inconclusive"  # not a majority
    assert verdict([{"verdict": v} for v in ("contradicts", "contradicts", "one seed")])[0] == "does not hold"


def test_figure_2_needs_two_hidden_sizes():
    one = by_claim(claims(rows_of({("a", "lstm", 8): [1.0, 1.1], ("a", "gru", 8): [1.2, 1.3]})))["loss"]
    assert one["verdict"] == "inconclusive" and "needs at least 2 hidden sizes per cell" in one["why"]
    falls = by_claim(claims(rows_of({("a", "lstm", 8): [1.2, 1.21], ("a", "lstm", 16): [1.1, 1.11],
                                     ("a", "lstm", 32): [1.0, 1.01]})))["loss"]
    assert falls["verdict"] == "holds" and [c["label"] for c in falls["comparisons"]] == ["a LSTM H=8->16", "a LSTM H=16->32"]
    rises = by_claim(claims(rows_of({("a", "gru", 8): [1.0, 1.01], ("a", "gru", 16): [1.2, 1.21]})))["loss"]
    assert rises["verdict"] == "does not hold"


def test_the_threshold_is_a_two_sample_t_test_at_5_percent():
    """Past the threshold exactly when a pooled two-sample t-test rejects equal means at the 5%
    level (with margin 1: no marginal zone)."""
    cases = [([1.0, 1.1], [1.3, 1.35]), ([1.0, 1.1, 1.05], [1.12, 1.2, 1.15]), ([0.5, 0.52, 0.49], [0.55, 0.6]),
             ([2.0, 2.2], [2.1, 2.25]), ([1.0, 1.02, 0.98, 1.01], [1.03, 1.05, 1.02, 1.04])]
    for a, b in cases:
        c = compare(a, b, "<", margin=1.0)
        p = ttest_ind(a, b, equal_var=True).pvalue
        assert (c["verdict"] in ("holds", "contradicts")) == (p < 0.05), (a, b, p, c)
        assert (compare(a, b, "<")["verdict"] in ("holds", "contradicts", "marginal")) == (p < 0.05)
        n_a, n_b = len(a), len(b)
        assert c["spread"] == pytest.approx(math.sqrt(((n_a - 1) * c["a_std"] ** 2 + (n_b - 1) * c["b_std"] ** 2) / (n_a + n_b - 2)))


def test_figure_3_claim_from_every_seed():
    rows = rows_of({("a", "lstm", 8): [0.95, 0.96], ("a", "gru", 8): [0.70, 0.72]}, "in_band_energy")
    assert by_claim(claims(rows))["GRU's"]["claim"].startswith("The GRU's output")  # the flatness claim: no data
    band = [c for c in claims(rows) if "Figure 3" in c["claim"]][0]
    assert band["verdict"] == "holds"
    assert not [c for c in claims(rows_of({("a", "lstm", 8): [1.0]})) if "Figure 3" in c["claim"]]  # no data: no row


def test_the_floor_section_names_the_few_bins_that_dominate_it():
    import numpy as np

    from gruv_hpc.analysis.baseline import dominant_values
    from gruv_hpc.analysis.report import baseline_html
    from gruv_hpc.dataset.transforms import get_transform
    per = np.ones(1000)
    fft = get_transform("fft", 1000)
    assert dominant_values(per, fft, 8000) is None  # spread out: nothing to name
    per[[999, 998, 997]] = 400.0  # Im near 4 kHz (the stored layout: Re_0..Re_500 | Im_1..Im_499)
    dom = dominant_values(per, fft, 8000)
    assert dom["n"] == 3 and dom["of"] == 1000 and [v["part"] for v in dom["values"]] == ["Im"] * 3
    assert dom["values"][0]["hz"] == pytest.approx(499 * 8.0)
    page = baseline_html([], {"a": {"dev_loss": 12.0, "dev_clips": 3, "std_floor": 0.0, "dominant": dom}})
    assert "3 of the 1000 stored values" in page and "Im 3.99 kHz" in page and "std_floor" in page
    assert "id='floor'" in page
    # a log-magnitude dataset's stored values are bins, not Re/Im: the transform says so
    per = np.ones(2 * 513)
    per[[513 + 500, 200]] = 1000.0
    dom = dominant_values(per, get_transform("logmag_if", 1024), 8000)
    assert [(v["part"], v["hz"]) for v in dom["values"]] == [("IF", 500 * 8000 / 1024), ("log|X|", 200 * 8000 / 1024)]


def floored(values: dict, floor: float, key="best_dev_loss") -> list[dict]:
    return [{**r, "baseline_dev_loss": floor} for r in rows_of(values, key)]


def test_a_difference_between_models_that_beat_no_floor_is_not_decided():
    """Clearly apart by the t-test, but both at or above the dev loss of predicting the train mean."""
    rows = floored({("circuit", "lstm", 32): [1.235, 1.236], ("circuit", "gru", 32): [1.26, 1.261]}, 1.231)
    c = by_claim(claims(rows))["LSTM's"]
    assert c["comparisons"][0]["verdict"] == "nothing beat the best floor"
    assert c["verdict"] == "not decided: nothing beat the best floor" and "beat the best floor" in c["why"]
    # One side below the floor: judged as before.
    rows = floored({("circuit", "lstm", 32): [1.10, 1.101], ("circuit", "gru", 32): [1.26, 1.261]}, 1.231)
    assert by_claim(claims(rows))["LSTM's"]["verdict"] == "holds"
    # The hidden-size claim, and the flatness claim for runs that learned nothing.
    rows = floored({("a", "lstm", 8): [1.3, 1.31], ("a", "lstm", 16): [1.25, 1.251]}, 1.2)
    assert by_claim(claims(rows))["loss"]["verdict"] == "not decided: nothing beat the best floor"
    flat = [{**r, "flatness": f} for r, f in zip(floored({("a", "lstm", 8): [1.3, 1.31], ("a", "gru", 8): [1.3, 1.31]}, 1.2),
                                                 (0.1, 0.11, 0.5, 0.51))]
    assert by_claim(claims(flat))["GRU's"]["verdict"] == "not decided: nothing beat the best floor"
    # Mixed: one artist decided, another below no floor: the claim still holds on the evidence it has.
    rows = floored({("a", "lstm", 8): [1.0, 1.01], ("a", "gru", 8): [1.1, 1.11]}, 1.2) + \
        floored({("b", "lstm", 8): [1.3, 1.31], ("b", "gru", 8): [1.4, 1.41]}, 1.2)
    c = by_claim(claims(rows))["LSTM's"]
    assert [x["verdict"] for x in c["comparisons"]] == ["holds", "nothing beat the best floor"] and c["verdict"] == "holds"
    # ... but a comparison within the noise among the decided ones leaves no majority: 1 of 2
    rows += floored({("c", "lstm", 8): [1.0, 1.05], ("c", "gru", 8): [1.01, 1.06]}, 1.2)
    c = by_claim(claims(rows))["LSTM's"]
    assert [x["verdict"] for x in c["comparisons"]] == ["holds", "nothing beat the best floor", "within noise"]
    assert c["verdict"] == "inconclusive"


def test_the_claims_table_links_to_the_floor_section(tmp_path):
    from gruv_hpc.analysis.report import page_columns, write_html
    rows = floored({("c", "lstm", 8): [1.3, 1.31], ("c", "gru", 8): [1.4, 1.41]}, 1.2)
    for r in rows:
        r.update(group=r["name"][:-3], state="COMPLETED", epochs_done=1, epochs=1, error="")
        r.update({k: r.get(k) for k in page_columns()})
    page = write_html(tmp_path, [], rows, claims(rows), {}, {}, {}, {}, [], {"c": {"dev_loss": 1.2, "dev_clips": 2}}).read_text()
    assert "href='#floor'" in page and "id='floor'" in page and "not decided: nothing beat the best floor" in page


def test_a_claim_is_decided_only_against_the_best_floor():
    """Below the train mean but not below persistence: nothing beat the best floor."""
    rows = [{**r, "persistence_dev_loss": 0.9, "linear_dev_loss": 0.95}
            for r in floored({("a", "lstm", 8): [1.00, 1.01], ("a", "gru", 8): [1.10, 1.11]}, 1.2)]
    c = by_claim(claims(rows))["LSTM's"]
    assert c["comparisons"][0]["verdict"] == "nothing beat the best floor"
    assert c["verdict"] == "not decided: nothing beat the best floor"
    # With the paired per-clip intervals in the rows, they decide: every seed of a side beats it.
    per_clip = [{**r, "beats_floor": "True" if r["cell"] == "lstm" else "False"} for r in rows]
    assert by_claim(claims(per_clip))["LSTM's"]["verdict"] == "holds"
    one_seed_fails = [{**r, "beats_floor": r["cell"] == "lstm" and r["seed"] == 0} for r in rows]
    assert by_claim(claims(one_seed_fails))["LSTM's"]["verdict"] == "not decided: nothing beat the best floor"


def test_a_difference_just_past_its_threshold_is_marginal():
    """Beyond the t-test's threshold by less than MARGIN x: decided on one machine's kernels and
    not on another's, so it decides nothing."""
    from gruv_hpc.analysis.claims import MARGIN
    a = [1.00, 1.02]
    thr = compare(a, [x + 1 for x in a], "<")["threshold"]  # the same spread on both sides: one threshold
    shifted = lambda k: [x + k * thr for x in a]  # noqa: E731
    assert compare(a, shifted(0.9), "<")["verdict"] == "within noise"
    near = compare(a, shifted(1.2), "<")
    assert near["threshold"] == pytest.approx(thr) and near["verdict"] == "marginal"
    assert compare(a, shifted(1.1 * MARGIN), "<")["verdict"] == "holds"
    assert compare(shifted(1.2), a, "<")["verdict"] == "marginal"  # either sign: never a "contradicts" either
    c = lstm_vs_gru(a, shifted(1.2))
    assert c["verdict"] == "inconclusive" and "1 marginal" in c["why"]


def test_a_difference_within_the_numerical_noise_is_never_decided():
    c = compare([1.00, 1.0001], [1.10, 1.1001], "<")
    assert c["verdict"] == "holds"
    assert compare([1.00, 1.0001], [1.10, 1.1001], "<", noise=0.2)["verdict"] == "within numerical noise"
    rows = rows_of({("a", "lstm", 8): [1.00, 1.0001], ("a", "gru", 8): [1.10, 1.1001]})
    c = by_claim(claims(rows, noise=0.2))["LSTM's"]
    assert c["verdict"] == "inconclusive" and "within the numerical noise" in c["why"]


def test_report_links_are_url_quoted(tmp_path):
    """A run named with '#', '?' or '%' (issue 32 L3): each audio and image path is URL-quoted, then
    HTML-escaped, so the browser asks for the file that exists."""
    from gruv_hpc.analysis.report import write_html
    name = "a#b?c%d&e"
    clip = {"seed_index": 0, "wav": f"audio/{name}/seed0.wav", "seed_wav": f"audio/{name}/seed0_seed.wav",
            "png": f"audio/{name}/seed0.png", "words": "w"}
    page = write_html(tmp_path, [], [], [], {}, {}, {}, {name: {"clips": [clip]}}, [], {}).read_text()
    assert "src='audio/a%23b%3Fc%25d%26e/seed0.wav'" in page and "src='audio/a%23b%3Fc%25d%26e/seed0.png'" in page
    assert "a#b?c%d&amp;e" in page  # the name itself, as text, only escaped


def test_the_demo_verdicts_do_not_flip_between_kernels_and_are_the_docs():
    """Issue 30, item 5: the demo (5 seeds) run as it comes and under ATEN_CPU_CAPABILITY=default
    MKL_CBWR=COMPATIBLE (bench/demo_kernels.py --record): the claims recomputed from each recorded
    results.csv, with the numerical noise each report measured, give the same verdicts, and they are
    the verdicts docs/reproducing.md prints."""
    import csv
    import json
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    rec = sorted(p for p in (root / "bench" / "results").glob("demo_kernels_*") if p.is_dir())[-1]
    got = {}
    for name in ("native", "compatible"):
        rows = list(csv.DictReader((rec / name / "results.csv").open()))
        assert len({r["seed"] for r in rows}) == 5 and len(rows) == 40  # the demo's grid, 5 seeds
        noise = json.loads((rec / name / "numerical_noise.json").read_text())["noise"]
        got[name] = [(c["claim"], c["verdict"]) for c in claims(rows, noise)]
    assert got["native"] == got["compatible"]
    docs = (root / "docs" / "reproducing.md").read_text()
    for claim, v in got["native"]:  # the docs' claims table: one row per claim, its verdict in bold
        rows = re.findall(r"^\| " + re.escape(claim) + r" \| \*\*(.+?)\*\* \(", docs, re.M)
        assert rows == [v], (claim, rows)
