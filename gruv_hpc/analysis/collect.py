"""collect: the sweep as results.csv, one row per run (run on its own or through `gruv analyze`),
and the groups of runs that differ only in seed (mean and spread of each number; summary.json)."""
from __future__ import annotations

import csv
from pathlib import Path

from gruv_hpc.analysis.baseline import FLOORS
from gruv_hpc.analysis.common import RunInfo, mean_std
from gruv_hpc.generation.rollout import HORIZONS_S, REFERENCES, horizon_key

# The floors (analysis/baseline.py: the artist's, then the run's best checkpoint against them, clip
# by clip) and the rollout horizons (generation/rollout.py).
FLOOR_COLUMNS = ["persistence_dev_loss", "linear_dev_loss", "best_floor", "best_floor_dev_loss", "eval_dev_loss",
                 "eval_noise", "floor_diff", "floor_diff_low", "floor_diff_high", "beats_floor", "floor_songs",
                 "floor_clips", *(f"{k}_diff{s}" for k in FLOORS for s in ("", "_low", "_high")),
                 *(horizon_key(h, r) for h in HORIZONS_S for r in REFERENCES)]
# The columns that are not diagnostics; the diagnostics' come from their registry (``columns``).
RUN_COLUMNS = ["name", "group", "artists", "cell", "hidden", "layers", "seed", "variant", "state", "epochs_done", "epochs",
               "final_train_loss", "final_dev_loss", "best_train_loss", "best_dev_loss", "baseline_dev_loss", *FLOOR_COLUMNS,
               "params", "device", "device_hours", "in_band_energy"]
# The losses a group reports as mean and standard deviation over its seeds (and the registry's ``group`` diagnostics).
GROUP_LOSSES = ["final_dev_loss", "best_dev_loss", "floor_diff", "rollout_1s_model", "best_train_loss", "in_band_energy"]


def columns() -> list[str]:
    """results.csv's columns: the run's, then every diagnostic a run reports a mean of."""
    from gruv_hpc.generation.diagnostics import names
    return [*RUN_COLUMNS, *names("mean"), "seeds_converge", "error"]


def group_numbers() -> list[str]:
    from gruv_hpc.generation.diagnostics import names
    return [*GROUP_LOSSES, *names("group")]


def param_count(config: dict) -> int | None:
    """Exact, from the model itself built on the meta device (no memory, no weights)."""
    import torch

    from gruv_hpc.training.model import GRUVModel
    if not config.get("feature_dim"):
        return None
    with torch.device("meta"):
        m = GRUVModel(config["feature_dim"], config["hidden"], config["cell"], config.get("layers", 1),
                      predict=config.get("predict", "next"), head=config.get("head", "mean"))
    return sum(p.numel() for p in m.parameters())


def row_for(run: RunInfo, diagnostics: dict | None = None, band: dict | None = None, baseline: dict | None = None,
            vs_floor: dict | None = None) -> dict:
    """``baseline``: the floors per artist (gruv_hpc/analysis/baseline.py); ``vs_floor``: each run's
    per-clip comparison with them and its rollout horizons (report.floor_and_rollout)."""
    h = run.history
    meta = run.meta
    last = h[-1] if h else {}
    world = meta.get("world_size", 1)
    row = {"name": run.name, "group": run.group, "artists": run.artist, "cell": run.cell, "hidden": run.hidden,
           "layers": run.config.get("layers", 1), "seed": run.seed, "variant": run.variant, "state": run.state,
           "epochs_done": last.get("epoch", 0),
           "epochs": run.config.get("epochs"), "final_train_loss": last.get("train_loss"),
           "final_dev_loss": last.get("dev_loss"),
           "best_train_loss": min((x["train_loss"] for x in h), default=None), "best_dev_loss": run.best_dev,
           "params": param_count(run.config), "device": meta.get("device", "cpu"),
           "device_hours": last.get("train_time_s", 0.0) * world / 3600 if h else 0.0,
           "error": (run.error or "").strip().splitlines()[-1] if run.error else ""}
    d = (diagnostics or {}).get(run.name, {})
    from gruv_hpc.generation.diagnostics import names
    for k in names("mean"):
        row[k] = d.get(k)
    conv = d.get("convergence")
    row["seeds_converge"] = None if not conv else conv["converged"]
    row["in_band_energy"] = (band or {}).get(run.name, {}).get("in_band_energy")
    row["baseline_dev_loss"] = (baseline or {}).get(run.artist, {}).get("dev_loss")
    b = (baseline or {}).get(run.artist, {})
    mine = (vs_floor or {}).get(run.name, {})
    row.update({k: mine.get(k, b.get(k)) for k in FLOOR_COLUMNS})
    return row


def group_rows(rows: list[dict]) -> list[dict]:
    """One row per group of runs that differ only in seed: its seeds, and for each number its
    mean, its standard deviation between seeds (None with one seed) and how many runs had it."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    out = []
    for name, rs in groups.items():
        g = {"group": name, **{k: rs[0][k] for k in ("artists", "cell", "hidden", "layers", "variant", "baseline_dev_loss", *FLOOR_COLUMNS[:4])},
             "n_seeds": len(rs), "seeds": sorted(r["seed"] for r in rs), "runs": [r["name"] for r in rs],
             "states": sorted({r["state"] for r in rs})}
        for k in group_numbers():
            g[f"{k}_mean"], g[f"{k}_std"], g[f"{k}_n"] = mean_std(r[k] for r in rs)
        out.append(g)
    return out


def collect(runs: list[RunInfo], out_dir, diagnostics: dict | None = None, band: dict | None = None,
            baseline: dict | None = None, vs_floor: dict | None = None) -> list[dict]:
    """``band``: Figure 3's in-band energy per run ({name: {"in_band_energy": ...}}); ``baseline``:
    gruv_hpc/analysis/baseline.py's floors per artist."""
    rows = [row_for(r, diagnostics, band, baseline, vs_floor) for r in runs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        cols = columns()
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r[k] is None else r[k]) for k in cols})
    return rows
