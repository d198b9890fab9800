"""Preprocessing throughput and memory: seconds of audio per wall-second on one core, peak RSS,
and how peak RSS changes when the corpus is 4x longer.

    python bench/preprocess.py [--minutes 10]

Each measurement is a fresh `gruv preprocess` process pinned to one core (taskset), with the
BLAS/OpenMP pools at one thread; throughput is the tool's own wall time (decode, resample, FFT,
HDF5 writes, checksums), RSS is the process's ru_maxrss.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 44100


def make_wav_corpus(root: Path, minutes: float, song_s: float = 60.0, seed: int = 0) -> float:
    """Noise-plus-tones songs as 16-bit WAV (the content does not change the cost)."""
    from gruv_hpc.synth import aurora_song, circuit_song
    rng = np.random.default_rng(seed)
    n = max(2, int(round(minutes * 60 / song_s)))
    base = [aurora_song(song_s, rng), circuit_song(song_s, rng)]
    for k in range(n):
        artist = "a" if k % 2 == 0 else "b"
        (root / artist).mkdir(parents=True, exist_ok=True)
        x = np.roll(base[k % 2], k * 1000) * (0.5 + 0.3 * rng.random())
        sf.write(root / artist / f"song{k:03d}.wav", x.astype(np.float32), SR, subtype="PCM_16")
    return n * song_s


def run(corpus: Path, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    code = ("import json, resource, sys; from gruv_hpc.cli import main; main(sys.argv[1:]); "
            "m = json.load(open(sys.argv[-1] + '/manifest.json')); "
            "print(json.dumps({'wall_s': m['summary']['wall_s'], 'hours': m['summary']['hours'], "
            "'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))")
    # --out DIR comes last: the snippet reads the manifest from sys.argv[-1]
    cmd = [sys.executable, "-c", code, "preprocess", f"a={corpus / 'a'}", f"b={corpus / 'b'}", "--quiet", "--overwrite",
           "--out", str(out)]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["x_realtime"] = res["hours"] * 3600 / res["wall_s"]
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--workdir", default=None)
    a = p.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="gruv-bench-"))
    results = {}
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
    print(json.dumps({"preprocess": results, "rss_growth_4x": grow}))
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
