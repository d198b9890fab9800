"""Figure 2: best dev loss against hidden size (log2 axis), one line per cell, one panel per artist.
Runs that differ only in seed are one point: their mean, with the standard deviation between
seeds as an error bar."""
from __future__ import annotations

from pathlib import Path

from gruv_hpc.training import cells

from gruv_hpc.analysis.baseline import draw_floors
from gruv_hpc.analysis.common import RunInfo, mean_std, note, save_fig


def fig2(runs: list[RunInfo], out_dir, baseline: dict | None = None) -> dict:
    """``baseline``: {artist: {"dev_loss": ...}} (gruv_hpc/analysis/baseline.py), drawn as a dotted line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator, ScalarFormatter
    done = [r for r in runs if r.best_dev is not None]
    if not done:
        return {}
    artists = sorted({r.artist for r in runs})
    fig, axes = plt.subplots(1, len(artists), figsize=(5.5 * len(artists), 4), squeeze=False, layout="constrained")
    data: dict = {"points": {}}
    for ax, artist in zip(axes[0], artists):
        mine = [r for r in done if r.artist == artist]
        if not mine:
            why = "the dev split has no clips" if any(r.history for r in runs if r.artist == artist) else \
                "no run has finished an epoch"
            note(ax, f"{artist}: no dev loss yet\n({why})", data)
            continue
        for cell, variant in sorted({(r.cell, r.variant) for r in mine}, key=lambda cv: (cells.order_key(cv[0]), cv[1])):
            pts = []
            for h in sorted({r.hidden for r in mine if r.cell == cell and r.variant == variant}):
                group = [r for r in mine if r.cell == cell and r.variant == variant and r.hidden == h]
                m, sd, n = mean_std(r.best_dev for r in group)
                pts.append({"hidden": h, "mean": m, "std": sd, "n": n, "runs": sorted(r.name for r in group),
                            "values": [r.best_dev for r in sorted(group, key=lambda r: r.name)]})
            label = cells.label(cell) + (f" {variant}" if variant else "")
            ax.errorbar([p["hidden"] for p in pts], [p["mean"] for p in pts], yerr=[p["std"] or 0 for p in pts],
                        fmt="o-", capsize=4, color=cells.color(cell), label=label)
            data["points"][f"{artist}/{cell}" + (f"/{variant}" if variant else "")] = pts
        draw_floors(ax, (baseline or {}).get(artist), data, artist)
        hs = sorted({r.hidden for r in mine})
        ax.set_xscale("log", base=2)
        ax.set_xticks(hs)
        ax.xaxis.set_major_formatter(ScalarFormatter())  # 256, not 2^8
        ax.xaxis.set_minor_locator(NullLocator())
        seeds = max(len({r.seed for r in mine if r.cell == c and r.hidden == h}) for c in {r.cell for r in mine} for h in hs)
        ax.set_title(artist + (f" (mean ± std over {seeds} seeds)" if seeds > 1 else " (one seed)"))
        ax.set_xlabel("hidden size H (log2)")
        ax.set_ylabel("best dev L2 loss (MSE)")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        if len(hs) < 2:
            ax.text(0.5, 0.05, "one hidden size: no trend to see", ha="center", transform=ax.transAxes, color="0.35")
    fig.suptitle("Figure 2: dev loss against hidden size")
    data["files"] = save_fig(fig, Path(out_dir), "fig2_hidden")
    return data
