"""``gruv sweep best``: a sweep's best run(s) by a metric of their metrics.jsonl (best_dev_loss by
default), with the run directory and checkpoint that ``gruv generate`` takes.

The runs are read as ``gruv sweep status`` reads them (``status.status``: state, run directory,
a damaged metrics file named); a damaged run, or one with no value of the metric yet, is listed
among the skipped ones, never a crash."""
from __future__ import annotations

import math
import shlex
from pathlib import Path

from gruv_hpc.errors import GruvError
from gruv_hpc.paths import RunPaths, number, read_jsonl
from gruv_hpc.cluster.sweep.state import load_state
from gruv_hpc.cluster.sweep.status import status


def best_runs(sweep_dir, by: str = "best_dev_loss", artist: str | None = None, cell: str | None = None, top: int = 1,
              highest: bool = False) -> dict:
    """{"by", "runs": the ``top`` best, best first (name, state, value, epoch it was reached,
    run_dir, checkpoint, generate: the command line), "skipped": [{name, why}]}. A run's value is
    its lowest (``highest``: highest) finite ``by`` over its epochs."""
    if not isinstance(top, int) or top < 1:
        raise GruvError(f"--top: must be >= 1, got {top}")
    state = load_state(sweep_dir, must_exist=True)
    rows = [r for r in status(sweep_dir) if r["name"] in state.runs]
    everyone: dict = {}  # dataset -> its artists, for runs trained on all of them
    chosen = [r for r in rows if _matches(state.runs[r["name"]].config, artist, cell, everyone)]
    if not chosen:
        have = lambda key: sorted({str(x) for r in state.runs.values() for x in _as_list(r.config.get(key))})  # noqa: E731
        raise GruvError(f"{state.paths.root}: no run matches" + (f" --artist {artist}" if artist else "")
                        + (f" --cell {cell}" if cell else "") + f"; artists: {', '.join(have('artists')) or '-'}; "
                        f"cells: {', '.join(have('cell')) or '-'}")
    ranked, skipped, seen_keys = [], [], set()
    for r in chosen:
        if r["damaged"]:
            skipped.append({"name": r["name"], "why": f"damaged: {r['damaged']}"})
            continue
        paths = RunPaths(r["run_dir"])
        hist = [h for h in read_jsonl(paths.metrics) if isinstance(h, dict)]
        for h in hist:
            seen_keys.update(k for k, v in h.items() if number(v) is not None)
        vals = [(v, h["epoch"]) for h in hist if (v := number(h.get(by))) is not None and math.isfinite(v)]
        if not vals:
            skipped.append({"name": r["name"], "why": f"no {by} in {paths.metrics} yet ({r['state']})"})
            continue
        value, epoch = (max if highest else min)(vals, key=lambda x: x[0])
        ckpt = paths.best if paths.best.is_file() else next(iter(paths.step_ckpts()), None)
        if ckpt is None:
            skipped.append({"name": r["name"], "why": f"no checkpoint in {paths.ckpt_dir} ({r['state']})"})
            continue
        which = [] if ckpt == paths.best else ["--checkpoint", "last"]
        cmd = ["gruv", "generate", str(paths.root), "--out", f"{r['name']}.wav", *which]
        ranked.append({"name": r["name"], "state": r["state"], by: value, "value": value, "epoch": epoch,
                       "epochs": r["epochs"], "run_dir": str(paths.root), "checkpoint": str(ckpt),
                       "generate": " ".join(shlex.quote(c) for c in cmd), "config": state.runs[r["name"]].config,
                       "last_epoch": max((e for h in hist if (e := number(h.get("epoch"))) is not None), default=epoch)})
    if not ranked and seen_keys and by not in seen_keys:
        raise GruvError(f"no run of {state.paths.root} records {by!r} in its metrics.jsonl; "
                        f"metrics: {', '.join(sorted(seen_keys))}")
    ranked.sort(key=lambda x: x["value"], reverse=highest)
    shown, floors = ranked[:top], {}
    for x in shown:
        config = x.pop("config")
        _readable_checkpoint(x)
        if by in FLOOR_METRICS:
            x.update(floor_verdict(config, x, floors))
    return {"sweep": str(state.paths.root), "by": by, "highest": highest, "runs": shown, "ranked": len(ranked),
            "skipped": skipped}


# The metrics a run's floor (the dev loss of predicting its artists' train mean) compares with.
FLOOR_METRICS = ("best_dev_loss", "dev_loss")
# A best dev loss within this share of the floor is "at the floor": the model predicts about the
# train mean, and continuing from it gives a near-silent drone (issue 31: 0.3760 against 0.3742).
AT_FLOOR = 0.01


def floor_verdict(config: dict, run: dict, cache: dict) -> dict:
    """{"floor", "beats_floor", "at_floor", "advice"} of one ranked run's value against its artists'
    floor (analysis/baseline.py; ``cache``: computed once per dataset, artists and std_floor), or
    {"floor_error"}."""
    value, run_dir = run["value"], run["run_dir"]
    from gruv_hpc.analysis.baseline import mean_prediction_loss
    from gruv_hpc.training.config import run_config
    cfg = run_config(config)
    key = (cfg.get("data"), tuple(cfg.get("artists") or ()), float(cfg["std_floor"]))
    if key not in cache:
        try:
            cache[key] = mean_prediction_loss(key[0], list(key[1]) or None, std_floor=key[2])[0]
        except (GruvError, OSError) as e:
            cache[key] = e
    floor = cache[key]
    if isinstance(floor, Exception) or floor is None:
        return {"floor_error": str(floor) if floor is not None else "the dev split has no clips"}
    at = value >= floor * (1 - AT_FLOOR)
    out = {"floor": floor, "beats_floor": value < floor, "at_floor": at}
    if at and run["last_epoch"] > run["epoch"]:
        last = ["gruv", "generate", run_dir, "--out", f"{Path(run_dir).name}-last.wav", "--checkpoint", "last"]
        out["advice"] = (f"its best checkpoint (epoch {run['epoch']}) sits at or above the floor: it predicts about "
                         "the train mean, and a continuation from it is likely a near-silent drone; the last checkpoint "
                         f"(epoch {run['last_epoch']}) may sound more like music: "
                         + " ".join(shlex.quote(c) for c in last))
    elif at:
        out["advice"] = ("it sits at or above the floor: nothing it learned carries over to the dev songs, and a "
                         "continuation from it is likely a near-silent drone; train longer, or on more music")
    return out


def _as_list(v) -> list:
    return v if isinstance(v, list) else [] if v is None else [v]


def _readable_checkpoint(x: dict) -> None:
    """The checkpoint a ranked run recommends must load: an unreadable best.pt (a torn copy) gives
    way to the newest checkpoint that loads, said in ``note``, and the command follows it."""
    from gruv_hpc.training.checkpoint import load_checkpoint, load_latest
    try:
        load_checkpoint(Path(x["checkpoint"]))
        return
    except Exception as e:  # truncated zip, bad pickle, a file that is not a checkpoint
        why = f"{x['checkpoint']} does not load ({type(e).__name__})"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unreadable ones are named in the note
        _, path = load_latest(RunPaths(x["run_dir"]))
    if path is None:
        x.update(checkpoint=None, generate=None, note=f"{why}, and no other checkpoint of the run loads")
        return
    cmd = ["gruv", "generate", x["run_dir"], "--out", f"{x['name']}.wav", "--checkpoint", str(path)]
    x.update(checkpoint=str(path), generate=" ".join(shlex.quote(c) for c in cmd),
             note=f"{why}: the newest checkpoint that loads, {path.name}, instead")


def _matches(config: dict, artist: str | None, cell: str | None, everyone: dict | None = None) -> bool:
    """--artist A: runs trained on A (alone or with others, or on all the dataset's artists when
    the run names none); --cell C: runs of that cell."""
    if cell is not None and config.get("cell") != cell:
        return False
    if artist is None or artist in _as_list(config.get("artists")):
        return True
    if _as_list(config.get("artists")) or not config.get("data"):
        return False
    everyone = {} if everyone is None else everyone
    if config["data"] not in everyone:
        from gruv_hpc.dataset.manifest import load_manifest
        try:
            everyone[config["data"]] = set(load_manifest(config["data"])["artists"])
        except Exception:  # a dataset moved or damaged: it cannot say, so the run is not matched
            everyone[config["data"]] = set()
    return artist in everyone[config["data"]]


def format_best(res: dict) -> str:
    by = res["by"]
    out = []
    if not res["runs"]:
        out.append(f"no run of {res['sweep']} has a {by} yet")
    for i, r in enumerate(res["runs"], 1):
        floor = ""
        if "floor" in r:
            floor = (f"; floor {r['floor']:.6g} (predicting the train mean): "
                     + ("beats it" if r["beats_floor"] else "does NOT beat it"))
        elif "floor_error" in r:
            floor = f"; floor not computed: {r['floor_error']}"
        out.append(f"{i}. {r['name']}: {by} {r['value']:.6g} at epoch {r['epoch']} of {r['epochs']} "
                   f"({r['state']}){floor}")
        out.append(f"   run dir:    {r['run_dir']}")
        out.append(f"   checkpoint: {r['checkpoint']}")
        if r.get("note"):
            out.append(f"   note: {r['note']}")
        if r.get("generate"):
            out.append(f"   {r['generate']}")
        if r.get("advice"):
            out.append(f"   note: {r['advice']}")
    for s in res["skipped"]:
        out.append(f"skipped {s['name']}: {s['why']}")
    return "\n".join(out)
