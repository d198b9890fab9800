"""Each song's bandwidth, measured while it is written, and the warning when one artist's songs
differ sharply in it (an encoder's cutoff is not music, yet normalized it can dominate a loss)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

# A song's bandwidth: the frequency below which this share of its energy lies. Not 99%: music's
# energy falls steeply with frequency, so that measures the music (1-8 kHz on one record); the
# last 0.01% is where an encoder's cutoff shows (9.6 kHz for a full song, 4.4 kHz low-passed at 4).
BANDWIDTH_ENERGY = 0.9999
# Songs of one artist whose bandwidths differ by this factor or more are warned about.
BANDWIDTH_RATIO = 1.5


def bandwidth_hz(power: np.ndarray, sample_rate: int, block_size: int) -> float | None:
    """The frequency below which BANDWIDTH_ENERGY of ``power`` lies: the energy of the rfft bins
    of ``block_size``-sample frames, as the transform's ``add_power`` sums it."""
    total = power.sum()
    if not total > 0:
        return None
    k = int(np.searchsorted(np.cumsum(power) / total, BANDWIDTH_ENERGY))
    return float(min(k, len(power) - 1) * sample_rate / block_size)


def warn_bandwidths(songs: list[dict], artists: list[str]) -> list[str]:
    """One warning per artist whose songs differ sharply in bandwidth, naming them and the
    frequency range: normalized with the train songs' statistics, the energy one song has and the
    others lack (an encoder's cutoff, not the music) can dominate the dev loss."""
    out = []
    for a in artists:
        mine = sorted((s for s in songs if s["artist"] == a and not s["skipped"] and s.get("bandwidth_hz")),
                      key=lambda s: s["bandwidth_hz"])
        if len(mine) < 2 or mine[-1]["bandwidth_hz"] < BANDWIDTH_RATIO * mine[0]["bandwidth_hz"]:
            continue
        lo, hi = mine[0]["bandwidth_hz"], mine[-1]["bandwidth_hz"]
        wide = [s for s in mine if s["bandwidth_hz"] >= BANDWIDTH_RATIO * lo]
        name = lambda s: f"{Path(s['path']).name} ({s['bandwidth_hz'] / 1000:.1f} kHz, {s['split']})"  # noqa: E731
        msg = (f"artist {a}: its songs differ sharply in bandwidth ({100 * BANDWIDTH_ENERGY:g}% of the energy below "
               f"{lo / 1000:.1f} to {hi / 1000:.1f} kHz): {', '.join(name(s) for s in wide)} reach "
               f"{lo / 1000:.1f}-{hi / 1000:.1f} kHz where {name(mine[0])} has almost nothing; normalized with the "
               "train songs' statistics that band can dominate the dev loss (training's std_floor bounds it); "
               "other encodings of the same songs, or a low-pass, make the corpus uniform")
        warnings.warn(msg, stacklevel=2)
        out.append(msg)
    return out
