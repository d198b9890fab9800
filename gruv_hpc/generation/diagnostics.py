"""The diagnostics of a continuation: one registry, read by every output.

Each ``Diagnostic`` is one named number: its function, its unit, the words ``describe`` says,
and where it goes (TensorBoard during training, a run's mean over its seed clips in the report,
a group's mean and spread over seeds, a column of the report's page). The sidecar (OUT.json),
``describe``, the trainer's TensorBoard sampler, ``analysis.audio.mean_keys``,
``analysis.collect.columns``/``group_numbers``/``row_for`` and ``analysis.report.page_columns``
all read this list, so a diagnostic added here (one ``register`` call) appears in all of them;
``tests/test_diagnostics.py`` follows a throwaway one through every output.

A diagnostic's function takes a ``Continuation`` (the run, the seed and the continuation as
normalized features and as audio) and returns a number or None (not measurable: a silent clip, a
clip with no frame edge). What several share is computed once on the ``Continuation``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np

from gruv_hpc.generation.measures import (click_ratio, loop_stats, music_band, nearest_train, rms_db,
                                          spectral_flatness)


@dataclass
class Continuation:
    """What is measured: ``gen`` and ``seed`` normalized features (T, D), their audio, and the
    band flatness is taken over (``band_hz``; None: the band holding the seed's energy)."""
    run: object              # generation.run.LoadedRun
    seed: np.ndarray
    gen: np.ndarray
    seed_audio: np.ndarray
    gen_audio: np.ndarray
    band_hz: tuple[float, float] | None = None

    @property
    def sample_rate(self) -> int:
        return self.run.cfg.sample_rate

    @cached_property
    def loops(self) -> dict:
        return loop_stats(self.gen)

    @cached_property
    def band(self) -> tuple[float, float] | None:
        return tuple(self.band_hz) if self.band_hz is not None else music_band(self.seed_audio, self.sample_rate)

    @property
    def band_source(self) -> str:
        return "given" if self.band_hz is not None else "seed"

    @cached_property
    def nearest(self) -> dict | None:
        return nearest_train(self.run, self.gen)

    def flatness(self, audio: np.ndarray) -> float:
        return spectral_flatness(audio, self.sample_rate, band_hz=self.band)


@dataclass(frozen=True)
class Diagnostic:
    name: str                                       # the key everywhere: sidecar, results.csv, summary.json, TensorBoard
    fn: Callable[[Continuation], float | None]
    unit: str                                       # "dB", "s", "x", "" (a ratio or fraction)
    help: str                                       # what it means (docs/generation.md's table is tested against these)
    words: Callable[[dict], str | None] | None = None  # describe()'s phrase, from the sidecar's values
    tensorboard: bool = False                       # logged by the trainer's sampler as generated/<name>
    mean: bool = False                              # a run's mean over its seed clips (results.csv)
    group: bool = False                             # a group's mean and spread over seeds (summary.json)
    page: bool = False                              # a column of the report's results table


REGISTRY: dict[str, Diagnostic] = {}


def register(d: Diagnostic) -> Diagnostic:
    if d.name in REGISTRY:
        raise ValueError(f"diagnostic {d.name!r} is registered already")
    REGISTRY[d.name] = d
    return d


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def names(where: str) -> list[str]:
    """The diagnostics that go to ``where``: tensorboard, mean, group or page; in registry order."""
    return [d.name for d in REGISTRY.values() if getattr(d, where)]


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


def _loop_onset_s(c: Continuation) -> float | None:
    step = c.loops["loop_onset_step"]
    return None if step is None else c.run.transform.seconds(step, c.sample_rate)


def _level_change(c: Continuation) -> float | None:
    a, b = rms_db(c.gen_audio), rms_db(c.seed_audio)
    return a - b if math.isfinite(a) and math.isfinite(b) else None


def _loop_words(d: dict) -> str:
    if d.get("loop_onset_s") is None:
        return "no loop"
    return f"loops from {d['loop_onset_s']:.2f} s ({d['loop_fraction']:.0%} of it in loops)"


def _level_words(d: dict) -> str:
    s = "silent" if not _finite(d.get("rms_db")) else f"level {d['rms_db']:.0f} dBFS"
    if _finite(d.get("seed_rms_db")):
        s += f", seed {d['seed_rms_db']:.0f} dBFS"
    if d.get("level_change_db") is not None:
        s += f" ({d['level_change_db']:+.1f} dB)"
    return s


def _click_words(d: dict) -> str | None:
    if d.get("click_ratio") is None:
        return None
    seed = f", seed {d['seed_click_ratio']:.2f}x" if d.get("seed_click_ratio") is not None else ""
    return f"clicks {d['click_ratio']:.2f}x at frame edges{seed}"


def _flatness_words(d: dict) -> str | None:
    if not _finite(d.get("flatness")):
        return None
    band = d.get("flatness_band_hz")
    src = {"seed": "the seed's band", "given": "the band given"}.get(d.get("flatness_band_source"), "")
    where = f" over {band[0]:.0f}-{band[1]:.0f} Hz{', ' + src if src else ''}" if band else ""
    seed = f" (seed {d['seed_flatness']:.3g})" if _finite(d.get("seed_flatness")) else ""
    return f"spectral flatness {d['flatness']:.3g}{seed}{where}"


def _nearest_words(d: dict) -> str | None:
    near = d.get("nearest_train")
    if not near:
        return None
    rel = f", {near['relative']:.2f}x the dev-train distance" if near.get("relative") is not None else ""
    verdict = "COPYING it" if near.get("copying") else \
        f"not a copy: {near['distance_to_mean']:.3g} from the train mean" if "distance_to_mean" in near else ""
    return (f"nearest train: {Path(near['song']).name} at {near['offset_s']:.1f} s "
            f"(distance {near['distance']:.3g}{rel}{'; ' + verdict if verdict else ''})")


def _spectral_words(d: dict) -> str | None:
    v = d.get("spectral_distance")
    return None if not _finite(v) else f"spectrum {v:.2f}x as far from the dev songs' as the seed's"


# -- the registry: one entry per number, in the order the words and columns show them -----------
register(Diagnostic("loop_onset_s", _loop_onset_s, "s",
                    "when the continuation first loops: 8 steps in a row each within cosine 0.95 of an earlier "
                    "frame (None: never)", _loop_words, tensorboard=True, mean=True, group=True, page=True))
register(Diagnostic("loop_fraction", lambda c: c.loops["loop_fraction"], "",
                    "the fraction of the continuation's steps inside such loops", None,
                    tensorboard=True, mean=True, group=True, page=True))
register(Diagnostic("rms_db", lambda c: rms_db(c.gen_audio), "dBFS", "the continuation's RMS level",
                    _level_words, mean=True, group=True, page=True))
register(Diagnostic("seed_rms_db", lambda c: rms_db(c.seed_audio), "dBFS", "the seed's RMS level", mean=True))
register(Diagnostic("level_change_db", _level_change, "dB", "the continuation's level minus the seed's", None,
                    tensorboard=True, mean=True, group=True, page=True))
register(Diagnostic("click_ratio", lambda c: click_ratio(c.gen_audio, c.run.transform.hop), "x",
                    "mean |x[n+1] - x[n]| across frame edges over its mean elsewhere (~1: inaudible edges)",
                    _click_words, tensorboard=True, mean=True, group=True, page=True))
register(Diagnostic("seed_click_ratio", lambda c: click_ratio(c.seed_audio, c.run.transform.hop), "x",
                    "the same for the seed (what the representation's synthesis gives real music)", mean=True))
register(Diagnostic("flatness", lambda c: c.flatness(c.gen_audio), "",
                    "spectral flatness (Wiener entropy of Welch spectra over 0.25 s windows) over the music's band, "
                    "named in flatness_band_hz: ~1 noise, ~0 a few tones", _flatness_words,
                    tensorboard=True, mean=True, group=True, page=True))
register(Diagnostic("seed_flatness", lambda c: c.flatness(c.seed_audio), "", "the same for the seed", mean=True))
register(Diagnostic("flatness_all_bins", lambda c: spectral_flatness(c.gen_audio, c.sample_rate), "",
                    "spectral flatness over the whole spectrum (dominated by the empty band above the music)",
                    mean=True))
register(Diagnostic("nearest_train_distance", lambda c: (c.nearest or {}).get("distance"), "",
                    "mean RMS distance (normalized units) of the continuation's frames to their nearest train frames",
                    _nearest_words, tensorboard=True, mean=True, group=True))
register(Diagnostic("nearest_train_relative", lambda c: (c.nearest or {}).get("relative"), "x",
                    "that distance over the same for dev frames: well below 1 is copying", None,
                    tensorboard=True, mean=True, group=True, page=True))


SPECTRUM_CLIPS = 16   # dev clips (evenly spread) whose mean log spectrum is the reference
SPECTRUM_RANGE_DB = 80.0  # levels more than this below the reference's peak count as that floor


def _mean_log_spectrum(run, raw: np.ndarray) -> np.ndarray:
    """Mean over frames of 20 log10 |X| per bin, from raw (unnormalized) features."""
    mag = run.transform.magnitude(np.asarray(raw, np.float64))
    return (20 * np.log10(mag + 1e-12)).mean(0)


def _dev_log_spectrum(run) -> np.ndarray | None:
    """The run's dev songs' mean log spectrum (its own features, read once per run)."""
    if "dev_log_spectrum" not in run.cache:
        ds = run.data.split("dev", normalize=False)
        idx = np.linspace(0, len(ds) - 1, min(SPECTRUM_CLIPS, len(ds))).round().astype(int) if len(ds) else []
        rows = [ds.features(int(i)) for i in idx]
        run.cache["dev_log_spectrum"] = _mean_log_spectrum(run, np.concatenate(rows)) if rows else None
    return run.cache["dev_log_spectrum"]


def _spectral_distance(c: Continuation) -> float | None:
    """The continuation's mean log spectrum against the dev songs' (RMS over bins, dB, each floored
    SPECTRUM_RANGE_DB below the reference's peak), over the same for the seed: 1 is as far from
    the artist's sound as the seed is; a drone or noise is many times that. From the audio itself:
    both are re-analysed with the run's transform."""
    ref = _dev_log_spectrum(c.run)
    tf = c.run.transform
    if ref is None or tf.n_frames(len(c.gen_audio)) < 1 or tf.n_frames(len(c.seed_audio)) < 1:
        return None
    lo = ref.max() - SPECTRUM_RANGE_DB

    def dist(audio):
        s = _mean_log_spectrum(c.run, tf.features(np.asarray(audio, np.float64)))
        return float(np.sqrt(np.mean((np.maximum(s, lo) - np.maximum(ref, lo)) ** 2)))
    own = dist(c.seed_audio)
    return dist(c.gen_audio) / own if own > 0 else None


register(Diagnostic("spectral_distance", _spectral_distance, "x",
                    "the continuation's mean log spectrum against the dev songs' (RMS dB over bins), over the same "
                    "for the seed: 1 is as far from the artist's sound as the seed; a drone or noise is far above",
                    _spectral_words, tensorboard=True, mean=True, group=True, page=True))


def diagnostics(run, gen: np.ndarray, seed_audio: np.ndarray, gen_audio: np.ndarray,
                band_hz: tuple[float, float] | None = None, seed: np.ndarray | None = None) -> dict:
    """Every registered diagnostic of a continuation, and the details behind them (the loop
    parameters, the band flatness was taken over and where it came from, nearest_train's record):
    the sidecar's "diagnostics". ``band_hz``: the band for flatness (the analysis passes Figure
    3's); None: the band holding the seed's energy."""
    c = Continuation(run, seed if seed is not None else gen[:0], gen, seed_audio, gen_audio, band_hz)
    out = {name: d.fn(c) for name, d in REGISTRY.items()}
    out.update({"loop_onset_step": c.loops["loop_onset_step"], "loop_threshold": c.loops["loop_threshold"],
                "loop_min_run": c.loops["loop_min_run"], "flatness_band_hz": c.band,
                "flatness_band_source": c.band_source if c.band else None,
                "frame_hop": run.transform.hop, "nearest_train": c.nearest})
    return out


def describe(diag: dict, clipped: int) -> str:
    """A generated clip's diagnostics in words, with their units (the CLI and the report say the same)."""
    parts = [w for d in REGISTRY.values() if d.words and (w := d.words(diag))]
    if clipped:
        parts.append(f"clipped {clipped} samples")
    return "; ".join(parts)


def markdown_table() -> str:
    """The registry as docs/generation.md's table (tests/test_diagnostics.py keeps the two equal)."""
    rows = ["| name | unit | what it is | goes to |", "|---|---|---|---|"]
    for d in REGISTRY.values():
        where = ", ".join(w for w, on in (("TensorBoard", d.tensorboard), ("run mean", d.mean),
                                          ("group mean ± std", d.group), ("report table", d.page)) if on)
        rows.append(f"| `{d.name}` | {d.unit or '–'} | {d.help} | {where or 'sidecar only'} |")
    return "\n".join(rows)
