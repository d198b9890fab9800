"""Do the demo's verdicts flip on another machine? (issue 30, item 5)

The same demo (./demo.sh, 5 seeds) run twice: once as it comes, once under
``ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE`` (other CPU kernels, standing in for a second
machine). This script reads the two reports, recomputes the claims table of each with
``gruv_hpc.analysis.claims.claims`` (the report's own rule, with the numerical noise each report
measured) for the seeds given (all, or the first 2 or 3: what a smaller demo would have said) and at
several margins, and says which verdicts agree. ``--record DIR`` copies each report's results.csv
and numerical noise into DIR, from which tests/test_claims.py recomputes the verdicts.

    DEMO_OUT=/tmp/d_plain ./demo.sh
    ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE DEMO_OUT=/tmp/d_compat ./demo.sh
    python3 bench/demo_kernels.py /tmp/d_plain/report /tmp/d_compat/report \\
        --results bench/results/demo_kernels_DATE --record bench/results/demo_kernels_DATE
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

from gruv_hpc.analysis import claims as C

NAMES = ("native", "compatible")  # this machine's kernels; ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE


def read(report: Path) -> tuple[list[dict], float]:
    rows = list(csv.DictReader((report / "results.csv").open()))
    noise = json.loads((report / "summary.json").read_text())["numerical_noise"]["noise"]
    return rows, noise


def verdicts(rows: list[dict], noise: float, seeds: list[int] | None = None, margin: float = C.MARGIN) -> list[dict]:
    """The claims table of ``rows`` (only ``seeds``' runs when given), at ``margin``."""
    if seeds is not None:
        rows = [r for r in rows if int(r["seed"]) in seeds]
    return [{"claim": c["claim"], "verdict": c["verdict"], "why": c["why"],
             "comparisons": [(x["label"], x["verdict"], None if not x["threshold"] else abs(x["effect"]) / x["threshold"])
                             for x in c["comparisons"]]}
            for c in C.claims(rows, noise, margin)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("native", type=Path, help="the report of the demo as it comes")
    p.add_argument("compatible", type=Path, help="the report of the demo under the two variables")
    p.add_argument("--results", type=Path, help="write RESULTS.md and RESULTS.json")
    p.add_argument("--record", type=Path, help="copy each report's results.csv and noise into this folder")
    a = p.parse_args()
    data = {n: read(d) for n, d in zip(NAMES, (a.native, a.compatible))}
    all_seeds = sorted({int(r["seed"]) for rows, _ in data.values() for r in rows})
    out = {"seeds": all_seeds, "noise": {n: v[1] for n, v in data.items()}, "cases": []}
    lines = ["# The demo's verdicts on two kernels (issue 30, item 5)", "",
             f"The same demo, {len(all_seeds)} seeds, as it comes ({a.native}) and under `ATEN_CPU_CAPABILITY=default "
             f"MKL_CBWR=COMPATIBLE` ({a.compatible}); the claims recomputed from each report's results.csv with "
             "`gruv_hpc.analysis.claims.claims` and each report's measured numerical noise "
             f"({', '.join(f'{n}: {v[1]:.2g}' for n, v in data.items())}).", "",
             "| seeds | margin | claims that agree | the verdicts (native / compatible) |", "|---|---|---|---|"]
    for k in sorted({2, 3, len(all_seeds)}):
        seeds = all_seeds[:k]
        for margin in (1.0, 1.25, 1.5, 2.0):
            v = {n: verdicts(rows, noise, seeds, margin) for n, (rows, noise) in data.items()}
            agree = sum(x["verdict"] == y["verdict"] for x, y in zip(v["native"], v["compatible"]))
            out["cases"].append({"seeds": seeds, "margin": margin, "agree": agree, "claims": len(v["native"]), **v})
            words = "; ".join(f"{x['verdict']} / {y['verdict']}" + ("" if x["verdict"] == y["verdict"] else " **(flips)**")
                              for x, y in zip(v["native"], v["compatible"]))
            lines.append(f"| {', '.join(map(str, seeds))} | {margin:g} | {agree} of {len(v['native'])} | {words} |")
    lines += ["", "Each comparison's distance past its threshold (|D| / threshold), all seeds, native / compatible:", ""]
    v = {n: verdicts(rows, noise) for n, (rows, noise) in data.items()}
    for x, y in zip(v["native"], v["compatible"]):
        lines.append(f"- {x['claim']}: " + "; ".join(
            f"{lx}: {'–' if rx is None else f'{rx:.2f}'} / {'–' if ry is None else f'{ry:.2f}'}"
            for (lx, _, rx), (_, _, ry) in zip(x["comparisons"], y["comparisons"])))
    md = "\n".join(lines) + "\n"
    print(md)
    if a.results:
        a.results.parent.mkdir(parents=True, exist_ok=True)
        a.results.with_suffix(".md").write_text(md)
        a.results.with_suffix(".json").write_text(json.dumps(out, indent=1))
    if a.record:
        for n, d in zip(NAMES, (a.native, a.compatible)):
            (a.record / n).mkdir(parents=True, exist_ok=True)
            shutil.copy(d / "results.csv", a.record / n / "results.csv")
            (a.record / n / "numerical_noise.json").write_text(
                json.dumps(json.loads((d / "summary.json").read_text())["numerical_noise"]))


if __name__ == "__main__":
    main()
