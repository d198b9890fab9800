"""The paper's claims against this sweep, computed from its results and judged against the noise
between seeds: a difference smaller than what another seed could give is no evidence either way.

Each claim is a set of comparisons. A comparison sets side A, the runs of one group (runs that
differ only in seed), against side B, a group that differs from it in the one thing the claim is
about: the LSTM against the GRU at the same artist, hidden size and other grid values; or one
hidden size against the next smaller one of the same artist and cell.

The rule, for one comparison. Missing and NaN values are dropped (they never count); a
comparison left with no value on a side is not made. With the n_A and n_B values left:

- effect: D = mean(A) - mean(B); each claim states the sign it expects (e.g. D < 0: the
  LSTM's dev loss is lower);
- spread between seeds: the pooled standard deviation
  s = sqrt(((n_A - 1) s_A^2 + (n_B - 1) s_B^2) / (n_A + n_B - 2)), with s_A, s_B the sample
  standard deviations, and the standard error of D, se = s * sqrt(1/n_A + 1/n_B);
- threshold: t * se, t the two-sided 95% quantile of Student's t with n_A + n_B - 2 degrees of
  freedom: a pooled two-sample t-test at the 5% level (t = 4.30 for 2 seeds a side, 2.78 for 3,
  2.31 for 5);
- nothing learned: the floors are three predictors that learn nothing about music (the train
  mean, persistence, a linear map per frequency bin; gruv_hpc/analysis/baseline.py), and a side is judged
  against the best of them. When the rows carry ``beats_floor`` (the run's best checkpoint minus
  the best floor, clip by clip, with a bootstrap interval over dev songs wholly below 0), a side
  beats the floor when every one of its runs does; otherwise when its mean best dev loss is below
  the lowest floor the rows carry. When neither side beats it, the comparison is "nothing beat
  the best floor": two models that learned nothing that carries to dev differ in noise, whatever
  the t-test says;
- verdict: "one seed" when a side has fewer than 2 values (there is no spread to judge D by);
  "within noise" when |D| <= t * se (a tie is this, never a "no"); "within numerical noise" when
  |D| is no larger than the numerical noise the analysis measured (``noise``: the same checkpoint
  evaluated on other threads or kernels); "marginal" when |D| is beyond the threshold but within
  MARGIN times it (see below); otherwise "holds" when D has the expected sign and "contradicts"
  when it has the other.

Why "marginal": with 2 or 3 seeds a side, the threshold rests on a spread estimated from 2 or 3
values, and the same sweep on other CPU kernels (ATEN_CPU_CAPABILITY=default
MKL_CBWR=COMPATIBLE, standing in for another machine) moves single runs' best dev losses by up to
0.05 (the demo: circuit LSTM H=128, 0.417 -> 0.466). A comparison just past its threshold then
lands on either side of it from one machine to the next; one that is MARGIN times past it did not
in the demo's runs (docs/reproducing.md). A marginal comparison counts as neither holding nor
contradicting.

A claim's verdict, over its N comparisons of which H hold, C contradict and F are "nothing beat the
best floor": "not decided: nothing beat the best floor" when F = N; otherwise, over the M = N - F
comparisons where a model learned something, "holds" when H > M/2 and C = 0; "does not hold" when
C > M/2 and H = 0; "inconclusive" otherwise (differences within the noise, marginal, single
seeds, mixed evidence, or nothing to compare, e.g. Figure 2's claim with one hidden size per cell;
the table then says what is missing). A comparison where neither side beat the floor is no
evidence for or against the claim, so it does not count in the majority either: when it did, a
claim with one such comparison of four held only if all three others did, and one of them sitting
near its threshold flipped the verdict between machines (docs/reproducing.md).
"""
from __future__ import annotations

import math

from gruv_hpc.analysis.common import finite, mean_std
from gruv_hpc.training import cells

HOLDS, NOT, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
FLOOR = "nothing beat the best floor"  # a comparison's verdict
NOT_DECIDED = "not decided: nothing beat the best floor"  # a claim's verdict
MARGINAL, NUMERICAL = "marginal", "within numerical noise"  # comparisons' verdicts that decide nothing
MARGIN = 1.5  # |D| up to MARGIN x the threshold is marginal (the module's docstring; docs/reproducing.md)
FLOOR_KEYS = ("baseline_dev_loss", "persistence_dev_loss", "linear_dev_loss")  # the floors' columns


def _flag(v) -> bool | None:
    """A results.csv boolean (True, "True", "False", ""), None when unknown."""
    if v is None or v == "":
        return None
    return v if isinstance(v, bool) else str(v).strip().lower() in ("true", "1")


def side_beats_floor(rows: list[dict]) -> bool | None:
    """Whether a side (the runs of one group) beats the best floor: by the paired per-clip
    intervals when its rows carry them (every run's below 0), else by its mean best dev loss
    against the lowest floor; None when there is nothing to judge by."""
    flags = [f for f in (_flag(r.get("beats_floor")) for r in rows) if f is not None]
    if flags:
        return all(flags)
    floors = [min(v) for v in ([x for k in FLOOR_KEYS for x in finite([r.get(k)])] for r in rows) if v]
    m, _, n = mean_std(r.get("best_dev_loss") for r in rows)
    if not floors or not n:
        return None
    return m < min(floors)


def beats_floor(*sides: list[dict]) -> bool:
    """Whether some side beats the best floor (``side_beats_floor``; True when no side has a
    floor or a dev loss: nothing to judge by)."""
    known = [b for b in (side_beats_floor(rows) for rows in sides) if b is not None]
    return not known or any(known)


def compare(a, b, expect: str, noise: float = 0.0, margin: float = MARGIN) -> dict:
    """One comparison of values ``a`` against ``b`` (one per seed); ``expect``: "<" or ">", the
    sign of mean(a) - mean(b) the claim predicts; ``noise``: the numerical noise measured. The
    rule is the module's docstring."""
    from scipy.stats import t as student_t
    a, b = finite(a), finite(b)
    ma, sa, na = mean_std(a)
    mb, sb, nb = mean_std(b)
    res = {"a_mean": ma, "a_std": sa, "n_a": na, "b_mean": mb, "b_std": sb, "n_b": nb,
           "effect": None, "spread": None, "threshold": None, "verdict": None}
    if not na or not nb:
        return res
    res["effect"] = d = ma - mb
    if na < 2 or nb < 2:
        res["verdict"] = "one seed"
        return res
    s = math.sqrt(((na - 1) * sa ** 2 + (nb - 1) * sb ** 2) / (na + nb - 2))
    res["spread"] = s
    res["threshold"] = thr = float(student_t.ppf(0.975, na + nb - 2)) * s * math.sqrt(1 / na + 1 / nb)
    if abs(d) <= thr:
        res["verdict"] = "within noise"
    elif abs(d) <= noise:
        res["verdict"] = NUMERICAL
    elif abs(d) <= margin * thr:
        res["verdict"] = MARGINAL
    else:
        res["verdict"] = "holds" if (d < 0) == (expect == "<") else "contradicts"
    return res


def verdict(comparisons: list[dict], margin: float = MARGIN) -> tuple[str, str]:
    """A claim's verdict over its comparisons, and the counts behind it."""
    made = [c for c in comparisons if c["verdict"]]
    n = len(made)
    k = {v: sum(c["verdict"] == v for c in made)
         for v in ("holds", "contradicts", "within noise", "one seed", FLOOR, MARGINAL, NUMERICAL)}
    why = (f"{n} comparison(s): {k['holds']} hold, {k['contradicts']} contradict, {k['within noise']} within the noise "
           f"between seeds, {k['one seed']} with one seed"
           + (f", {k[MARGINAL]} marginal (within {margin:g}x the noise threshold)" if k[MARGINAL] else "")
           + (f", {k[NUMERICAL]} within the numerical noise" if k[NUMERICAL] else "")
           + (f", {k[FLOOR]} where neither side beat the best floor (of the train mean, persistence and a linear "
              "predictor per bin)" if k[FLOOR] else ""))
    if n and k[FLOOR] == n:
        return NOT_DECIDED, why
    m = n - k[FLOOR]  # the comparisons where a side learned something: the majority is of these
    if k["holds"] > m / 2 and not k["contradicts"]:
        return HOLDS, why
    if k["contradicts"] > m / 2 and not k["holds"]:
        return NOT, why
    return INCONCLUSIVE, why


def _num(v) -> str:
    return "nan" if v is None else f"{v:.4g}"


def _side(name: str, m, s) -> str:
    return f"{name} {_num(m)}" + (f" ± {s:.2g}" if s is not None else "")


def _evidence(c: dict, name_a: str, name_b: str) -> str:
    seeds = "one seed each" if c["n_a"] == c["n_b"] == 1 else f"{c['n_a']} vs {c['n_b']} seeds"
    text = (f"{c['label']}: {_side(name_a, c['a_mean'], c['a_std'])} vs {_side(name_b, c['b_mean'], c['b_std'])} "
            f"({seeds}), D = {c['effect']:+.2g}")
    if c["threshold"] is not None:
        text += f", noise threshold {c['threshold']:.2g}"
    return text + f": {c['verdict']}"


def _key(r: dict, *drop: str) -> tuple:
    """What makes two rows the same grid point (but for the seed and ``drop``), in an order that
    sorts by artist, then numerically by hidden size."""
    val = {"artists": r.get("artists") or "", "cell": r.get("cell") or "", "hidden": int(r.get("hidden") or 0),
           "variant": r.get("variant") or ""}
    return tuple(val[k] for k in ("artists", "hidden", "cell", "variant") if k not in drop)


def _label(r: dict, *drop: str) -> str:
    parts = [r["artists"]] + ([cells.label(r["cell"])] if "cell" not in drop else []) + \
            ([f"H={r['hidden']}"] if "hidden" not in drop else []) + ([r["variant"]] if r.get("variant") else [])
    return " ".join(str(p) for p in parts)


def _claim(text: str, comparison: str, comps: list[dict], name_a: str, name_b: str, missing: str,
           margin: float = MARGIN) -> dict:
    comps = [c for c in comps if c["verdict"]]
    if comps:
        v, why = verdict(comps, margin)
    else:
        v, why = INCONCLUSIVE, missing
    lines = [_evidence(c, name_a, name_b) for c in comps]
    return {"claim": text, "comparison": comparison, "verdict": v, "why": why, "comparisons": comps, "lines": lines,
            "evidence": "; ".join(lines) or missing}


def _cells(rows: list[dict], key: str, a_cell: str, b_cell: str, expect: str, noise: float = 0.0,
           margin: float = MARGIN) -> list[dict]:
    """Cell A against cell B at every (artist, hidden size, other grid values) where both ran."""
    out = []
    groups: dict[tuple, dict[str, list]] = {}
    for r in rows:
        groups.setdefault(_key(r, "cell"), {}).setdefault(r["cell"], []).append(r)
    for k, by_cell in sorted(groups.items()):
        if a_cell in by_cell and b_cell in by_cell:
            c = compare([r.get(key) for r in by_cell[a_cell]], [r.get(key) for r in by_cell[b_cell]], expect, noise, margin)
            if c["verdict"] and not beats_floor(by_cell[a_cell], by_cell[b_cell]):
                c["verdict"] = FLOOR
            out.append({"label": _label(by_cell[a_cell][0], "cell"), **c})
    return out


def claims(rows: list[dict], noise: float = 0.0, margin: float = MARGIN) -> list[dict]:
    """rows: results.csv rows (dicts: artists, cell, hidden, variant, seed, best_dev_loss,
    flatness, in_band_energy, the floors' columns); one per run, the seeds of a group as separate
    rows. ``noise``: the numerical noise of a dev loss the analysis measured (report.numerical_noise):
    smaller dev-loss differences are never decided. ``margin``: MARGIN unless a study varies it
    (bench/demo_kernels.py)."""
    lstm, gru = cells.PAPER_LSTM, cells.PAPER_GRU  # the paper's two cells: its claims are about them
    L, G = cells.label(lstm), cells.label(gru)
    out = [_claim(f"The {L}'s dev loss is below the {G}'s (paper: a little lower)",
                  f"best dev loss, {L} minus {G}, at each artist and hidden size (expected D < 0)",
                  _cells(rows, "best_dev_loss", lstm, gru, "<", noise, margin), L, G,
                  f"no {L}/{G} pair with a dev loss", margin)]
    # Dev loss against hidden size: each hidden size against the next smaller one.
    series: dict[tuple, dict[int, list]] = {}
    for r in rows:
        series.setdefault(_key(r, "hidden"), {}).setdefault(int(r["hidden"]), []).append(r)
    comps, sizes = [], set()
    for k, by_h in sorted(series.items()):
        hs = sorted(h for h, rs in by_h.items() if finite(r.get("best_dev_loss") for r in rs))
        sizes.add(len(hs))
        for lo, hi in zip(hs, hs[1:]):
            c = compare([r.get("best_dev_loss") for r in by_h[hi]], [r.get("best_dev_loss") for r in by_h[lo]], "<", noise,
                        margin)
            if c["verdict"] and not beats_floor(by_h[hi], by_h[lo]):
                c["verdict"] = FLOOR
            first = by_h[hi][0]
            comps.append({"label": f"{_label(first, 'hidden')} H={lo}->{hi}", **c})
    missing = ("needs at least 2 hidden sizes per cell; this sweep has " +
               (f"at most {max(sizes)} with a dev loss" if sizes else "no dev loss yet"))
    out.append(_claim("Dev loss falls as the hidden size grows (Figure 2)",
                      "best dev loss at each hidden size minus the next smaller one, per artist and cell (expected D < 0)",
                      comps, "larger H", "smaller H", missing, margin))
    out.append(_claim(f"The {G}'s output is flatter (noisier) than the {L}'s (paper: {G} sounds like noise)",
                      f"spectral flatness of generated audio over the band that holds 95% of the music's energy (Figure "
                      f"3's), {G} minus {L}, at each artist and hidden size (expected D > 0)",
                      _cells(rows, "flatness", gru, lstm, ">", margin=margin), G, L,
                      f"no generated audio for an {L}/{G} pair", margin))
    if any(finite([r.get("in_band_energy")]) for r in rows):
        out.append(_claim(f"More of the {G}'s predicted energy lies outside the music's band (Figure 3)",
                          f"share of predicted energy inside the band that holds 95% of the true energy (the band of "
                          f"Figure 3 and of the flatness), {G} minus {L} (expected D < 0)",
                          _cells(rows, "in_band_energy", gru, lstm, "<", margin=margin), G, L,
                          f"no {L}/{G} pair in Figure 3", margin))
    return out
