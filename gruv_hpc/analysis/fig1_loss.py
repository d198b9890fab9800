"""Figure 1: train and dev loss against epoch, GRU and LSTM, one panel per artist, at one hidden size.
Runs that differ only in seed share a colour and differ in marker, each labelled with its seed: the
spread between their curves is the noise. The y axis is logarithmic when a panel's losses span
more than 10x."""
from __future__ import annotations

from pathlib import Path

from gruv_hpc.analysis.baseline import draw_floors
from gruv_hpc.analysis.common import RunInfo, log_y_if_wide, note, save_fig, with_metrics
from gruv_hpc.training import cells

SEED_MARKERS = "osD^v<>p"


def fig1(runs: list[RunInfo], out_dir, hidden: int | None = None, baseline: dict | None = None) -> dict:
    """``baseline``: {artist: {"dev_loss": ...}} (gruv_hpc/analysis/baseline.py), drawn as a dotted line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    if not with_metrics(runs):
        return {}
    hidden = hidden or max(r.hidden for r in with_metrics(runs))
    artists = sorted({r.artist for r in runs})  # every artist of the sweep gets its panel, drawn or not
    chosen = [r for r in with_metrics(runs) if r.hidden == hidden]
    fig, axes = plt.subplots(1, len(artists), figsize=(5.5 * len(artists), 4), squeeze=False, layout="constrained")
    data: dict = {"hidden": hidden, "curves": {}}
    for ax, artist in zip(axes[0], artists):
        mine = sorted((r for r in chosen if r.artist == artist), key=lambda r: (cells.order_key(r.cell), r.seed))
        if not mine:
            note(ax, f"{artist}, H = {hidden}:\nno run with a finished epoch yet", data)
            continue
        seeds_of = sorted({r.seed for r in mine})
        variants = sorted({r.variant for r in mine})  # a sweep's other grid values (predict, lr): told apart
        drawn = []
        for r in mine:
            ep = [h["epoch"] for h in r.history]
            tr = [h["train_loss"] for h in r.history]
            dv = [h["dev_loss"] for h in r.history]
            drawn += tr + dv
            c, name = cells.color(r.cell), cells.label(r.cell)
            mk = dict(marker=SEED_MARKERS[seeds_of.index(r.seed) % len(SEED_MARKERS)], markersize=4,
                      markevery=max(1, len(ep) // 8), linewidth=1.5 if variants.index(r.variant) % 2 == 0 else 0.8)
            who = f"{name} {r.variant} seed {r.seed}" if r.variant else f"{name} seed {r.seed}"  # e.g. predict
            ax.plot(ep, tr, "--", color=c, alpha=0.8, label=f"{who} train", **mk)
            ax.plot(ep, dv, "-", color=c, alpha=0.8, label=f"{who} dev", **mk)
            data["curves"][r.name] = {"artist": artist, "cell": r.cell, "label": name, "color": c, "seed": r.seed,
                                       "variant": r.variant,
                                       "epoch": ep, "train": tr, "dev": dv}
        drawn += draw_floors(ax, (baseline or {}).get(artist), data, artist, "dev, ")
        if log_y_if_wide(ax, drawn):
            data.setdefault("log_y", []).append(artist)
        seeds = len({r.seed for r in mine})
        ax.set_title(f"{artist}, H = {hidden}" + (f" ({seeds} seeds)" if seeds > 1 else ""))
        if all(h["dev_loss"] is None for r in mine for h in r.history):
            data.setdefault("notes", []).append(f"{artist}: no dev loss: the dev split has no clips")
            ax.text(0.5, 0.95, "no dev loss: the dev split has no clips", ha="center", va="top", transform=ax.transAxes)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("L2 loss (normalized features, MSE)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle("Figure 1: training and dev loss")
    data["files"] = save_fig(fig, Path(out_dir), "fig1_loss")
    return data
