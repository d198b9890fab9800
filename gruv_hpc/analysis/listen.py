"""The listening page (REPORT_DIR/listen.html): hear what the numbers say.

- For each grid point (its lowest-seed run with audio): every seed clip, then its continuation, in
  one player, the continuation level-matched to the seed (its RMS brought to the seed's; the gain
  is printed), above a time line that marks where the continuation starts and where it loops.
- A blinded LSTM-vs-GRU section: for each pair of grid points that differ only in the cell, the
  same seed followed by each model's continuation (level-matched the same way), as "A" and "B" in
  random order; the key is in a <details> element, shown on request. The paper's central claim is
  a listening judgment: the page lets a reader make it.

The WAVs go to REPORT_DIR/listen/; the generated audio itself is gruv_hpc/analysis/audio.py's.
"""
from __future__ import annotations

import html
import urllib.parse
import random
from pathlib import Path

import numpy as np

from gruv_hpc.generation.measures import LOOP_LAG_S, LOOP_RUN_S
from gruv_hpc.training import cells

MAX_GAIN_DB = 60.0  # a silent continuation stays silent instead of becoming amplified noise


def level_matched(seed: np.ndarray, cont: np.ndarray) -> tuple[np.ndarray, float]:
    """Seed then continuation, the continuation's RMS made the seed's (at most +MAX_GAIN_DB), the
    whole scaled down together if it would clip. Returns the audio and the gain (dB) applied."""
    def rms(x):
        return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0
    rs, rc = rms(seed), rms(cont)
    gain_db = 0.0 if rc == 0 or rs == 0 else float(np.clip(20 * np.log10(rs / rc), -MAX_GAIN_DB, MAX_GAIN_DB))
    out = np.concatenate([seed, cont * 10 ** (gain_db / 20)]).astype(np.float64)
    peak = float(np.abs(out).max()) if len(out) else 0.0
    if peak > 0.99:
        out *= 0.99 / peak
    return out.astype(np.float32), gain_db


def timeline(seed_s: float, cont_s: float, loop_s: float | None) -> str:
    """A bar as long as the player: the seed, the continuation, and its looping part marked."""
    total = max(seed_s + cont_s, 1e-9)
    pct = lambda s: 100 * s / total  # noqa: E731
    parts = [f"<span class='tl seed' style='width:{pct(seed_s):.2f}%' title='seed, {seed_s:.2f} s'>seed</span>"]
    if loop_s is None:
        parts.append(f"<span class='tl cont' style='width:{pct(cont_s):.2f}%' title='continuation, no loop'>"
                     "continuation</span>")
    else:
        loop_s = min(loop_s, cont_s)
        parts.append(f"<span class='tl cont' style='width:{pct(loop_s):.2f}%' title='continuation before its loop'>"
                     "</span>")
        parts.append(f"<span class='tl loop' style='width:{pct(cont_s - loop_s):.2f}%' title='looping from "
                     f"{seed_s + loop_s:.2f} s'>loop</span>")
    return "<div class='timeline'>" + "".join(parts) + "</div>"


def _read(out_dir: Path, rel: str) -> tuple[np.ndarray, int]:
    import soundfile as sf
    a, sr = sf.read(out_dir / rel, dtype="float32")
    return a, sr


def _write(path: Path, audio: np.ndarray, sr: int) -> None:
    import soundfile as sf
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, sr, subtype="PCM_16")


def _url(rel: str) -> str:
    """A relative path as a link: quoted (a '#', '?' or '%' in a run's name would cut the URL),
    then escaped for the attribute."""
    return html.escape(urllib.parse.quote(rel))


def _player(src: str, label: str) -> str:
    return f"<audio controls preload='metadata' src='{_url(src)}' aria-label='{html.escape(label)}'></audio>"


def _temperature_words(audio: dict) -> str:
    """What the continuations are: the mean prediction, or samples at a temperature."""
    temps = sorted({c.get("temperature") or 0.0 for a in audio.values() for c in a.get("clips", [])})
    if not temps or temps == [0.0]:
        return ("<p>The continuations are the models' <b>mean predictions</b> (temperature 0, the paper's): "
                "deterministic, and they tend to settle into a drone or a loop.</p>")
    return ("<p>The continuations are <b>sampled at temperature " + ", ".join(f"{t:g}" for t in temps) + "</b>: each "
            "fed-back frame is drawn around the prediction with the model's residual spread on its train clips times "
            "the temperature (<code>gruv generate --temperature</code>).</p>")


def write_listen(out_dir, runs, audio: dict, shuffle_seed: int = 0) -> Path | None:
    """listen.html and its WAVs; None when no run has generated audio."""
    from gruv_hpc.generation import describe
    e = html.escape
    out = Path(out_dir)
    by_name = {r.name: r for r in runs}
    groups: dict[str, list] = {}
    for r in sorted(runs, key=lambda r: (r.group, r.seed)):
        if audio.get(r.name, {}).get("clips"):
            groups.setdefault(r.group, []).append(r)
    if not groups:
        return None
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>GRUV: listen</title><style>"
             "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
             ".clip{margin:0 0 1.2em 0}.timeline{display:flex;width:480px;height:16px;font-size:11px;color:#fff;"
             "margin:2px 0}.tl{display:inline-block;overflow:hidden;text-align:center;line-height:16px}"
             ".seed{background:#666}.cont{background:#2a7}.loop{background:repeating-linear-gradient(45deg,#c33,#c33 "
             "4px,#e66 4px,#e66 8px)}audio{width:480px;display:block}.words{font-size:13px;color:#333}"
             ".spec{display:block;width:480px;height:90px}details{margin:.3em 0 1em 0}h3{margin-bottom:.2em}"
             "</style></head><body><h1>Listen</h1>"
             "<p>Each player plays a seed (a dev clip the model never trained on), then the model's continuation "
             "of it. The continuation is <b>level-matched</b>: its RMS is brought to the seed's, so a quiet "
             "continuation is heard, not missed (the gain is given; the files as generated are in "
             "<code>audio/</code>). The bar under each player is its time line: grey the seed, green the "
             "continuation, red stripes from where it loops (frames each within cosine 0.95 of one at least "
             f"{LOOP_LAG_S:g} s earlier, for {LOOP_RUN_S:g} s in a row; the paper's 0.25 s blocks: 8 in a row). "
             "<a href='index.html'>Back to the report</a>.</p>", _temperature_words(audio)]
    blind = _blind_pairs(groups, by_name, audio)
    if blind:
        parts.append("<p><a href='#blind'>The blinded LSTM-vs-GRU comparison</a> is below the grid points.</p>")
    parts.append("<h2>Every grid point</h2>")
    for group, rs in groups.items():
        run = rs[0]
        parts.append(f"<h3>{e(group)}</h3><p class='words'>run {e(run.name)} (seed {run.seed}; "
                     f"{len(rs)} seed(s) in the group)</p>")
        for c in audio[run.name]["clips"]:
            seed, sr = _read(out, c["seed_wav"])
            cont, _ = _read(out, c["wav"])
            mix, gain = level_matched(seed, cont)
            rel = f"listen/{run.name}/seed{c['seed_index']}.wav"
            _write(out / rel, mix, sr)
            loop = c.get("loop_onset_s")
            where = "no loop" if loop is None else f"loops from {len(seed) / sr + loop:.2f} s in the player"
            parts.append(f"<div class='clip'><b>seed clip {c['seed_index']}</b> ({len(seed) / sr:.2f} s of seed, "
                         f"{len(cont) / sr:.2f} s of continuation; continuation gain {gain:+.1f} dB; {e(where)})"
                         + _player(rel, f"{run.name} seed {c['seed_index']}")
                         + timeline(len(seed) / sr, len(cont) / sr, loop)
                         + (f"<img class='spec' src='{_url(c['png'])}' alt='spectrogram'>" if c.get("png") else "")
                         + f"<div class='words'>{e(c.get('words') or describe(c, c.get('clipped_samples', 0)))}</div>"
                         "</div>")
    if blind:
        parts.append(_blind_html(blind, out, random.Random(shuffle_seed)))
    parts.append("</body></html>")
    path = out / "listen.html"
    path.write_text("\n".join(parts))
    return path


def _blind_pairs(groups: dict, by_name: dict, audio: dict) -> list[dict]:
    """(LSTM run, GRU run, seed clip) for every two grid points that differ only in the cell; the
    lowest training seed both have, and every dev seed clip both continued."""
    key = lambda r: (r.artist, r.hidden, r.variant, r.config.get("layers", 1))  # noqa: E731
    lstm = {key(rs[0]): rs for rs in groups.values() if rs[0].cell == cells.PAPER_LSTM}
    gru = {key(rs[0]): rs for rs in groups.values() if rs[0].cell == cells.PAPER_GRU}
    pairs = []
    for k in sorted(set(lstm) & set(gru), key=str):
        seeds = sorted({r.seed for r in lstm[k]} & {r.seed for r in gru[k]})
        if not seeds:
            continue
        a = next(r for r in lstm[k] if r.seed == seeds[0])
        b = next(r for r in gru[k] if r.seed == seeds[0])
        ca = {c["seed_index"]: c for c in audio[a.name]["clips"]}
        cb = {c["seed_index"]: c for c in audio[b.name]["clips"]}
        for i in sorted(set(ca) & set(cb)):
            pairs.append({"cells": {cells.PAPER_LSTM: a, cells.PAPER_GRU: b},
                          "clips": {cells.PAPER_LSTM: ca[i], cells.PAPER_GRU: cb[i]}, "seed_index": i,
                          "what": f"{a.artist}, H = {a.hidden}{', ' + a.variant if a.variant else ''}"})
    return pairs


def _blind_html(pairs: list[dict], out: Path, rng: random.Random) -> str:
    e = html.escape
    L, G = cells.label(cells.PAPER_LSTM), cells.label(cells.PAPER_GRU)
    parts = [f"<h2 id='blind'>Blinded: {L} or {G}?</h2><p>Each pair is one seed, continued by an {L} and by a "
             f"{G} of the same size trained the same way, both level-matched to the seed. Which is which is decided "
             "by a coin flip per pair; listen to both, decide, then open the key.</p>"]
    for n, p in enumerate(pairs, 1):
        flip = rng.random() < 0.5
        order = (cells.PAPER_GRU, cells.PAPER_LSTM) if flip else (cells.PAPER_LSTM, cells.PAPER_GRU)
        parts.append(f"<div class='clip'><h3>Pair {n}</h3><p class='words'>{e(p['what'])}, dev seed clip "
                     f"{p['seed_index']}</p>")
        for label, cell in zip("AB", order):
            c = p["clips"][cell]
            seed, sr = _read(out, c["seed_wav"])
            cont, _ = _read(out, c["wav"])
            mix, _ = level_matched(seed, cont)
            rel = f"listen/blind/pair{n}_{label}.wav"
            _write(out / rel, mix, sr)
            parts.append(f"<b>{label}</b>" + _player(rel, f"pair {n} {label}")
                         + timeline(len(seed) / sr, len(cont) / sr, None))
        parts.append(f"<details><summary>Show the key</summary>A = {e(cells.label(order[0]))} "
                     f"({e(p['cells'][order[0]].name)}), B = {e(cells.label(order[1]))} "
                     f"({e(p['cells'][order[1]].name)})</details></div>")
    return "\n".join(parts)
