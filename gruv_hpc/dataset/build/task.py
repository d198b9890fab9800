"""A task: decode, transform and write its share of the songs into shards and moments of its own."""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np

from gruv_hpc.dataset.audio import AudioError, load_mono
from gruv_hpc.dataset.build.bandwidth import bandwidth_hz
from gruv_hpc.dataset.build.shards import BATCH_BLOCKS, FLOAT16_MAX, ShardWriter
from gruv_hpc.dataset.build.staging import (
    TASK_DIR,
    clean_task,
    task_finished,
    task_lock,
    task_name,
    write_moments,
)
from gruv_hpc.dataset.config import PreprocessConfig
from gruv_hpc.dataset.corpus import Plan, task_songs
from gruv_hpc.dataset.manifest import SHARD_DIR, RunningStats, sha256_file
from gruv_hpc.fsio import atomic_write_text
from gruv_hpc.progress import progress as progress_bar


def run_task(p: Plan, task: int, n_tasks: int, staging: str | Path, progress: bool = False) -> dict:
    """Decode, transform and write task ``task`` of ``n_tasks``'s songs into ``staging``: its
    shards (``shards/<artist>-<split>-<task>-<k>.h5``), then its per-artist train moments and its
    record (``tasks/task-<i>-of-<n>.npz`` / ``.json``), each written atomically, the record last:
    a task is done when its record exists. Returns the record. Holds the task's lock meanwhile; a
    finished task is not redone, and an unfinished one starts by removing what it had left."""
    staging = Path(staging)
    (staging / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    (staging / TASK_DIR).mkdir(exist_ok=True)
    # A requeued Slurm task whose first copy still runs, or a rerun while orphans write: one writer per task.
    with task_lock(staging, task, n_tasks):
        if task_finished(staging, task, n_tasks):  # a requeued copy of a task that had finished
            return json.loads((staging / TASK_DIR / f"{task_name(task, n_tasks)}.json").read_text())
        clean_task(staging, task, n_tasks)  # what a killed copy left
        return _run_task(p, task, n_tasks, staging, progress)


def _run_task(p: Plan, task: int, n_tasks: int, staging: Path, progress: bool) -> dict:
    cfg = PreprocessConfig(**p.config)
    dim = p.params["storage_dim"]
    moments = {a: RunningStats(dim) for a in p.artists}
    writers: dict[tuple[str, str], ShardWriter] = {}
    all_writers: list[ShardWriter] = []
    results = []
    C = cfg.clip_blocks
    transform = cfg.make_transform()
    mine = task_songs(p, task, n_tasks)
    try:
        desc = "preprocess" if n_tasks == 1 else f"preprocess task {task + 1}/{n_tasks}"
        for song in progress_bar(mine, unit="song", disable=not progress, desc=desc):
            res = {"id": song["id"], "sha256": None, "duration_s": None, "clips": 0, "dev_clips": 0, "skipped": None}
            results.append(res)
            path, artist = Path(song["path"]), song["artist"]
            try:
                res["sha256"] = sha256_file(path)
                audio = load_mono(path, cfg.sample_rate)
            except (AudioError, OSError) as e:
                res["skipped"] = str(e).removeprefix(f"{path}: ")
                warnings.warn(f"skipping {path}: {res['skipped']}", stacklevel=2)
                continue
            res["duration_s"] = len(audio) / cfg.sample_rate
            frames = transform.frames(audio)
            n_clips = (len(frames) - 1) // C
            est = song.get("est_s") or 0.0
            if est - res["duration_s"] > max(1.0, est / 2):  # (a VBR estimate is off by far less)
                res["skipped"] = (f"damaged: it decodes to {res['duration_s']:.1f} s of the {est:.1f} s its header "
                                  "declares (cut short?); repair or re-encode it, or move it out of the corpus")
            elif n_clips < 1:
                res["skipped"] = (f"shorter than one clip: {res['duration_s']:.2f} s, needs "
                                  f"{transform.n_samples(C + 1) / cfg.sample_rate:.2f} s")
            elif cfg.dtype == "float16" and transform.stored_bound(float(np.abs(audio).max())) >= FLOAT16_MAX:
                res["skipped"] = (f"samples up to {float(np.abs(audio).max()):.2f}: its spectrum could exceed float16's "
                                  "range; use --dtype float32")
            if res["skipped"]:
                warnings.warn(f"skipping {path}: {res['skipped']}", stacklevel=2)
                continue
            res["clips"] = n_clips
            content = hashlib.sha256()  # the song's stored blocks in order: what the dataset id is made of
            power = np.zeros(transform.n_bins)  # the song's energy per frequency bin, for its bandwidth
            if song["holdout"]:
                res["dev_clips"] = max(1, int(round(cfg.dev_fraction * n_clips))) if n_clips >= 2 else 0
                if res["dev_clips"] == 0:
                    warnings.warn(f"artist {artist}: its one song {path} has one clip; no dev clip is held out",
                                  stacklevel=2)
            n_train = n_clips - res["dev_clips"] if song["split"] == "train" else 0
            parts = [(song["split"], 0, n_clips)] if not res["dev_clips"] else \
                [("train", 0, n_train), ("dev", n_train, n_clips)]
            if not any(k[0] == artist for k in writers):
                # Songs come artist by artist: close the previous artist's shards as soon as we move on.
                for k in list(writers):
                    writers.pop(k).close()
            for split, c0, c1 in parts:
                key = (artist, split)
                if key not in writers:
                    writers[key] = ShardWriter(staging, task, artist, split, cfg, dim)
                    all_writers.append(writers[key])
                w = writers[key]
                done = c0
                while done < c1:
                    if w.room() == 0:
                        w.close()
                    take = min(w.room(), c1 - done)
                    ds, row = w.add_segment(song["id"], take, done)
                    b0, b1 = done * C, (done + take) * C + 1
                    for s in range(b0, b1, BATCH_BLOCKS):
                        e = min(s + BATCH_BLOCKS, b1)
                        stored = transform.analyze_rows(frames, s, e).astype(cfg.dtype, copy=False)
                        transform.add_power(power, stored)
                        ds[row + s - b0: row + e - b0] = stored
                        w.check()
                        # The boundary block shared by two segments is counted (and hashed) once.
                        once = stored[1:] if (s == b0 and done > 0) else stored
                        content.update(np.ascontiguousarray(once).tobytes())
                        if split == "train":
                            moments[artist].update(once)
                    done += take
            res["content_sha256"] = content.hexdigest()
            res["bandwidth_hz"] = bandwidth_hz(power, cfg.sample_rate, cfg.block_size)
        for w in list(writers.values()):
            w.close()
    except BaseException:
        for w in all_writers:
            w.abort()
        raise
    name = task_name(task, n_tasks)
    write_moments(staging / TASK_DIR / f"{name}.npz", p.artists, moments)
    record = {"task": task, "n_tasks": n_tasks, "songs": results, "shards": [r for w in all_writers for r in w.records],
              "moments": f"{TASK_DIR}/{name}.npz"}
    atomic_write_text(staging / TASK_DIR / f"{name}.json", json.dumps(record, indent=1))
    return record
