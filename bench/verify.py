"""What verifying a dataset costs (issue 22, N1): the sha256 check every process does once before it
reads a dataset, and ``gruv dataset verify`` (the same, plus every song's content hash re-read
from the shards).

    python bench/verify.py [--hours 1] [--data DIR] [--keep DIR]

Without ``--data`` a synthetic corpus of ``--hours`` hours is made and preprocessed at the paper's
parameters (44.1 kHz, 11025-sample blocks, 40-block clips, float32: about 176 KB per audio second).
Prints one JSON line: the dataset's bytes, and for each check the wall time, cold (after dropping
this dataset from the page cache with posix_fadvise) and warm (read again from the page cache).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import make_dataset  # noqa: E402  (bench/data.py)

from gruv_hpc.dataset import manifest as M  # noqa: E402


def drop_cache(data: Path) -> None:
    for p in data.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--data", type=Path, help="an existing dataset (else a synthetic one is made)")
    ap.add_argument("--keep", type=Path, help="make the synthetic dataset here and keep it")
    a = ap.parse_args()
    tmp = None
    if a.data:
        data = a.data
    else:
        root = a.keep or Path(tmp := tempfile.mkdtemp(prefix="gruv-verify-"))
        songs = max(1, round(a.hours * 3600 / 2 / 180))  # two artists, 3-minute songs
        t0 = time.perf_counter()
        data = make_dataset(root, songs, 170.0, 190.0, 44100, 11025, 40)
        print(f"made the dataset in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    m = M.load_manifest(data)
    out = {"data": str(data), "hours": m["summary"]["hours"], "bytes": sum(sh["bytes"] for sh in m["shards"]),
           "files": len(m["shards"]) + 1}
    for name, fn in (("per_process_check", lambda: (M._VERIFIED.clear(), M.ensure_verified(data, m))),
                     ("gruv_dataset_verify", lambda: M.verify(data))):
        drop_cache(data)
        out[f"{name}_cold_s"] = timed(fn)
        out[f"{name}_warm_s"] = timed(fn)
    out["check_GB_per_s_warm"] = out["bytes"] / out["per_process_check_warm_s"] / 1e9
    out["check_s_per_audio_hour_warm"] = out["per_process_check_warm_s"] / out["hours"]
    print(json.dumps(out))
    if tmp:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
