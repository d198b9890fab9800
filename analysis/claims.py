"""The paper's claims against this sweep: computed from results, never asserted."""
from __future__ import annotations

import json

import numpy as np

from gruv_hpc.analysis.common import cli


def _spearman(x, y) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    if np.std(rx) == 0 or np.std(ry) == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def _answer(k: int, n: int) -> str:
    if n == 0:
        return "n/a"
    return "yes" if k == n else ("no" if k == 0 else f"partly ({k} of {n})")


def claims(rows: list[dict], band: dict | None = None) -> list[dict]:
    """rows: results.csv rows (dicts). band: fig3's in-band energy per artist/cell."""
    done = [r for r in rows if r.get("best_dev_loss") is not None]
    out = []
    # 1. LSTM below GRU, paired by (artist, hidden)
    pairs = []
    for r in done:
        if r["cell"] != "lstm":
            continue
        g = next((x for x in done if x["cell"] == "gru" and x["artists"] == r["artists"] and x["hidden"] == r["hidden"]), None)
        if g:
            pairs.append((r["artists"], r["hidden"], r["best_dev_loss"], g["best_dev_loss"]))
    k = sum(lstm < gru for _, _, lstm, gru in pairs)
    out.append({"claim": "The LSTM's dev loss is below the GRU's (paper: a little lower)", "answer": _answer(k, len(pairs)),
                "evidence": "; ".join(f"{a} H={h}: LSTM {lv:.4f} vs GRU {gv:.4f}" for a, h, lv, gv in pairs) or "no LSTM/GRU pair"})
    # 2. dev loss falls with hidden size
    groups = {}
    for r in done:
        groups.setdefault((r["artists"], r["cell"]), []).append((r["hidden"], r["best_dev_loss"]))
    ev, k, n = [], 0, 0
    for (a, c), pts in sorted(groups.items()):
        if len({h for h, _ in pts}) < 2:
            continue
        pts.sort()
        rho = _spearman([h for h, _ in pts], [v for _, v in pts])
        n += 1
        k += rho < 0
        ev.append(f"{a}/{c}: " + ", ".join(f"H={h}: {v:.4f}" for h, v in pts) + f" (Spearman {rho:+.2f})")
    out.append({"claim": "Dev loss falls as the hidden size grows", "answer": _answer(k, n),
                "evidence": "; ".join(ev) or "fewer than two hidden sizes per cell"})
    # 3. GRU output noisier (flatter) than LSTM
    fpairs = []
    for r in done:
        if r["cell"] != "lstm" or r.get("flatness") is None:
            continue
        g = next((x for x in done if x["cell"] == "gru" and x["artists"] == r["artists"] and x["hidden"] == r["hidden"]
                  and x.get("flatness") is not None), None)
        if g:
            fpairs.append((r["artists"], r["hidden"], r["flatness"], g["flatness"]))
    k = sum(gf > lf for _, _, lf, gf in fpairs)
    out.append({"claim": "The GRU's output is flatter (noisier) than the LSTM's (paper: GRU sounds like noise)",
                "answer": _answer(k, len(fpairs)),
                "evidence": "; ".join(f"{a} H={h}: spectral flatness LSTM {lf:.3f} vs GRU {gf:.3f}" for a, h, lf, gf in fpairs)
                or "no generated audio for an LSTM/GRU pair"})
    if band:
        ks = [a for a in band if a.endswith("/gru")]
        k = sum(band[a]["in_band_energy"] < band.get(a[:-4] + "/lstm", {}).get("in_band_energy", -1) for a in ks
                if a[:-4] + "/lstm" in band)
        n = sum(a[:-4] + "/lstm" in band for a in ks)
        out.append({"claim": "More of the GRU's predicted energy lies outside the music's band (Figure 3)",
                    "answer": _answer(k, n),
                    "evidence": "; ".join(f"{a}: {v['in_band_energy']:.1%} of energy in {v['band_hz'][0]:.0f}-{v['band_hz'][1]:.0f} Hz"
                                          for a, v in sorted(band.items()))})
    return out


if __name__ == "__main__":
    import csv
    from pathlib import Path
    a = cli(__doc__).parse_args()
    p = Path(a.out) / "results.csv"
    with open(p) as f:
        rows = [{k: (float(v) if k in ("best_dev_loss", "flatness") and v else (int(v) if k == "hidden" else (v or None)))
                 for k, v in r.items()} for r in csv.DictReader(f)]
    print(json.dumps(claims(rows), indent=1))
