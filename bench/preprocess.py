"""Preprocessing throughput and memory: seconds of audio per wall-second on one core, peak RSS,
how peak RSS changes when the corpus is 4x longer, bytes stored per audio second for each
``--dtype``, float16's round-trip error, and the speed-up of ``--jobs 2`` over ``--jobs 1``.

    python bench/preprocess.py [--minutes 10] [--jobs-minutes 40 120] [--repeats 3] [--only-jobs]

Each measurement is a fresh `gruv preprocess` process pinned to one core (taskset), with the
BLAS/OpenMP pools at one thread; throughput is the tool's own wall time (decode, resample, FFT,
HDF5 writes, checksums), RSS is the process's ru_maxrss. Bytes per audio second are the shards'
bytes over the seconds of audio preprocessed. The float16 error is the relative RMS error of the
audio that the stored features give back (features -> inverse FFT), against the decoded song.

The speed-up is of the whole command, as a user waits for it: `gruv preprocess --jobs N` from
the start of its process to its exit (interpreter start-up, planning, the tasks, the merge), on
all the machine's cores (no taskset), each run into a fresh --out; the runs alternate between
N = 1 and N = 2; the figures are the ratio of the medians and that of the fastest runs (the least
disturbed by anything else on the machine). What does not split (start-up,
planning, the merge: about 0.8 s here) weighs less as the corpus grows, hence two corpus sizes.
Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 44100


def make_wav_corpus(root: Path, minutes: float, song_s: float = 60.0, seed: int = 0) -> float:
    """Noise-plus-tones songs as 16-bit WAV (the content does not change the cost)."""
    from gruv_hpc.dataset.synth import aurora_song, circuit_song
    rng = np.random.default_rng(seed)
    n = max(2, int(round(minutes * 60 / song_s)))
    base = [aurora_song(song_s, rng), circuit_song(song_s, rng)]
    for k in range(n):
        artist = "a" if k % 2 == 0 else "b"
        (root / artist).mkdir(parents=True, exist_ok=True)
        x = np.roll(base[k % 2], k * 1000) * (0.5 + 0.3 * rng.random())
        sf.write(root / artist / f"song{k:03d}.wav", x.astype(np.float32), SR, subtype="PCM_16")
    return n * song_s


def run(corpus: Path, out: Path, *extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    code = ("import json, resource, sys; from gruv_hpc.cli import main; main(sys.argv[1:]); "
            "m = json.load(open(sys.argv[-1] + '/manifest.json')); "
            "print(json.dumps({'wall_s': m['summary']['wall_s'], 'hours': m['summary']['hours'], "
            "'bytes_per_audio_s': m['summary']['bytes_per_audio_s'], "
            "'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))")
    # --out DIR comes last: the snippet reads the manifest from sys.argv[-1]
    cmd = [sys.executable, "-c", code, "preprocess", f"a={corpus / 'a'}", f"b={corpus / 'b'}", "--quiet", "--overwrite",
           *extra, "--out", str(out)]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["x_realtime"] = res["hours"] * 3600 / res["wall_s"]
    return res


def whole_command_s(corpus: Path, out: Path, jobs: int) -> float:
    """Wall seconds of one `gruv preprocess --jobs N` process, start to exit, into a fresh --out."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "gruv_hpc.cli", "preprocess", f"a={corpus / 'a'}", f"b={corpus / 'b'}", "--quiet",
           "--jobs", str(jobs), "--out", str(out)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    return wall


def round_trip_error(data: Path) -> float:
    """Relative RMS error of the audio the dataset's features give back, over every clip."""
    from gruv_hpc.dataset.audio import load_mono
    from gruv_hpc.dataset.clips import ClipDataset
    err = ref = 0.0
    for split in ("train", "dev"):
        ds = ClipDataset(data, split, normalize=False)
        p, tf = ds.params, ds.transform
        songs = {}
        for i in range(len(ds)):
            sid = int(ds.index.song_of_clip[i])
            if sid not in songs:
                songs = {sid: tf.frames(load_mono(ds.manifest["songs"][sid]["path"], p["sample_rate"]))}
            k = int(ds.index.clip_of_song[i]) * p["clip_blocks"]
            truth = songs[sid][k: k + p["clip_blocks"] + 1].astype(np.float64)
            back = tf.to_frames(ds.features(i)).astype(np.float64)
            err += float(np.sum((back - truth) ** 2))
            ref += float(np.sum(truth**2))
    return float(np.sqrt(err / ref))


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--workdir", default=None)
    p.add_argument("--jobs-minutes", type=float, nargs="+", default=[40.0, 120.0],
                   help="corpus sizes of the --jobs 2 vs 1 comparison")
    p.add_argument("--repeats", type=int, default=3, help="runs of each --jobs value")
    p.add_argument("--only-jobs", action="store_true", help="only the --jobs comparison")
    a = p.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="gruv-bench-"))
    results = {}
    for minutes in a.jobs_minutes:
        corpus = work / f"corpus-{minutes:g}min"
        if not corpus.exists():
            make_wav_corpus(corpus, minutes)
        times = {1: [], 2: []}
        for _ in range(a.repeats):
            for jobs in times:
                times[jobs].append(whole_command_s(corpus, work / "data-jobs", jobs))
        med = {j: float(np.median(t)) for j, t in times.items()}
        speedup, best = med[1] / med[2], min(times[1]) / min(times[2])
        print(f"--jobs 2 vs --jobs 1, whole command, {minutes:g} min of 44.1 kHz WAV on {os.cpu_count()} cores: "
              f"{med[1]:.2f} s vs {med[2]:.2f} s = {speedup:.2f}x (medians of {a.repeats}; fastest runs: {best:.2f}x; "
              f"all: {', '.join(f'{x:.2f}' for x in times[1])} / {', '.join(f'{x:.2f}' for x in times[2])})",
              flush=True)
        results[f"jobs_{minutes:g}min"] = {"s": times, "speedup": speedup, "speedup_fastest": best}
        shutil.rmtree(work / "data-jobs", ignore_errors=True)
    if a.only_jobs:
        print(json.dumps(results))
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
        return
    for label, minutes in (("1x", a.minutes), ("4x", 4 * a.minutes)):
        corpus = work / f"corpus-{label}"
        if not corpus.exists():
            make_wav_corpus(corpus, minutes)
        r = run(corpus, work / f"data-{label}")
        results[label] = r
        print(f"{label}: {r['hours'] * 60:.1f} min of 44.1 kHz WAV in {r['wall_s']:.2f} s = {r['x_realtime']:.0f}x realtime "
              f"on one core; peak RSS {r['rss_mb']:.0f} MiB", flush=True)
    grow = results["4x"]["rss_mb"] / results["1x"]["rss_mb"]
    print(f"peak RSS with a 4x longer corpus: x{grow:.2f} ({results['1x']['rss_mb']:.0f} -> {results['4x']['rss_mb']:.0f} MiB)")
    results["float16"] = run(work / "corpus-1x", work / "data-f16", "--dtype", "float16")
    errors = {"float32": round_trip_error(work / "data-1x"), "float16": round_trip_error(work / "data-f16")}
    for dtype, r in (("float32", results["1x"]), ("float16", results["float16"])):
        print(f"{dtype}: {r['bytes_per_audio_s'] / 1000:.1f} KB per audio second; audio back from the stored features: "
              f"relative RMS error {errors[dtype]:.1e}")
    print(json.dumps({"preprocess": results, "rss_growth_4x": grow, "round_trip_error": errors}, default=str))
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
