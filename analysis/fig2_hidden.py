"""Figure 2: best dev loss against hidden size (log2 axis), one line per cell, one panel per artist."""
from __future__ import annotations

from pathlib import Path

from gruv_hpc.analysis.common import CELL_COLORS, RunInfo, cli, load_runs, save_fig, with_metrics


def fig2(runs: list[RunInfo], out_dir) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = [r for r in with_metrics(runs) if r.best_dev is not None]
    if not runs:
        return {}
    artists = sorted({r.artist for r in runs})
    fig, axes = plt.subplots(1, len(artists), figsize=(5.5 * len(artists), 4), squeeze=False, layout="constrained")
    data: dict = {"points": {}}
    for ax, artist in zip(axes[0], artists):
        for cell in sorted({r.cell for r in runs if r.artist == artist}):
            pts = sorted((r.hidden, r.best_dev) for r in runs if r.artist == artist and r.cell == cell)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=CELL_COLORS.get(cell), label=cell.upper())
            data["points"][f"{artist}/{cell}"] = pts
        ax.set_xscale("log", base=2)
        ax.set_title(artist)
        ax.set_xlabel("hidden size H (log2)")
        ax.set_ylabel("best dev L2 loss (MSE)")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.suptitle("Figure 2: dev loss against hidden size")
    data["files"] = save_fig(fig, Path(out_dir), "fig2_hidden")
    return data


if __name__ == "__main__":
    a = cli(__doc__).parse_args()
    print(fig2(load_runs(a.sweep_dir), a.out).get("files"))
