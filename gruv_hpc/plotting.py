"""Spectrogram drawing shared by the analysis figures and TensorBoard's generated sample. Only
numpy and matplotlib (Agg, through its object API: no pyplot state, no backend switch), so any
layer may use it."""
from __future__ import annotations

import numpy as np

DB_RANGE = 80.0  # dB below the loudest bin that the colour scale shows
LOWEST_HZ = 20.0  # below this a listener hears nothing; a log axis would spend decades on it


def log_frequency_edges(freqs: np.ndarray) -> np.ndarray:
    """Bin edges for drawing bins ``freqs[1:]`` (0 Hz left out) on a log axis: bin k spans
    (f_{k-1} f_k)^0.5 .. (f_k f_{k+1})^0.5, the first and last as wide (in log) as their neighbours."""
    f = np.asarray(freqs[1:], dtype=np.float64)
    if len(f) < 2:
        raise ValueError(f"a spectrogram needs at least 2 frequency bins above 0 Hz, got {len(f)}")
    return np.sqrt(np.concatenate([[f[0] ** 2 / f[1]], f]) * np.concatenate([f, [f[-1] ** 2 / f[-2]]]))


def to_db(mag: np.ndarray) -> np.ndarray:
    return 20 * np.log10(np.asarray(mag, dtype=np.float64) + 1e-9)


def draw_spectrogram(ax, mag: np.ndarray, freqs: np.ndarray, hop_s: float, vmax_db: float | None = None):
    """Draw ``mag`` ((frames, bins) magnitudes, bins at ``freqs``) on ``ax``: time in seconds
    (one frame per ``hop_s``), frequency in Hz on a log axis, magnitude in dB over ``DB_RANGE``
    below ``vmax_db`` (the loudest bin by default). Returns the mesh, for a colour bar."""
    db = to_db(mag[:, 1:]).T  # (bins, frames)
    vmax = float(np.max(db)) if vmax_db is None else vmax_db
    edges = log_frequency_edges(freqs)
    t = np.arange(mag.shape[0] + 1) * hop_s
    mesh = ax.pcolormesh(t, edges, db, cmap="magma", vmin=vmax - DB_RANGE, vmax=vmax, shading="flat", rasterized=True)
    ax.set_yscale("log")
    lo = LOWEST_HZ if edges[0] < LOWEST_HZ < edges[-1] else edges[0]
    ax.set_ylim(lo, edges[-1])
    from matplotlib import ticker
    ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v / 1000:g}k" if v >= 1000 else f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (Hz, log)")
    return mesh


def spectrogram_image(mag: np.ndarray, freqs: np.ndarray, hop_s: float, title: str = "",
                      mark_s: float | None = None, mark_label: str = "", size: tuple[int, int] = (800, 400)) -> np.ndarray:
    """A labelled spectrogram as an RGB image, (height, width, 3) uint8 of ``size`` (width, height)
    pixels: axes in seconds and Hz, a colour bar in dB, and a dashed line at ``mark_s`` seconds
    (e.g. where a generated continuation starts)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    dpi = 100
    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    mesh = draw_spectrogram(ax, mag, freqs, hop_s)
    fig.colorbar(mesh, ax=ax, label="magnitude (dB)")
    if mark_s is not None:
        ax.axvline(mark_s, color="w", lw=1.2, ls="--")
        if mark_label:
            ax.text(mark_s, 0.98, " " + mark_label, color="w", va="top", ha="left", fontsize=9,
                    transform=ax.get_xaxis_transform())
    if title:
        ax.set_title(title, fontsize=10)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
