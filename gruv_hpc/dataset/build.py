"""Corpus folders -> sharded HDF5 spectral dataset (``gruv preprocess``), in three steps:

``plan`` (``gruv_hpc.dataset.corpus``)
    List each artist folder, probe every file's header (no decoding), decide the split. Cheap:
    everything that can be refused is refused here, before any heavy work. ``gruv preprocess
    --print-split`` prints the plan's split and stops.
``run_task(plan, i, n, staging)``
    Decode, transform and write task ``i`` of ``n``'s share of the songs (a contiguous run of the
    plan) into shards of its own, and its own per-artist train moments, in the staging directory.
    Tasks write disjoint files, so N of them can run at once (processes, a Slurm job array).
``merge(staging, out)``
    Check every task's output, pool the moments exactly, write the stats and the manifest last,
    then swap the staging directory into place.

Serial ``preprocess`` = plan + one task + merge, in this process, under a lock on ``out``;
``gruv_hpc.cluster.preprocess`` runs the tasks as processes or a Slurm job array.

The dataset is built in ``.<name>.staging`` beside ``out`` (same filesystem; ``paths.BuildPaths``)
and swapped in by two renames (``out`` -> ``.<name>.old``, staging -> ``out``) before the old one
is removed, so a failed or interrupted build never touches a finished dataset. A crash between the
two renames leaves ``out`` missing and the old dataset in ``.<name>.old``: the next run (which
holds the lock) puts it back first; ``load_manifest`` points at it meanwhile. The staging
directory's name does not depend on who builds it, so a build that stopped (killed, a task failed)
is resumed by the next build of the same plan: finished tasks are kept (``prepare_staging``). A
build of another plan starts it afresh.

Songs are decoded and written one at a time, in batches of blocks, so peak memory depends on the
longest song, never on the corpus.
"""
from __future__ import annotations

import errno
import io
import json
import os
import shutil
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np

from gruv_hpc import __version__
from gruv_hpc.dataset.audio import AudioError, load_mono
from gruv_hpc.dataset.config import PreprocessConfig
from gruv_hpc.dataset.corpus import (Plan, assign_splits, format_split, parse_sources, plan, read_split_file, task_songs)
from gruv_hpc.dataset.transforms import audio_to_blocks, blocks_to_stored
from gruv_hpc.fsio import atomic_write, atomic_write_text, fsync_dir
from gruv_hpc.lock import Lock, LockedError
from gruv_hpc.dataset.manifest import (FORMAT, MANIFEST, SHARD_DIR, STATS, VERSION, DatasetError, RunningStats, aside_path, chunk_rows, sha256_file)
from gruv_hpc.paths import BuildPaths
from gruv_hpc.progress import progress as progress_bar

__all__ = ["PreprocessConfig", "RunningStats", "Plan", "plan", "run_task", "merge", "preprocess", "parse_sources",
           "format_split", "read_split_file", "assign_splits", "prepare_staging", "task_songs"]

BATCH_BLOCKS = 64  # blocks transformed per FFT call: big enough to amortize, small enough for cache
# In the staging directory, beside shards/: the plan, each task's record, moments and lock, and the
# Slurm jobs of a build submitted to Slurm (gruv_hpc.cluster.preprocess).
TASK_DIR = "tasks"
PLAN = "plan.json"
SUBMISSION = "submission.json"
FLOAT16_MAX = float(np.finfo(np.float16).max)


# ---------------------------------------------------------------------------------------------
# A task: decode, transform, write

class _WriteGuard(io.FileIO):
    """The file HDF5 writes a shard through. HDF5 does not survive a failed write (closing the
    file afterwards crashes the process), so a failed write is recorded here and reported to
    HDF5 as done; the writer checks ``error`` after each write and gives up cleanly."""

    error: OSError | None = None

    def write(self, b) -> int:
        if self.error is None:
            try:
                return super().write(b)
            except OSError as e:
                self.error = e
        return memoryview(b).nbytes


class ShardWriter:
    """Appends song segments to numbered shards of one (artist, split), renaming each when closed."""

    def __init__(self, staging: Path, task: int, artist: str, split: str, cfg: PreprocessConfig, dim: int):
        self.staging, self.task, self.artist, self.split, self.cfg, self.dim = staging, task, artist, split, cfg, dim
        itemsize = np.dtype(cfg.dtype).itemsize
        self.rows = chunk_rows(cfg.clip_blocks, dim * itemsize)
        clip_bytes = (cfg.clip_blocks + 1) * dim * itemsize
        cap = max(1, int(cfg.shard_mb * 2**20 // clip_bytes))
        self.capacity = min(cap, cfg.shard_clips) if cfg.shard_clips > 0 else cap
        self.records: list[dict] = []
        self.file = self.raw = None
        self.k = 0

    def _open(self):
        name = f"{self.artist}-{self.split}-{self.task:03d}-{self.k:04d}.h5"
        self.final = self.staging / SHARD_DIR / name
        self.tmp = self.final.with_name(name + ".partial")
        self.raw = _WriteGuard(self.tmp, "w+")
        self.file = h5py.File(self.raw, "w")
        self.blocks = self.file.create_dataset(
            "blocks", shape=(0, self.dim), maxshape=(None, self.dim), dtype=self.cfg.dtype, chunks=(self.rows, self.dim))
        self.segments: list[tuple[int, int, int, int]] = []
        self.clips = 0

    def check(self) -> None:
        if self.raw is not None and self.raw.error is not None:
            e = self.raw.error
            raise OSError(e.errno, e.strerror, str(self.tmp))

    def room(self) -> int:
        if self.file is None:
            self._open()
        return self.capacity - self.clips

    def add_segment(self, song_id: int, n_clips: int, first_clip: int) -> tuple[h5py.Dataset, int]:
        """Reserve rows for ``n_clips`` clips (n*C + 1 blocks); returns (dataset, first row)."""
        assert 0 < n_clips <= self.room()
        start = -(-self.blocks.shape[0] // self.rows) * self.rows  # align to a chunk boundary
        n = n_clips * self.cfg.clip_blocks + 1
        self.blocks.resize(start + n, axis=0)
        self.segments.append((song_id, start, n_clips, first_clip))
        self.clips += n_clips
        return self.blocks, start

    def close(self) -> None:
        if self.file is None:
            return
        self.file.create_dataset("segments", data=np.array(self.segments, dtype=np.int64).reshape(-1, 4))
        self.file.attrs.update({"format": FORMAT, "version": VERSION, "artist": self.artist, "split": self.split,
                                "clip_blocks": self.cfg.clip_blocks, "storage_dim": self.dim})
        n_blocks = self.blocks.shape[0]
        self.file.close()
        self.file = None
        self.check()
        self.raw.flush()
        os.fsync(self.raw.fileno())
        self.raw.close()
        self.raw = None
        self.tmp.replace(self.final)
        self.records.append({
            "file": f"{SHARD_DIR}/{self.final.name}", "artist": self.artist, "split": self.split,
            "clips": self.clips, "blocks": n_blocks, "bytes": self.final.stat().st_size,
            "sha256": sha256_file(self.final), "segments": [list(s) for s in self.segments],
        })
        self.k += 1

    def abort(self) -> None:
        """Drop the shard being written (after an error)."""
        if self.file is not None:
            try:
                self.file.close()  # safe: a failed write never reached HDF5 (see _WriteGuard)
            except Exception:  # noqa: BLE001 - the original error is what gets reported
                pass
            self.file = None
        if self.raw is not None:
            self.raw.close()
            self.raw = None
            self.tmp.unlink(missing_ok=True)


# A song's bandwidth: the frequency below which this share of its energy lies. Not 99%: music's
# energy falls steeply with frequency, so that measures the music (1-8 kHz on one record); the
# last 0.01% is where an encoder's cutoff shows (9.6 kHz for a full song, 4.4 kHz low-passed at 4).
BANDWIDTH_ENERGY = 0.9999
# Songs of one artist whose bandwidths differ by this factor or more are warned about.
BANDWIDTH_RATIO = 1.5


def add_power(power: np.ndarray, stored: np.ndarray) -> None:
    """Add the energy per bin (|X_k|^2, k = 0 .. N//2) of stored rows (blocks_to_stored's layout)."""
    n_re = len(power)
    st = stored.astype(np.float64)
    power += np.square(st[:, :n_re]).sum(0)
    power[1: 1 + st.shape[1] - n_re] += np.square(st[:, n_re:]).sum(0)


def bandwidth_hz(power: np.ndarray, sample_rate: int, block_size: int) -> float | None:
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


def _task_name(task: int, n_tasks: int) -> str:
    return f"task-{task:04d}-of-{n_tasks:04d}"


def _write_moments(path: Path, artists: list[str], moments: dict[str, RunningStats]) -> None:
    def write(f):
        np.savez(f, artists=np.array(artists), count=np.array([moments[a].n for a in artists], np.int64),
                 mean=np.stack([moments[a].mean for a in artists]), m2=np.stack([moments[a].m2 for a in artists]))
    atomic_write(path, write, mode="wb")


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
            return json.loads((staging / TASK_DIR / f"{_task_name(task, n_tasks)}.json").read_text())
        _clean_task(staging, task, n_tasks)  # what a killed copy left
        return _run_task(p, task, n_tasks, staging, progress)


def _run_task(p: Plan, task: int, n_tasks: int, staging: Path, progress: bool) -> dict:
    cfg = PreprocessConfig(**p.config)
    dim = p.params["storage_dim"]
    moments = {a: RunningStats(dim) for a in p.artists}
    writers: dict[tuple[str, str], ShardWriter] = {}
    all_writers: list[ShardWriter] = []
    results = []
    C = cfg.clip_blocks
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
            blocks = audio_to_blocks(audio, cfg.block_size)
            n_clips = (len(blocks) - 1) // C
            if n_clips < 1:
                res["skipped"] = (f"shorter than one clip: {res['duration_s']:.2f} s, needs "
                                  f"{(C + 1) * cfg.block_size / cfg.sample_rate:.2f} s")
            elif cfg.dtype == "float16" and cfg.block_size * float(np.abs(audio).max()) >= FLOAT16_MAX:
                res["skipped"] = (f"samples up to {float(np.abs(audio).max()):.2f}: its spectrum could exceed float16's "
                                  "range; use --dtype float32")
            if res["skipped"]:
                warnings.warn(f"skipping {path}: {res['skipped']}", stacklevel=2)
                continue
            res["clips"] = n_clips
            power = np.zeros(cfg.block_size // 2 + 1)  # the song's energy per frequency bin, for its bandwidth
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
                        stored = blocks_to_stored(blocks[s:e]).astype(cfg.dtype, copy=False)
                        add_power(power, stored)
                        ds[row + s - b0: row + e - b0] = stored
                        w.check()
                        if split == "train":
                            # The boundary block shared by two segments is counted once.
                            moments[artist].update(stored[1:] if (s == b0 and done > 0) else stored)
                    done += take
            res["bandwidth_hz"] = bandwidth_hz(power, cfg.sample_rate, cfg.block_size)
        for w in list(writers.values()):
            w.close()
    except BaseException:
        for w in all_writers:
            w.abort()
        raise
    name = _task_name(task, n_tasks)
    _write_moments(staging / TASK_DIR / f"{name}.npz", p.artists, moments)
    record = {"task": task, "n_tasks": n_tasks, "songs": results, "shards": [r for w in all_writers for r in w.records],
              "moments": f"{TASK_DIR}/{name}.npz"}
    atomic_write_text(staging / TASK_DIR / f"{name}.json", json.dumps(record, indent=1))
    return record


# ---------------------------------------------------------------------------------------------
# Merge: check, pool, write the manifest last, swap in

def write_plan(p: Plan, staging: Path, n_tasks: int) -> None:
    staging.mkdir(parents=True, exist_ok=True)
    atomic_write_text(staging / PLAN, json.dumps({**asdict(p), "n_tasks": n_tasks}, indent=1))


def read_plan(staging: Path) -> tuple[Plan, int]:
    d = json.loads((staging / PLAN).read_text())
    n_tasks = d.pop("n_tasks")
    return Plan(**d), n_tasks


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
        name = _task_name(t, n_tasks)
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
    _write_moments(staging / STATS, p.artists, moments)
    warn_bandwidths(songs, p.artists)
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
    atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=1))
    shutil.rmtree(staging / TASK_DIR)
    (staging / PLAN).unlink()
    (staging / SUBMISSION).unlink(missing_ok=True)
    fsync_dir(staging)
    _swap_in(staging, out)
    return manifest


def _swap_in(staging: Path, out: Path) -> None:
    """Two renames: a crash between them leaves out missing and the old dataset aside (see _recover)."""
    old = aside_path(out)
    if out.exists():
        os.rename(out, old)
    os.rename(staging, out)
    fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def _recover(out: Path) -> None:
    """Undo what a crashed run left beside ``out``. Only called with the lock held. (The staging
    directory stays: the next build of the same plan resumes it.)"""
    old = aside_path(out)
    if old.is_dir():
        if out.exists():
            shutil.rmtree(old)  # the crash came after the new dataset was in place
        else:
            os.rename(old, out)  # ... or before: put the previous dataset back
            warnings.warn(f"{out}: put back the dataset an interrupted run had moved aside", stacklevel=3)
    for d in out.parent.glob(f".{out.name}.staging-*"):  # named after their pid by earlier versions
        shutil.rmtree(d, ignore_errors=True)
    staging = BuildPaths(out).staging
    if (staging / MANIFEST).is_file() and not (staging / TASK_DIR).exists():
        # merge wrote the manifest, then removed the task records: only its swap was left to do
        (staging / PLAN).unlink(missing_ok=True)
        (staging / SUBMISSION).unlink(missing_ok=True)
        _swap_in(staging, out)
        warnings.warn(f"{out}: put in place the dataset an interrupted merge had finished", stacklevel=3)


# ---------------------------------------------------------------------------------------------
# The staging directory across builds: resume the same plan, start another one afresh

def task_lock(staging: Path, task: int, n_tasks: int) -> Lock:
    return Lock(staging / TASK_DIR / f"{_task_name(task, n_tasks)}.lock", f"preprocess task {task} of {n_tasks} in {staging}")


def _task_of_shard(name: str) -> int | None:
    """The task that wrote ``<artist>-<split>-<task>-<k>.h5[.partial]`` (an artist may contain '-')."""
    parts = name.removesuffix(".partial").removesuffix(".h5").rsplit("-", 3)
    return int(parts[2]) if len(parts) == 4 and parts[2].isdigit() else None


def task_finished(staging: Path, task: int, n_tasks: int) -> bool:
    """The task's record exists, and so do its moments and its shards, at the sizes it recorded."""
    name = _task_name(task, n_tasks)
    try:
        rec = json.loads((staging / TASK_DIR / f"{name}.json").read_text())
        files = [(staging / sh["file"], sh["bytes"]) for sh in rec["shards"]]
        return (staging / rec["moments"]).is_file() and all(f.is_file() and f.stat().st_size == n for f, n in files)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _clean_task(staging: Path, task: int, n_tasks: int) -> None:
    """Remove whatever an unfinished task left: shards (finished or partial), moments, record, temp files."""
    name = _task_name(task, n_tasks)
    for f in (staging / SHARD_DIR).glob("*.h5*") if (staging / SHARD_DIR).is_dir() else ():
        if _task_of_shard(f.name) == task:
            f.unlink()
    for f in (staging / TASK_DIR).glob(f"*{name}.*") if (staging / TASK_DIR).is_dir() else ():
        if not f.name.endswith(".lock"):
            f.unlink()


def _refuse_live_tasks(staging: Path, tasks) -> None:
    """A task whose lock is held is being written by a live process (see run_task): leave it alone."""
    for lock in tasks:
        try:
            lock.acquire()
        except LockedError as e:
            raise DatasetError(f"{e}; wait for it, or stop it") from None
        lock.release()


def _same_plan(a: Plan, b: Plan) -> bool:
    def key(p):
        return json.loads(json.dumps({k: v for k, v in asdict(p).items() if k != "started"}))
    return key(a) == key(b)


def read_staging_plan(staging: Path) -> tuple[Plan, int] | None:
    try:
        return read_plan(staging)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def prepare_staging(p: Plan, staging: Path, n_tasks: int) -> list[int]:
    """Make ``staging`` the build of ``p`` in ``n_tasks`` tasks; returns the tasks still to run.
    A staging directory of the same plan and task count keeps its finished tasks (each task
    writes its files alone, and a task is finished when its record and what it lists exist);
    what unfinished tasks left is removed. Any other staging directory is removed: it holds no
    finished dataset. Either way a task some live process still writes is refused. Called with
    the dataset lock held."""
    old = read_staging_plan(staging) if staging.is_dir() else None
    if old is not None and old[1] == n_tasks and _same_plan(old[0], p):
        todo = [t for t in range(n_tasks) if not task_finished(staging, t, n_tasks)]
        _refuse_live_tasks(staging, [task_lock(staging, t, n_tasks) for t in todo])
        for t in todo:
            _clean_task(staging, t, n_tasks)
        return todo
    if staging.is_dir():
        locks = sorted((staging / TASK_DIR).glob("*.lock")) if (staging / TASK_DIR).is_dir() else []
        _refuse_live_tasks(staging, [Lock(f, f"preprocess {f.stem} in {staging}") for f in locks])
        if old is not None:
            warnings.warn(f"{staging}: discarding the unfinished build of another plan"
                          + (f" (in {old[1]} tasks)" if old[1] != n_tasks else ""), stacklevel=2)
        shutil.rmtree(staging)
    write_plan(p, staging, n_tasks)
    return list(range(n_tasks))


# ---------------------------------------------------------------------------------------------
# Serial preprocessing: plan + one task + merge, under a lock

def _check_out(out: str | Path) -> Path:
    out = Path(os.path.abspath(out))
    if out.is_symlink() and out.is_dir():
        out = out.resolve()  # the swap renames directories, never a link
    for p in (out, *out.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                raise DatasetError(f"--out {out}: {p} is a file" if p == out else
                                   f"--out {out}: {p} is a file, so nothing can be made under it")
            break
    return out


def dataset_diffs(out: Path, p: Plan) -> list[str] | None:
    """How ``p`` differs from the dataset in ``out`` ([]: the same songs and parameters), or None
    when ``out`` holds no complete dataset of this format version."""
    try:
        old = json.loads((out / MANIFEST).read_text())
        assert old.get("format") == FORMAT and old.get("version") == VERSION
    except (OSError, ValueError, AssertionError):
        return None
    diffs = [f"{k}: {old['params'].get(k)!r} -> {p.params.get(k)!r}" for k in p.params if old["params"].get(k) != p.params[k]]
    if old.get("artists") != p.artists:
        diffs.append(f"artists: {old.get('artists')} -> {p.artists}")
    before, after = ({(s["artist"], s["relpath"]): (s["bytes"], s["split"], s["holdout"]) for s in songs}
                     for songs in (old["songs"], p.songs))
    if before != after:
        changed = sum(before[k] != after[k] for k in before.keys() & after.keys())
        diffs.append(f"songs: {len(before.keys() - after.keys())} gone, {len(after.keys() - before.keys())} new, "
                     f"{changed} changed in size or split")
    return diffs


def _check_replace(out: Path, p: Plan, overwrite: bool) -> None:
    """What ``out`` holds may be replaced: nothing, or a dataset of the same songs and parameters,
    or any dataset with ``overwrite``. A folder of other files is never written into."""
    if not out.is_dir() or not any(out.iterdir()):
        return
    mpath = out / MANIFEST
    try:
        old = json.loads(mpath.read_text())
        assert old.get("format") == FORMAT
    except (OSError, ValueError, AssertionError):
        raise DatasetError(f"{out} is not empty and holds no gruv dataset ({mpath} is missing or not one); gruv "
                           "preprocess never deletes files it did not write: choose another --out") from None
    if overwrite:
        return
    if old.get("version") != VERSION:
        raise DatasetError(f"{out} holds a dataset of format version {old.get('version')!r}; pass --overwrite to "
                           f"rebuild it in version {VERSION}")
    diffs = dataset_diffs(out, p)
    if diffs:
        raise DatasetError(f"{out} already holds a dataset with other parameters or songs ({'; '.join(diffs)}); "
                           "pass --overwrite to replace it")


def lock_path(out: Path) -> Path:
    return BuildPaths(out).lock


def lock_dataset(out: Path) -> Lock:
    lock = Lock(lock_path(out), f"dataset {out}")
    try:
        lock.acquire()
    except OSError as e:
        raise DatasetError(f"cannot lock {lock.path}: {e.strerror}") from None
    return lock


def start_build(sources: dict[str, Path], out: Path, cfg: PreprocessConfig, jobs: int, overwrite: bool = False,
                split_file: str | Path | None = None, planned: Plan | None = None) -> tuple[Plan, Path, int, list[int]]:
    """Everything before the tasks, with the dataset lock held: recover from a crash, plan, check
    that ``out`` may be replaced, prepare the staging directory. Returns (plan, staging, number of
    tasks, the tasks still to run); no more tasks than songs."""
    _recover(out)
    p = planned or plan(sources, cfg, split_file)
    _check_replace(out, p, overwrite)
    n_tasks = max(1, min(jobs, len(p.songs)))
    staging = BuildPaths(out).staging
    return p, staging, n_tasks, prepare_staging(p, staging, n_tasks)


def disk_error(e: OSError, out: Path, staging: Path) -> DatasetError:
    """A build's OSError as one line. A full disk also removes the staging directory, to give
    the space back (its finished tasks go with it)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        shutil.rmtree(staging, ignore_errors=True)
        return DatasetError(f"{e.filename or staging}: {e.strerror}; nothing was written (the staging directory "
                            f"is removed{', the dataset in ' + str(out) + ' is as it was' if out.exists() else ''})")
    return DatasetError(f"{e.filename or staging}: {e.strerror or e}; the dataset in {out} is as it was; finished "
                        f"tasks are kept in {staging} for the next run")


def preprocess(sources: dict[str, Path], out: str | Path, cfg: PreprocessConfig, overwrite: bool = False,
               progress: bool = True, split_file: str | Path | None = None, planned: Plan | None = None) -> dict:
    """Build the dataset in ``out`` in this process; returns the manifest. Raises DatasetError when
    nothing usable was found, or when ``out`` holds something that may not be replaced; ``out`` is
    then untouched. Rebuilding with the same songs and parameters simply rebuilds it."""
    cfg.validate()
    out = _check_out(out)
    from gruv_hpc.cluster.preprocess import refuse_live_build
    lock = lock_dataset(out)
    try:
        refuse_live_build(out)
        p, staging, n_tasks, todo = start_build(sources, out, cfg, 1, overwrite, split_file, planned)
        try:
            for t in todo:
                run_task(p, t, n_tasks, staging, progress)
            return merge(staging, out)
        except BaseException as e:
            _recover(out)
            if isinstance(e, OSError):
                raise disk_error(e, out, staging) from None
            raise
    finally:
        lock.release()
