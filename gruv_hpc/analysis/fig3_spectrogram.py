"""Figure 3: mean spectrogram of the dev-set next-block predictions against the ground truth.

For every dev clip the model predicts each next block (teacher-forced, as in the paper's figure);
the magnitudes of the predictions are averaged over the clips, and likewise for the true blocks.
The arrays behind the figure go to fig3_data.npz. The frequency axis is logarithmic (from the
first bin above 0 Hz): on a linear 0-22 kHz axis music below ~1 kHz fills only the bottom 5% of a
panel. Each model panel shows one run, its seed in its title (the lowest seed that could be read);
every seed's in-band share goes to the claims.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gruv_hpc.analysis.common import RunInfo, note, save_fig
from gruv_hpc.plotting import log_frequency_edges
from gruv_hpc.training import cells as cell_registry


def truth_mean_magnitude(ds, max_clips: int | None = None) -> np.ndarray:
    """Mean |Y| over the dev clips: (C, F), computed from the raw (unnormalized) features."""
    n = len(ds) if max_clips is None else min(len(ds), max_clips)
    acc = None
    for i in range(n):
        m = ds.transform.magnitude(ds.features(i)[1:].astype(np.float64))
        acc = m if acc is None else acc + m
    return acc / n


def predicted_mean_magnitude(lr, ds, max_clips: int | None = None, batch: int = 8) -> np.ndarray:
    """Mean |prediction| over the dev clips of ``ds``: (C, F), from ``lr``, a loaded run
    (``generation.load_run``)."""
    import torch

    n = len(ds) if max_clips is None else min(len(ds), max_clips)
    acc = None
    with torch.no_grad():
        for s in range(0, n, batch):
            # Normalized with the run's own statistics (its std_floor), whatever the dataset object's.
            raw_x = np.stack([ds.features(i)[:-1] for i in range(s, min(n, s + batch))])
            pred, _ = lr.model(torch.from_numpy(((raw_x - lr.mean) / lr.std).astype(np.float32)))
            raw = pred.double().numpy() * lr.std + lr.mean
            m = ds.transform.magnitude(raw).sum(axis=0)
            acc = m if acc is None else acc + m
    return acc / n


def band_fraction(truth: np.ndarray, other: np.ndarray, freqs: np.ndarray, energy: float = 0.95) -> tuple[float, tuple]:
    """Share of ``other``'s energy inside the band that holds ``energy`` of the truth's energy."""
    p = (truth**2).mean(axis=0)
    c = np.cumsum(p) / p.sum()
    lo = int(np.searchsorted(c, (1 - energy) / 2))
    hi = int(np.searchsorted(c, 1 - (1 - energy) / 2))
    q = (other**2).mean(axis=0)
    return float(q[lo:hi + 1].sum() / max(q.sum(), 1e-30)), (float(freqs[lo]), float(freqs[hi]))


@dataclass
class Fig3Plan:
    """What Figure 3 needs, gathered before any model is loaded: the hidden size shown, the runs
    drawn (``chosen``), and each artist's dev set, frequency axis and true mean magnitude. The
    runs' predictions are added (``add``) by whoever loads their checkpoints: ``fig3`` itself, or
    the report's one pass over the runs, which also generates their audio from the same load."""
    hidden: int
    max_clips: int | None
    chosen: list[RunInfo]
    artists: list[str]
    cells: list[str]
    dev: dict = field(default_factory=dict)  # artist -> (ClipDataset, freqs, truth); truth None: no dev clips
    predicted: dict = field(default_factory=dict)  # run name -> mean |prediction|, (C, F)
    errors: dict = field(default_factory=dict)  # run name -> why it could not be read

    def wants(self, run: RunInfo) -> bool:
        """Whether ``run``'s prediction is drawn (or counted in the claims)."""
        return any(r.name == run.name for r in self.chosen) and self.dev[run.artist][2] is not None

    def band(self, artist: str) -> tuple[float, float] | None:
        """The band that holds 95% of the artist's true energy (``band_fraction``), None without it."""
        d = self.dev.get(artist)
        if d is None or d[2] is None:
            return None
        return band_fraction(d[2], d[2], d[1])[1]

    def add(self, run: RunInfo, lr) -> None:
        """``run``'s prediction, from ``lr``: the run as ``generation.load_run`` loaded it."""
        from gruv_hpc.errors import GruvError
        try:
            self.predicted[run.name] = predicted_mean_magnitude(lr, self.dev[run.artist][0], self.max_clips)
        except GruvError as e:  # its panel says so, the others are drawn
            self.errors[run.name] = str(e)


def prepare_fig3(runs: list[RunInfo], hidden: int | None = None, max_clips: int | None = 64,
                 datasets=None) -> Fig3Plan | None:
    """Figure 3's plan (None when no run has a checkpoint): its runs, and each artist's dev truth
    (from ``datasets``, the analysis' open datasets, when given)."""
    from gruv_hpc.dataset.clips import ClipDataset
    usable = [r for r in runs if r.has_checkpoint]
    if not usable:
        return None
    hidden = hidden or max(r.hidden for r in usable)
    chosen = [r for r in usable if r.hidden == hidden]
    plan = Fig3Plan(hidden, max_clips, chosen, sorted({r.artist for r in chosen}),
                    sorted({r.cell for r in chosen}, key=cell_registry.order_key))
    for artist in plan.artists:
        cfg = next(r for r in chosen if r.artist == artist).config
        ds = ClipDataset(datasets(cfg["data"], cfg.get("artists"), cfg.get("std_floor")), "dev", normalize=False) \
            if datasets else ClipDataset(cfg["data"], "dev", cfg.get("artists") or None, normalize=False)
        truth = truth_mean_magnitude(ds, max_clips) if len(ds) else None
        plan.dev[artist] = (ds, ds.transform.frequencies(cfg["sample_rate"]) if len(ds) else None, truth)
    return plan


def fig3(runs: list[RunInfo], out_dir, hidden: int | None = None, max_clips: int | None = 64) -> dict:
    """Figure 3 on its own: its runs' checkpoints loaded here (the report shares one load per run
    with the audio: ``prepare_fig3``, ``Fig3Plan.add``, ``draw_fig3``)."""
    from gruv_hpc.analysis.common import load_each
    plan = prepare_fig3(runs, hidden, max_clips)
    if plan is None:
        return {}
    for run, lr, error in load_each([r for r in plan.chosen if plan.wants(r)]):
        if error:
            plan.errors[run.name] = error
        else:
            plan.add(run, lr)
    return draw_fig3(plan, out_dir)


def draw_fig3(plan: Fig3Plan | None, out_dir) -> dict:
    """The figure, fig3_data.npz and the figure's numbers, from a plan whose runs were added."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if plan is None:
        return {}
    hidden, chosen, artists, cells = plan.hidden, plan.chosen, plan.artists, plan.cells
    fig, axes = plt.subplots(len(artists), 1 + len(cells), figsize=(4.2 * (1 + len(cells)), 3.4 * len(artists)), squeeze=False, layout="constrained")
    arrays, data = {}, {"hidden": hidden, "band": {}, "band_runs": {}}
    if plan.errors:
        data["errors"] = dict(plan.errors)
    for row, artist in zip(axes, artists):
        _, freqs, truth = plan.dev[artist]
        if truth is None:
            note(row[0], f"{artist}: the dev split has no clips,\nso there is nothing to predict", data)
            for ax in row[1:]:
                ax.set_axis_off()
            continue
        panels = [("ground truth (dev)", truth)]
        arrays[f"{artist}/truth"] = truth
        for cell in cells:
            # Every seed's in-band energy goes to the claims; the panel shows the lowest seed.
            same = sorted((r for r in chosen if r.artist == artist and r.cell == cell), key=lambda r: r.seed)
            shown = None
            for run in same:
                m = plan.predicted.get(run.name)
                if m is None:  # an unreadable run (in plan.errors)
                    continue
                frac, band = band_fraction(truth, m, freqs)
                data["band_runs"][run.name] = {"in_band_energy": frac, "band_hz": band}
                if shown is None:
                    shown = run
                    arrays[f"{artist}/{cell}"] = m
                    data["band"][f"{artist}/{cell}"] = {"in_band_energy": frac, "band_hz": band, "run": run.name,
                                                        "seed": run.seed}
                    of = f" of {len(same)}" if len(same) > 1 else ""
                    panels.append((f"{cell_registry.label(cell)} (H = {hidden}, seed {run.seed}{of})", m))
            if shown is None:
                panels.append((f"{cell_registry.label(cell)} (H = {hidden})", "no readable run" if same else "no run"))
        arrays["freqs"] = freqs
        vmax = max(20 * np.log10(p.max() + 1e-9) for _, p in panels if not isinstance(p, str))
        for ax, (title, m) in zip(row, panels):
            if isinstance(m, str):
                note(ax, f"{artist}: {title}\n{m}", data)
                continue
            # Bin k drawn from (f_{k-1} f_k)^0.5 to (f_k f_{k+1})^0.5 on a log axis; 0 Hz is left out.
            edges = log_frequency_edges(freqs)
            im = ax.pcolormesh(np.arange(m.shape[0] + 1) + 0.5, edges, 20 * np.log10(m[:, 1:].T + 1e-9), cmap="magma",
                               vmin=vmax - 80, vmax=vmax, shading="flat", rasterized=True)
            ax.set_yscale("log")
            ax.set_ylim(min(20.0, edges[-1] / 2), edges[-1])  # below 20 Hz: nothing a listener hears
            band_hz = data["band"].get(f"{artist}/{title.split()[0].lower()}", {}).get("band_hz")
            if band_hz:  # the band that holds 95% of the true energy, where flatness and in-band share are taken
                for hz in band_hz:
                    ax.axhline(max(hz, edges[0]), color="w", lw=0.8, ls="--", alpha=0.7)
            ax.set_title(f"{artist}: {title}", fontsize=9)
            ax.set_xlabel("block (next-step target)")
            ax.set_ylabel("frequency (Hz, log)")
        fig.colorbar(im, ax=list(row), label="mean magnitude (dB)")
    fig.suptitle("Figure 3: mean spectrogram of dev-set next-block predictions")
    out = Path(out_dir)
    data["files"] = save_fig(fig, out, "fig3_spectrogram")
    np.savez(out / "fig3_data.npz", **arrays)
    data["max_clips"] = plan.max_clips
    return data
