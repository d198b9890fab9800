"""`gruv analyze SWEEP_DIR --out REPORT_DIR`: every analysis stage, then an offline index.html."""
from __future__ import annotations

import errno
import html
import json
import re
import time
from pathlib import Path
from urllib.parse import quote  # a run's name may hold '#', '?' or '%': each path is URL-quoted, then escaped

from gruv_hpc.analysis.audio import run_audio
from gruv_hpc.analysis.baseline import FLOOR_LABELS, FLOORS, against_floors, baselines, model_clip_losses
from gruv_hpc.analysis.claims import MARGIN, NOT_DECIDED, claims, side_beats_floor
from gruv_hpc.analysis.collect import collect, group_rows
from gruv_hpc import swap
from gruv_hpc.analysis.common import Datasets, finite, load_each, load_runs
from gruv_hpc.analysis.data_notes import data_notes_html
from gruv_hpc.config import check_number
from gruv_hpc.errors import ConfigError, GruvError
from gruv_hpc.fsio import dumps
from gruv_hpc.analysis.fig1_loss import fig1
from gruv_hpc.analysis.fig2_hidden import fig2
from gruv_hpc.analysis.fig3_spectrogram import Fig3Plan, draw_fig3, prepare_fig3
from gruv_hpc.analysis.listen import write_listen
from gruv_hpc.generation.rollout import HORIZONS_S, REFERENCES, dev_clips, horizon_key, rollout_horizons


def analyze(sweep_dir, out_dir, listing, hidden: int | None = None, n_seed_clips: int = 2, seed_seconds: float = 10.0,
            max_clips: int = 64, temperature: float = 0.0, log=print) -> dict:
    """The report of a sweep into ``out_dir``. ``temperature``: the continuations are sampled at
    it (``gruv generate --temperature``; 0, the default, is the paper's mean prediction)."""
    check_number("temperature", temperature)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    def stage(name, fn, *args, **kw):
        t = time.time()
        res = fn(*args, **kw)
        timings[name] = time.time() - t
        log(f"  {name}: {timings[name]:.2f} s")
        return res

    skipped: dict[str, str] = {}  # runs too damaged to read, and why: listed in the report
    runs = stage("load", load_runs, listing() if callable(listing) else listing, skipped)
    sizes = sorted({r.hidden for r in runs})
    if hidden is not None and hidden not in sizes:
        raise ConfigError(f"--hidden {hidden}: no run of {sweep_dir} has that hidden size (it has: "
                          f"{', '.join(map(str, sizes))})")
    datasets = Datasets()  # each dataset's manifest read once, shared by the floors, Figure 3 and the runs
    per_clip: dict = {}  # each artist's per-clip floor losses: the paired comparisons' other side
    floor = stage("baseline", baselines, runs, per_clip, datasets)
    f1 = stage("fig1", fig1, runs, out, hidden, floor)
    f2 = stage("fig2", fig2, runs, out, floor)
    plan = stage("fig3 truth", prepare_fig3, runs, hidden, max_clips, datasets)
    vs_floor: dict = {}  # {run: its per-clip comparison with the floors, its rollout horizons}
    audio = stage("models (fig3, audio, floors, rollouts)", each_run, runs, plan, out, n_seed_clips, seed_seconds,
                  per_clip, vs_floor, datasets, temperature)
    f3 = stage("fig3", draw_fig3, plan, out)
    rows = stage("collect", collect, runs, out, audio, f3.get("band_runs"), floor, vs_floor)
    noise = numerical_noise(rows)
    groups = group_rows(rows)
    table = stage("claims", claims, rows, noise["noise"])
    # A completed run without a checkpoint (deleted since) has no audio and no Figure 3 line: say so.
    skipped.update({r.name: f"{r.state}, but it has no checkpoint left in {r.paths.ckpt_dir}" for r in runs
                    if r.state == "COMPLETED" and not r.has_checkpoint and r.name not in skipped})
    summary = {"runs": rows, "groups": groups, "claims": table, "baseline": floor, "numerical_noise": noise, "fig1": f1, "fig2": f2, "fig3": {k: v for k, v in f3.items()},
               "audio": audio, "generation": {"temperature": temperature, "seed_clips": n_seed_clips,
                                               "seed_seconds": seed_seconds}, "skipped_runs": skipped, "timings_s": timings}
    (out / "summary.json").write_text(dumps(json.loads(json.dumps(summary, default=str)), indent=1))  # strict JSON
    stage("listen", write_listen, out, runs, audio)
    stage("html", write_html, out, runs, rows, table, f1, f2, f3, audio, groups, floor, skipped, noise)
    return summary


def each_run(runs, plan: Fig3Plan | None, out: Path, n_seed_clips: int, seed_seconds: float,
             per_clip: dict | None = None, vs_floor: dict | None = None, datasets=None, temperature: float = 0.0) -> dict:
    """The analysis' one pass over the runs' models: each best checkpoint is loaded once
    (``load_each``), for both of its uses, its Figure 3 prediction (added to ``plan``) and its
    audio (``audio.run_audio``; flatness over the band that holds the artist's music, Figure 3's,
    not over empty bins), and, given ``per_clip`` (the floors' per-clip losses), its per-clip dev
    losses against them and its rollout horizons (into ``vs_floor``). Returns the audio: {run:
    {"clips": [...], ...}}, or {"clips": [], "error": why} for a run that cannot be read."""
    audio = {}
    for run, lr, error in load_each(runs, datasets):
        drawn = plan is not None and plan.wants(run)
        if error:  # named in the report (Figure 3's panel and the audio); the others are analysed
            if drawn:
                plan.errors[run.name] = error
            audio[run.name] = {"clips": [], "error": error}
            continue
        if drawn:
            plan.add(run, lr)
        if per_clip is not None and vs_floor is not None and run.artist in per_clip:
            vs_floor[run.name] = floor_and_rollout(run, lr, per_clip[run.artist])
        a = run_audio(run, lr, out, n_seed_clips, seed_seconds, band_hz=plan.band(run.artist) if plan else None,
                      temperature=temperature)
        if a:
            audio[run.name] = a
    return audio


def floor_and_rollout(run, lr, per: dict) -> dict:
    """A run's best checkpoint against its artist's floors, clip by clip (``baseline.against_floors``),
    and its rollout horizons on dev (``rollout.rollout_horizons``)."""
    dev = lr.data.split("dev")
    recorded = run.best_dev if lr.ckpt_path.name == "best.pt" else None  # another checkpoint: no noise to measure
    row = against_floors(model_clip_losses(lr.model, dev), per, recorded)
    clips, fps = dev_clips(lr.data)
    if clips is not None:
        row.update(rollout_horizons(lr.model, clips, fps))
    return row


def numerical_noise(rows: list[dict]) -> dict:
    """The numerical noise this analysis measured: the largest difference between a best
    checkpoint's dev loss evaluated here and the one training recorded (other threads, batch
    sizes, kernels), with the thread count it ran on."""
    import torch
    seen = finite(r.get("eval_noise") for r in rows)
    return {"noise": max(seen) if seen else 0.0, "runs": len(seen), "threads": torch.get_num_threads()}


# What a report made before reports carried a marker (swap.MARKER) holds at its top level: such a
# folder is still recognised as a report (its summary.json must be one too), anything else is not.
LEGACY_REPORT = re.compile(r"(index\.html|summary\.json|results\.csv|listen\.html|fig3_data\.npz|audio|listen|"
                           r"fig\d\w*\.(png|pdf|svg))")


def _check_report_dir(out: Path) -> None:
    """``out`` may be replaced: it is empty, or a report whose marker lists everything in it (or one
    made before the marker, nothing else beside it). Anything else is refused by name."""
    if not out.is_dir() or not any(out.iterdir()):
        return
    extra = swap.unlisted(out)
    if extra is None:
        names = sorted(p.name for p in out.iterdir())
        try:
            legacy = {"runs", "claims", "timings_s"} <= set(json.loads((out / "summary.json").read_text()))
        except (OSError, ValueError, TypeError):
            legacy = False
        extra = [n for n in names if not (legacy and LEGACY_REPORT.fullmatch(n))]
        if extra:
            raise ConfigError(f"--out {out}: not a report (no {swap.MARKER}) and it holds {', '.join(extra[:5])}"
                              f"{' ...' if len(extra) > 5 else ''}, which gruv analyze would delete: give a new or "
                              "empty directory")
    elif extra:
        raise ConfigError(f"--out {out}: {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''} not written by gruv "
                          f"analyze (not in {swap.MARKER}), and the report is replaced whole: move them out of "
                          f"{out}, or give another --out")


def analyze_atomic(sweep_dir, out_dir, listing, log=print, **kw) -> dict:
    """``analyze`` into a staging folder of this process beside ``out_dir``, then swapped into place
    (``gruv_hpc.swap.replace_dir``): a killed analysis leaves the previous report whole; a second
    analysis of the same ``out_dir`` (a user's beside the pipeline's) fails at once naming the first;
    a folder that holds anything gruv did not write is never replaced. ``listing``: the sweep's runs
    (``cluster.sweep.analysis_listing``), or a function that reads them once the report is ours."""
    out = Path(out_dir).expanduser().resolve()
    if out == out.parent:
        raise ConfigError(f"--out {out}: the filesystem's root cannot be a report directory; give a new directory")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return swap.replace_dir(out, f"report {out}", lambda staging: analyze(sweep_dir, staging, listing, log=log, **kw),
                                check=_check_report_dir, foreign=swap.unlisted_top)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM):
            raise
        raise GruvError(f"--out {out}: {e.filename or out}: {e.strerror}; nothing was written (the report in {out}, if "
                        "any, is as it was)") from None


def _fmt(v):
    if v is None or v == "":
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


# The results table on the page: the columns to compare runs by (every column is in results.csv),
# then the diagnostics their registry marks ``page``.
PAGE_RUN_COLUMNS = ["name", "seed", "state", "epochs_done", "final_dev_loss", "best_dev_loss", "baseline_dev_loss",
                    "params", "device_hours"]


def page_columns() -> list[str]:
    from gruv_hpc.generation.diagnostics import names
    return [*PAGE_RUN_COLUMNS, *names("page"), "seeds_converge", "in_band_energy"]


VERDICT_CLASS = {"holds": "good", "does not hold": "bad", "inconclusive": "meh", NOT_DECIDED: "bad"}


def noise_html(noise: dict | None) -> str:
    """The thread count and the numerical noise the analysis measured (``numerical_noise``)."""
    if not noise:
        return ""
    return (f"<p>Numerical noise: this analysis ran on {noise['threads']} thread(s); each best checkpoint's dev loss "
            f"evaluated here differs from the one training recorded by at most {noise['noise']:.2g} (over "
            f"{noise['runs']} run(s)). Dev-loss differences no larger than that are never decided.</p>")


def _hz(hz: float) -> str:
    return f"{hz / 1000:.2f} kHz" if hz >= 1000 else f"{hz:.0f} Hz"


def dominant_html(dom: dict | None, std_floor: float | None) -> str:
    """Why a floor is high, when a few frequency bins carry half of it (gruv_hpc/analysis/baseline.py)."""
    if not dom:
        return ""
    e = html.escape
    hz = [v["hz"] for v in dom["values"]]
    names = ", ".join(f"{v['part']} {_hz(v['hz'])} ({100 * v['share']:.1f}%)" for v in dom["values"])
    more = f" and {dom['n'] - len(dom['values'])} more" if dom["n"] > len(dom["values"]) else ""
    fix = ("; the normalization's std floor is off (std_floor = 0, the paper's z-scoring): a std_floor such as 0.1 "
           "bounds their weight" if not std_floor else "")
    return (f"<br><span class='bad'>{100 * dom['share']:.0f}% of it comes from {dom['n']} of the {dom['of']} stored "
            f"values, {_hz(min(hz))}–{_hz(max(hz))}: {e(names)}{more}. Their train spread is tiny next to dev's: a dev "
            f"song with energy the train songs lack there (more bandwidth, another encoder; `gruv preprocess` warns "
            f"about such songs){e(fix)}.</span>")


def _interval(g_rows: list[dict]) -> str:
    """A group's runs against the best floor, clip by clip: each seed's mean difference and its
    bootstrap interval, and the songs and clips it rests on."""
    parts = [f"{r['floor_diff']:+.3g} [{r['floor_diff_low']:+.3g}, {r['floor_diff_high']:+.3g}]"
             for r in g_rows if r.get("floor_diff_low") is not None]
    if not parts:
        return ""
    r0 = g_rows[0]
    return (f"model minus the best floor, per seed: {', '.join(parts)} (95% bootstrap over {r0['floor_songs']} dev "
            f"song(s), {r0['floor_clips']} clips)")


def baseline_html(groups: list[dict], floor: dict, rows: list[dict] | None = None) -> str:
    """The floors per artist, and each group against the best of them: by the paired per-clip
    interval when the rows carry it (every seed's interval below 0), else by its mean."""
    e = html.escape
    if not floor:
        return ""
    items = []
    for artist, b in sorted(floor.items()):
        if b.get("error"):
            items.append(f"<li class='bad'>{e(artist)}: not computed: {e(b['error'])}</li>")
        elif b.get("dev_loss") is None:
            items.append(f"<li>{e(artist)}: the dev split has no clips</li>")
        else:
            values = {k: b.get(k + "_dev_loss", b["dev_loss"] if k == "mean" else None) for k in FLOORS}
            mine = [g for g in groups if g["artists"] == artist and g["best_dev_loss_mean"] is not None]
            lines, above = [], []
            for g in mine:
                g_rows = [r for r in rows or [] if r["group"] == g["group"]]
                beats = side_beats_floor(g_rows or [{"baseline_dev_loss": values["mean"], **{f"{k}_dev_loss": v for k, v in
                                                     values.items() if k != "mean"}, "best_dev_loss": g["best_dev_loss_mean"]}])
                if not beats:
                    above.append(g["group"])
                iv = _interval(g_rows)
                if iv:
                    lines.append(f"<li>{e(g['group'])}: <span class='{'good' if beats else 'bad'}'>"
                                 f"{'beats' if beats else 'does not beat'} it</span>: {e(iv)}</li>")
            verdict = (f"<span class='bad'>not beaten by {len(above)} of {len(mine)} group(s): {e(', '.join(above))}</span>"
                       if above else f"<span class='good'>every group ({len(mine)}) beats the best floor</span>" if mine
                       else "no group has a dev loss yet")
            floors = ", ".join(f"{FLOOR_LABELS[k]} {v:.4g}" for k, v in values.items() if v is not None)
            best = f" (best: {b['best_floor']})" if b.get("best_floor") else ""
            items.append(f"<li>{e(artist)}: {e(floors)}{e(best)} over {b['dev_clips']} dev "
                         f"clips of {b.get('dev_songs', '?')} song(s); {verdict}"
                         f"{dominant_html(b.get('dominant'), b.get('std_floor'))}"
                         + (f"<ul>{''.join(lines)}</ul>" if lines else "") + "</li>")
    return ("<h2 id='floor'>The floors: what the representation allows without learning music</h2><p>Three predictors "
            "fitted on the train songs only and scored on dev in the model's units: the train mean (column "
            "<code>baseline_dev_loss</code>), persistence, the next frame equal to the current one "
            "(<code>persistence_dev_loss</code>), and a linear map per frequency bin from the current frame "
            "(<code>linear_dev_loss</code>); the grey lines in Figures 1 and 2. A group beats the best of them when "
            "each of its seeds' best checkpoints does, clip by clip: the mean of (model minus floor) over the dev "
            "clips, with a 95% bootstrap interval that resamples dev songs and the clips within them, lies wholly "
            "below 0 (columns <code>floor_diff</code>, <code>floor_diff_low</code>, <code>floor_diff_high</code>). "
            "A group that does not has learned nothing about unseen songs that these do not know.</p><ul>"
            + "".join(items) + "</ul>")


def rollout_html(rows: list[dict]) -> str:
    """Each run's free-running error at the rollout horizons against persistence and the mean."""
    e = html.escape
    hs = [h for h in HORIZONS_S if any(r.get(horizon_key(h, "model")) is not None for r in rows)]
    if not hs:
        return ""
    head = "".join(f"<th>{h:g} s: model</th><th>persistence</th><th>mean</th>" for h in hs)
    body = []
    for r in rows:
        if all(r.get(horizon_key(h, "model")) is None for h in hs):
            continue
        cells_ = []
        for h in hs:
            m, p, z = (r.get(horizon_key(h, k)) for k in REFERENCES)
            bad = m is not None and min(x for x in (p, z) if x is not None) < m if (p is not None or z is not None) else False
            cells_.append(f"<td class='{'bad' if bad else 'good'}'>{_fmt(m)}</td><td>{_fmt(p)}</td><td>{_fmt(z)}</td>")
        body.append(f"<tr><td class='left'>{e(r['name'])}</td>{''.join(cells_)}</tr>")
    return ("<h2 id='rollout'>Rollout horizons</h2><p>Each dev clip's first frames are read, then the model runs "
            "on its own predictions, as in generation; at each horizon (seconds after the last frame it read) its "
            "frame's MSE against the true one, beside repeating the last frame read (persistence) and the train "
            "mean, on the same frames (<code>gruv_hpc/generation/rollout.py</code>; columns <code>rollout_*</code>). Red: "
            "worse than one of them.</p><div class='scroll'><table><tr><th>run</th>" + head + "</tr>"
            + "".join(body) + "</table></div>")


def convergence_html(audio: dict) -> str:
    """Do continuations from different seed clips of one run converge to the same output?"""
    e = html.escape
    rows = [(n, a["convergence"]) for n, a in audio.items() if a.get("convergence")]
    if not rows:
        return ""
    same = [n for n, c in rows if c["converged"]]
    parts = ["<h2>Do different seeds end the same?</h2><p>For each run, its continuations of different dev seed clips: "
             "how alike their endings are (cosine of the normalized features of the last frames, best match among the "
             "last 8, mean over pairs), against the same measure between the seeds they started from, and the spread "
             "of their levels. A run <b>converges</b> when its endings are within cosine 0.9 of each other and more "
             "alike than their seeds: it plays the same thing whatever it was given. "
             f"<span class='{'bad' if same else 'good'}'>{len(same)} of {len(rows)} run(s) converge.</span></p>"
             "<div class='scroll'><table><tr><th>run</th><th>clips</th><th>ending cosine</th><th>seeds' ending "
             "cosine</th><th>level spread (dB)</th><th>verdict</th></tr>"]
    for n, c in rows:
        verdict = "<span class='bad'>converge to the same output</span>" if c["converged"] else \
            "<span class='good'>stay distinct</span>"
        parts.append(f"<tr><td class='left'>{e(n)}</td><td>{c['clips']}</td><td>{c['end_cosine']:.3f}</td>"
                     f"<td>{c['seed_end_cosine']:.3f}</td><td>{_fmt(c['level_spread_db'])}</td>"
                     f"<td class='left'>{verdict}</td></tr>")
    return "".join(parts) + "</table></div>"


def write_html(out: Path, runs, rows, table, f1, f2, f3, audio, groups: list[dict] | None = None,
               floor: dict | None = None, skipped: dict | None = None, noise: dict | None = None) -> Path:
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>GRUV sweep report</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;vertical-align:top}th{background:#eee;text-align:left}img{max-width:100%}"
             ".scroll{overflow-x:auto;max-width:100%}.left{text-align:left}.bad{color:#b00}.good{color:#070}.meh{color:#875}"
             "audio{width:240px}.spec{display:block;width:360px;height:90px}ul.cmp{margin:0;padding-left:1.2em}"
             "</style></head><body>",
             "<h1>GRUV sweep report</h1>"]
    missing = [r for r in rows if r["state"] != "COMPLETED"]
    if missing:
        parts.append("<h2>Runs not completed</h2><ul>")
        for r in missing:
            parts.append(f"<li class='bad'>{e(r['name'])}: {e(r['state'])} (epoch {r['epochs_done']}/{r['epochs']})"
                         f"{' – ' + e(r['error']) if r['error'] else ''}</li>")
        parts.append("</ul>")
    unreadable = {**(f3.get("errors") or {}), **{n: a["error"] for n, a in audio.items() if a.get("error")},
                  **(skipped or {})}
    if unreadable:
        parts.append("<h2>Runs that could not be analysed</h2><ul>")
        parts.extend(f"<li class='bad'>{e(n)}: {e(msg)}</li>" for n, msg in sorted(unreadable.items()))
        parts.append("</ul>")
    seeds = max((len({r["seed"] for r in rows if r["group"] == g}) for g in {r["group"] for r in rows}), default=0)
    parts.append("<h2>The paper's claims against this sweep</h2>"
                 f"<p>Each difference is judged against the spread between seeds ({seeds} seed{'s' if seeds != 1 else ''} per "
                 "grid point here): "
                 "D is the difference of the seed means, and it counts only beyond the noise threshold of a two-sample "
                 "t-test at 5% (see <code>gruv_hpc/analysis/claims.py</code>). A difference within the noise, or one from a "
                 "single seed, is inconclusive, never a “no”; so is a <b>marginal</b> one, beyond the threshold "
                 f"by less than {MARGIN:g}&times; it (where another machine's kernels can move it back), and one "
                 "no larger than the numerical noise below. One where neither model beats <a href='#floor'>the "
                 "best floor</a> (of the train mean, persistence and a linear predictor per bin) is not decided: "
                 "nothing was learned to compare.</p>" + noise_html(noise) +
                 "<div class='scroll'><table><tr><th>claim</th><th>verdict</th><th>comparison</th><th>evidence</th></tr>")
    for c in table:
        items = "".join(f"<li>{e(x)}</li>" for x in c["lines"]) if c["lines"] else e(c["evidence"])
        floor_link = " (see <a href='#floor'>the floor</a>)" if "floor" in c["why"] else ""
        parts.append(f"<tr><td class='left'>{e(c['claim'])}</td>"
                     f"<td class='left {VERDICT_CLASS.get(c['verdict'], '')}'><b>{e(c['verdict'])}</b><br>{e(c['why'])}"
                     f"{floor_link}</td>"
                     f"<td class='left'>{e(c['comparison'])}</td><td class='left'><ul class='cmp'>{items}</ul></td></tr>")
    parts.append("</table></div>")
    parts.append(baseline_html(groups or [], floor or {}, rows))
    parts.append(data_notes_html(runs))  # (in the floor section: what it rests on)
    parts.append(rollout_html(rows))
    for title, data, why in (("Figure 1: train and dev loss", f1, "finished an epoch"),
                             ("Figure 2: dev loss against hidden size", f2, "a dev loss"),
                             ("Figure 3: mean spectrogram of dev next-block predictions", f3, "a checkpoint")):
        if data.get("files"):
            png = next(f for f in data["files"] if f.endswith(".png"))
            pdf = next(f for f in data["files"] if f.endswith(".pdf"))
            parts.append(f"<h2>{e(title)}</h2><img src='{e(quote(png))}' alt='{e(title)}'><p><a href='{e(quote(pdf))}'>PDF</a></p>")
        else:
            parts.append(f"<h2>{e(title)}</h2><p>Nothing to draw yet: no run has {why}.</p>")
    parts.append("<h2>Results</h2><p>One row per run; every column (grid values, losses, parameters, diagnostics) "
                 "is in <a href='results.csv'>results.csv</a>, and the mean and spread of each group of seeds in "
                 "<a href='summary.json'>summary.json</a> (<code>groups</code>).</p><div class='scroll'><table><tr>" +
                 "".join(f"<th>{e(c)}</th>" for c in page_columns()) + "</tr>")
    for r in rows:
        parts.append("<tr>" + "".join(f"<td{' class=left' if c == 'name' else ''}>{_fmt(r[c])}</td>" for c in page_columns())
                     + "</tr>")
    parts.append("</table></div>")
    parts.append(convergence_html(audio))
    parts.append("<h2>Generated audio</h2><p>Each continuation starts where its seed (a dev clip the model "
                 "never trained on) ends; it is 3&times; the seed's length. The spectrogram shows the seed, then (after "
                 "the white line) the continuation, 0 Hz at the bottom. What each diagnostic means: "
                 "<code>docs/generation.md</code>. "
                 + ("<a href='listen.html'>Listen</a>: each seed and its continuation in one player, level-matched, "
                    "the loop marked; and a blinded LSTM-vs-GRU comparison. " if (out / "listen.html").exists() else "")
                 + "</p><div class='scroll'><table><tr><th>run</th>"
                 "<th>seed clip</th><th>seed</th><th>continuation</th><th>spectrogram and diagnostics</th></tr>")
    for name, a in audio.items():
        for c in a["clips"]:
            parts.append(f"<tr><td class='left'>{e(name)}</td><td>{c['seed_index']}</td>"
                         f"<td><audio controls preload='metadata' src='{e(quote(c['seed_wav']))}'></audio></td>"
                         f"<td><audio controls preload='metadata' src='{e(quote(c['wav']))}'></audio></td>"
                         f"<td class='left'><img class='spec' src='{e(quote(c['png']))}' alt='spectrogram of {e(name)}, seed "
                         f"{c['seed_index']}'>{e(c['words'])}</td></tr>")
    parts.append("</table></div></body></html>")
    path = out / "index.html"
    path.write_text("\n".join(parts))
    return path
