"""collect: the sweep as results.csv, one row per run (run on its own or through `gruv analyze`)."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

from gruv_hpc.analysis.common import RunInfo, cli, load_runs

COLUMNS = ["name", "artists", "cell", "hidden", "layers", "state", "epochs_done", "epochs", "final_train_loss",
           "final_dev_loss", "best_train_loss", "best_dev_loss", "params", "device", "device_hours",
           "flatness", "seed_flatness", "loop_onset_s", "loop_fraction", "rms_db", "seed_rms_db", "error"]


def param_count(config: dict) -> int | None:
    """Exact, from the model itself built on the meta device (no memory, no weights)."""
    import torch

    from gruv_hpc.model import GRUVModel
    if not config.get("feature_dim"):
        return None
    with torch.device("meta"):
        m = GRUVModel(config["feature_dim"], config["hidden"], config["cell"], config.get("layers", 1))
    return sum(p.numel() for p in m.parameters())


def row_for(run: RunInfo, diagnostics: dict | None = None) -> dict:
    import json
    h = run.history
    meta = json.loads(run.paths.config.read_text()) if run.paths.config.exists() else {}
    last = h[-1] if h else {}
    world = meta.get("world_size", 1)
    row = {"name": run.name, "artists": run.artist, "cell": run.cell, "hidden": run.hidden,
           "layers": run.config.get("layers", 1), "state": run.state, "epochs_done": last.get("epoch", 0),
           "epochs": run.config.get("epochs"), "final_train_loss": last.get("train_loss"),
           "final_dev_loss": last.get("dev_loss"),
           "best_train_loss": min((x["train_loss"] for x in h), default=None), "best_dev_loss": run.best_dev,
           "params": param_count(run.config), "device": meta.get("device", "cpu"),
           "device_hours": last.get("train_time_s", 0.0) * world / 3600 if h else 0.0,
           "error": (run.error or "").strip().splitlines()[-1] if run.error else ""}
    d = (diagnostics or {}).get(run.name, {})
    for k in ("flatness", "seed_flatness", "loop_onset_s", "loop_fraction", "rms_db", "seed_rms_db"):
        row[k] = d.get(k)
    return row


def collect(sweep_dir, out_dir, diagnostics: dict | None = None, runs: list[RunInfo] | None = None) -> list[dict]:
    runs = runs if runs is not None else load_runs(sweep_dir)
    rows = [row_for(r, diagnostics) for r in runs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r[k] is None else r[k]) for k in COLUMNS})
    return rows


if __name__ == "__main__":
    a = cli(__doc__).parse_args()
    rows = collect(a.sweep_dir, a.out)
    print(f"wrote {Path(a.out) / 'results.csv'} ({len(rows)} runs)")
    sys.exit(0)
