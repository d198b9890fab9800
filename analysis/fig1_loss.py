"""Figure 1: train and dev loss against epoch, GRU and LSTM, one panel per artist, at one hidden size."""
from __future__ import annotations

from pathlib import Path

from gruv_hpc.analysis.common import CELL_COLORS, RunInfo, cli, load_runs, save_fig, with_metrics


def fig1(runs: list[RunInfo], out_dir, hidden: int | None = None) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = with_metrics(runs)
    if not runs:
        return {}
    hidden = hidden or max(r.hidden for r in runs)
    chosen = [r for r in runs if r.hidden == hidden]
    artists = sorted({r.artist for r in chosen})
    fig, axes = plt.subplots(1, len(artists), figsize=(5.5 * len(artists), 4), squeeze=False, layout="constrained")
    data: dict = {"hidden": hidden, "curves": {}}
    for ax, artist in zip(axes[0], artists):
        for r in sorted((r for r in chosen if r.artist == artist), key=lambda r: r.cell):
            ep = [h["epoch"] for h in r.history]
            tr = [h["train_loss"] for h in r.history]
            dv = [h["dev_loss"] for h in r.history]
            c = CELL_COLORS.get(r.cell, None)
            ax.plot(ep, tr, "--", color=c, label=f"{r.cell.upper()} train")
            ax.plot(ep, dv, "-", color=c, label=f"{r.cell.upper()} dev")
            data["curves"][r.name] = {"artist": artist, "cell": r.cell, "epoch": ep, "train": tr, "dev": dv}
        ax.set_title(f"{artist}, H = {hidden}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("L2 loss (normalized features, MSE)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Figure 1: training and dev loss")
    data["files"] = save_fig(fig, Path(out_dir), "fig1_loss")
    return data


if __name__ == "__main__":
    p = cli(__doc__)
    p.add_argument("--hidden", type=int, default=None, help="hidden size to show (default: the largest)")
    a = p.parse_args()
    print(fig1(load_runs(a.sweep_dir), a.out, a.hidden).get("files"))
