"""Merge: check every task's output, pool the moments exactly, write the stats and the manifest
last, then swap the staging directory into place."""
from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from gruv_hpc import __version__
from gruv_hpc.dataset.adequacy import build_warnings
from gruv_hpc.dataset.build.bandwidth import warn_bandwidths
from gruv_hpc.dataset.build.staging import (
    PLAN,
    SUBMISSION,
    TASK_DIR,
    read_plan,
    task_name,
    write_moments,
)
from gruv_hpc.dataset.build.swap import swap_in
from gruv_hpc.dataset.corpus import task_songs
from gruv_hpc.dataset.manifest import (
    FORMAT,
    MANIFEST,
    STATS,
    VERSION,
    DatasetError,
    RunningStats,
    sha256_file,
)
from gruv_hpc.fsio import atomic_write_text, fsync_dir


def _content_copies(songs: list[dict], shards: list[dict]) -> None:
    """Two files whose decoded content is the same (an MP3 with another tag, a WAV saved again as
    FLAC: other bytes, so the plan's byte check let them through) are one song. Only decoding
    tells, so it is found here, before the dataset is written. Under two artists: refused. Under
    one, a copy in dev would score a train song (or the same song twice): the dev copy is excluded
    (its reason in the manifest, a warning) and its clips taken out of the shards' index; dev
    blocks are in no train moments, so the stats stay exact. Two copies both in train cannot be
    taken out of the pooled moments here: refused, naming both."""
    first: dict[str, dict] = {}
    dropped: set[int] = set()
    for s in songs:
        h = s.get("content_sha256")
        if s["skipped"] or not h:
            continue
        o = first.setdefault(h, s)
        if o is s:
            continue
        if o["artist"] != s["artist"]:
            raise DatasetError(f"{s['path']} and {o['path']} decode to the same audio (artists {o['artist']} and "
                               f"{s['artist']}; a song may belong to one artist only): move one of them out of the "
                               "corpus and run the same command again")
        drop = s if s["split"] == "dev" else o if o["split"] == "dev" else None
        if drop is None:
            raise DatasetError(f"{s['path']} and {o['path']} decode to the same audio, both in artist {s['artist']}'s "
                               "train split (counted twice in its statistics): move one of them out of the corpus "
                               "and run the same command again")
        keep = o if drop is s else s
        first[h] = keep
        drop["skipped"] = f"the same audio as {keep['relpath']} (a copy with other bytes)"
        dropped.add(drop["id"])
        warnings.warn(f"skipping {drop['path']}: it decodes to the same audio as {keep['path']} (a copy in dev "
                      "would score a train song)", stacklevel=3)
    for sh in shards:
        sh["segments"] = [seg for seg in sh["segments"] if int(seg[0]) not in dropped]


def merge(staging: str | Path, out: str | Path) -> dict:
    """Check every task's output in ``staging``, pool their moments, write ``stats.npz`` and then
    ``manifest.json``, and swap the staging directory into place as ``out``. Returns the manifest."""
    staging, out = Path(staging), Path(out)
    p, n_tasks = read_plan(staging)
    dim = p.params["storage_dim"]
    moments = {a: RunningStats(dim) for a in p.artists}
    results: dict[int, dict] = {}
    shards = []
    for t in range(n_tasks):
        name = task_name(t, n_tasks)
        rec_path = staging / TASK_DIR / f"{name}.json"
        if not rec_path.exists():
            raise DatasetError(f"{rec_path}: task {t} of {n_tasks} has not finished")
        rec = json.loads(rec_path.read_text())
        want = [s["id"] for s in task_songs(p, t, n_tasks)]
        if [r["id"] for r in rec["songs"]] != want:
            raise DatasetError(f"{rec_path}: the task's songs are not the plan's (was the plan changed?)")
        for sh in rec["shards"]:
            f = staging / sh["file"]
            if not f.exists() or f.stat().st_size != sh["bytes"]:
                raise DatasetError(f"{f}: missing, or not the size task {t} recorded ({sh['bytes']} bytes)")
        with np.load(staging / rec["moments"]) as z:
            if list(z["artists"]) != p.artists:
                raise DatasetError(f"{staging / rec['moments']}: moments of artists {list(z['artists'])}, not {p.artists}")
            for i, a in enumerate(p.artists):
                moments[a].combine(RunningStats(dim, int(z["count"][i]), z["mean"][i], z["m2"][i]))
        results.update({r["id"]: r for r in rec["songs"]})
        shards += rec["shards"]

    songs = [{k: v for k, v in {**s, **results[s["id"]]}.items() if k != "est_s"} for s in p.songs]
    _content_copies(songs, shards)
    used = [s for s in songs if not s["skipped"]]
    if not used:
        raise DatasetError("every file was skipped; no dataset written. Reasons:\n" +
                           "\n".join(f"  {r['path']}: {r['reason']}" for r in p.excluded) +
                           "".join(f"\n  {s['path']}: {s['skipped']}" for s in songs))
    for a in p.artists:
        if moments[a].n == 0:
            raise DatasetError(f"artist {a}: no train blocks; its train songs were all skipped:" +
                               "".join(f"\n  {s['path']}: {s['skipped']}" for s in songs
                                       if s["artist"] == a and s["split"] == "train"))
    write_moments(staging / STATS, p.artists, moments)
    bandwidth = warn_bandwidths(songs, p.artists)
    hours = sum(s["duration_s"] for s in used) / 3600
    total_bytes = sum(sh["bytes"] for sh in shards)
    dev = sum(s["clips"] if s["split"] == "dev" else s["dev_clips"] for s in used)
    manifest = {
        "format": FORMAT, "version": VERSION, "tool_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "params": p.params, "artists": p.artists, "sources": p.sources, "split_from": p.split_from,
        "stats": {"file": STATS, "layout": "per artist: count, mean, m2 of the train blocks' stored values, float64",
                  "blocks": {a: moments[a].n for a in p.artists}, "sha256": sha256_file(staging / STATS)},
        "songs": songs, "excluded": p.excluded, "shards": shards,
        "summary": {
            "songs": len(used), "skipped": len(songs) - len(used) + len(p.excluded),
            "clips": sum(s["clips"] for s in used), "train_clips": sum(s["clips"] for s in used) - dev, "dev_clips": dev,
            "hours": hours, "bytes": total_bytes, "bytes_per_audio_s": total_bytes / max(hours * 3600, 1e-9),
            "tasks": n_tasks, "wall_s": time.time() - p.started,
        },
    }
    # Recorded, not only warned: a merge that ran as a Slurm job warns into its log, and the
    # commands that show the dataset (and the sweeps trained on it) print these.
    adequacy = build_warnings(manifest)
    for w in adequacy:
        warnings.warn(w, stacklevel=2)
    manifest["warnings"] = bandwidth + adequacy
    atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=1))
    shutil.rmtree(staging / TASK_DIR)
    (staging / PLAN).unlink()
    (staging / SUBMISSION).unlink(missing_ok=True)
    fsync_dir(staging)
    swap_in(staging, out)
    return manifest
