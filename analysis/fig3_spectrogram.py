"""Figure 3: mean spectrogram of the dev-set next-block predictions against the ground truth.

For every dev clip the model predicts each next block (teacher-forced, as in the paper's figure);
the magnitudes of the predictions are averaged over the clips, and likewise for the true blocks.
The arrays behind the figure go to fig3_data.npz.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gruv_hpc.analysis.common import RunInfo, cli, load_runs, note, save_fig


def truth_mean_magnitude(ds, max_clips: int | None = None) -> np.ndarray:
    """Mean |Y| over the dev clips: (C, F), computed from the raw (unnormalized) features."""
    from gruv_hpc.dataset.transforms import magnitude_spectrum
    n = len(ds) if max_clips is None else min(len(ds), max_clips)
    acc = None
    for i in range(n):
        m = magnitude_spectrum(ds.features(i)[1:].astype(np.float64), ds.params["transform"])
        acc = m if acc is None else acc + m
    return acc / n


def predicted_mean_magnitude(run: RunInfo, ds, max_clips: int | None = None, batch: int = 8) -> np.ndarray:
    import torch

    from gruv_hpc.dataset.transforms import magnitude_spectrum
    from gruv_hpc.generate import load_run
    lr = load_run(run.paths.root, "best")
    n = len(ds) if max_clips is None else min(len(ds), max_clips)
    acc = None
    with torch.no_grad():
        for s in range(0, n, batch):
            # Normalized with the run's own statistics (its std_floor), whatever the dataset object's.
            raw_x = np.stack([ds.features(i)[:-1] for i in range(s, min(n, s + batch))])
            pred, _ = lr.model(torch.from_numpy(((raw_x - lr.mean) / lr.std).astype(np.float32)))
            raw = pred.double().numpy() * lr.std + lr.mean
            m = magnitude_spectrum(raw, ds.params["transform"]).sum(axis=0)
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


def fig3(runs: list[RunInfo], out_dir, hidden: int | None = None, max_clips: int | None = 64) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gruv_hpc.dataset.clips import ClipDataset
    from gruv_hpc.errors import GruvError
    from gruv_hpc.dataset.transforms import bin_frequencies
    usable = [r for r in runs if r.has_checkpoint]
    if not usable:
        return {}
    hidden = hidden or max(r.hidden for r in usable)
    chosen = [r for r in usable if r.hidden == hidden]
    artists = sorted({r.artist for r in chosen})
    cells = sorted({r.cell for r in chosen}, key=lambda c: ["lstm", "gru", "lstm-fused"].index(c))
    fig, axes = plt.subplots(len(artists), 1 + len(cells), figsize=(4.2 * (1 + len(cells)), 3.4 * len(artists)), squeeze=False, layout="constrained")
    arrays, data = {}, {"hidden": hidden, "band": {}, "band_runs": {}}
    for row, artist in zip(axes, artists):
        first = next(r for r in chosen if r.artist == artist)
        cfg = first.config
        ds = ClipDataset(cfg["data"], "dev", cfg.get("artists") or None, normalize=False)
        if len(ds) == 0:
            note(row[0], f"{artist}: the dev split has no clips,\nso there is nothing to predict", data)
            for ax in row[1:]:
                ax.set_axis_off()
            continue
        freqs = bin_frequencies(cfg["block_size"], cfg["sample_rate"])
        panels = [("ground truth", truth_mean_magnitude(ds, max_clips))]
        arrays[f"{artist}/truth"] = panels[0][1]
        for cell in cells:
            # Every seed's in-band energy goes to the claims; the panel shows the lowest seed.
            same = sorted((r for r in chosen if r.artist == artist and r.cell == cell), key=lambda r: r.seed)
            shown = None
            for run in same:
                try:
                    m = predicted_mean_magnitude(run, ds, max_clips)
                except GruvError as e:  # an unreadable run: its panel says so, the others are drawn
                    data.setdefault("errors", {})[run.name] = str(e)
                    continue
                frac, band = band_fraction(panels[0][1], m, freqs)
                data["band_runs"][run.name] = {"in_band_energy": frac, "band_hz": band}
                if shown is None:
                    shown = run
                    arrays[f"{artist}/{cell}"] = m
                    data["band"][f"{artist}/{cell}"] = {"in_band_energy": frac, "band_hz": band, "run": run.name}
                    panels.append((f"{cell.upper()} (H = {hidden})", m))
            if shown is None:
                panels.append((f"{cell.upper()} (H = {hidden})", "no readable run" if same else "no run"))
        arrays["freqs"] = freqs
        vmax = max(20 * np.log10(p.max() + 1e-9) for _, p in panels if not isinstance(p, str))
        for ax, (title, m) in zip(row, panels):
            if isinstance(m, str):
                note(ax, f"{artist}: {title}\n{m}", data)
                continue
            im = ax.imshow(20 * np.log10(m.T + 1e-9), origin="lower", aspect="auto", cmap="magma",
                           extent=[1, m.shape[0], freqs[0], freqs[-1]], vmin=vmax - 80, vmax=vmax)
            ax.set_title(f"{artist}: {title}")
            ax.set_xlabel("block (next-step target)")
            ax.set_ylabel("frequency (Hz)")
        fig.colorbar(im, ax=list(row), label="mean magnitude (dB)")
    fig.suptitle("Figure 3: mean spectrogram of dev-set next-block predictions")
    out = Path(out_dir)
    data["files"] = save_fig(fig, out, "fig3_spectrogram")
    np.savez(out / "fig3_data.npz", **arrays)
    data["max_clips"] = max_clips
    return data


if __name__ == "__main__":
    p = cli(__doc__)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--max-clips", type=int, default=64)
    a = p.parse_args()
    print(fig3(load_runs(a.sweep_dir), a.out, a.hidden, a.max_clips).get("files"))
