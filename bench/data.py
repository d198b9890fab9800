"""The data path alone: how fast batches reach the device, normalized, as training reads them.

    python bench/data.py [--data DIR] [--device auto] [--batch 5] [--workers 0 1 2] [--step-ms 5]

Each path is ``data.build_data`` (the code training uses) followed by ``Data.to_window`` per batch:

- streaming: a DataLoader over the HDF5 shards with 0, 1, 2 ... worker processes (batched clip
  reads into the batch buffer, pinned on CUDA), the host-to-device copy, the normalization;
- resident (``data_on_device=true``): the clips loaded once (load time reported separately), each
  batch an on-device gather, the normalization.

Prints clips/s and GB/s (of the stored blocks) per path, and what a training step of ``--step-ms``
needs at ``--batch``. The shards are read from the page cache (just written): disk speed is not
measured. Without ``--data`` a synthetic corpus is made at the paper's parameters (D = 22050,
40-block clips); ``--block-size`` and friends make a smaller one.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from gruv_hpc.training.config import TrainConfig, resolve
from gruv_hpc.config import build
from gruv_hpc.training.distributed import Dist
from gruv_hpc.dataset.manifest import load_manifest
from gruv_hpc.dataset.clips import DatasetHandle
from gruv_hpc.training.data import build_data


def make_dataset(out: Path, songs: int, min_s: float, max_s: float, sample_rate: int, block_size: int,
                 clip_blocks: int) -> Path:
    from gruv_hpc.dataset.config import PreprocessConfig
    from gruv_hpc.dataset.build import parse_sources, preprocess
    from gruv_hpc.dataset.synth import make_corpus
    data = out / "data"
    if not (data / "manifest.json").exists():
        make_corpus(out / "corpus", songs_per_artist=songs, min_s=min_s, max_s=max_s, seed=0)
        preprocess(parse_sources([f"aurora={out / 'corpus' / 'aurora'}", f"circuit={out / 'corpus' / 'circuit'}"]),
                   data, PreprocessConfig(sample_rate=sample_rate, block_size=block_size, clip_blocks=clip_blocks),
                   progress=False)
    return data


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(data_dir: Path, device: torch.device, batch: int, workers: int, on_device: str, seconds: float) -> dict:
    cfg = build(TrainConfig, dict(data=str(data_dir), batch_size=batch, workers=workers, data_on_device=on_device,
                                  device=device.type, epochs=1))
    t0 = time.perf_counter()
    handle = DatasetHandle(data_dir)
    cfg = resolve(cfg, handle.manifest)
    data = build_data(cfg, Dist(0, 1, 0, device), handle)
    setup_s = time.perf_counter() - t0
    clip_bytes = None

    def epoch(e: int) -> int:
        nonlocal clip_bytes
        data.sampler.set_epoch(e)
        n = 0
        for blk in data.train_loader:
            clip_bytes = blk[0].numel() * blk[0].element_size()
            win, y = data.to_window(blk, device)
            n += y.shape[0]
        return n

    epoch(0)  # warm-up: worker start, first touches, allocator
    _sync(device)
    clips, e, t0 = 0, 1, time.perf_counter()
    while True:
        clips += epoch(e)
        e += 1
        _sync(device)
        dt = time.perf_counter() - t0
        if dt >= seconds:
            break
    return {"clips_per_s": clips / dt, "gb_per_s": clips * clip_bytes / dt / 1e9, "setup_s": setup_s,
            "clip_bytes": clip_bytes, "clips": clips, "epochs": e - 1}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="an existing dataset (default: synthesize one in a temp dir)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch", type=int, default=5, help="batch size (the paper's: 5)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader workers to measure")
    p.add_argument("--seconds", type=float, default=3.0, help="measure each path for at least this long")
    p.add_argument("--step-ms", type=float, default=5.0, help="the training step time the data must keep up with")
    p.add_argument("--songs", type=int, default=6, help="songs per artist of the synthetic corpus")
    p.add_argument("--song-s", type=float, nargs=2, default=[50, 55], metavar=("MIN", "MAX"))
    p.add_argument("--sample-rate", type=int, default=44100)
    p.add_argument("--block-size", type=int, default=11025)
    p.add_argument("--clip-blocks", type=int, default=40)
    p.add_argument("--json", help="also write the figures to this file")
    a = p.parse_args(argv)
    device = torch.device("cuda" if a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available()) else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(a.data) if a.data else make_dataset(Path(tmp), a.songs, *a.song_s, a.sample_rate, a.block_size,
                                                             a.clip_blocks)
        m = load_manifest(data_dir)
        params = m["params"]
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}"
              + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
              + f"; dataset {m['summary']['train_clips']} train clips of {params['clip_blocks'] + 1} x "
              f"{params['feature_dim']}, batch {a.batch}", flush=True)
        res = {"device": str(device), "batch": a.batch, "train_clips": m["summary"]["train_clips"],
               "feature_dim": params["feature_dim"], "clip_blocks": params["clip_blocks"]}
        errors = res["errors"] = {}
        for key, w, on_device in [*((f"stream_w{w}", w, "false") for w in a.workers), ("resident", 0, "true")]:
            try:
                r = res[key] = measure(data_dir, device, a.batch, w, on_device, a.seconds)
            except Exception as e:  # noqa: BLE001  (recorded; the other paths still run)
                import traceback
                traceback.print_exc()
                res[key], errors[key] = None, f"{type(e).__name__}: {e}"[:300]
                continue
            label = f"streaming, {w} workers:" if on_device == "false" else "resident gather:     "
            print(f"  {label} {r['clips_per_s']:9.1f} clips/s  {r['gb_per_s']:6.2f} GB/s"
                  + (f" (loaded once in {r['setup_s']:.2f} s)" if on_device == "true" else ""), flush=True)
    clip_bytes = next((v["clip_bytes"] for v in res.values() if isinstance(v, dict) and "clip_bytes" in v), 0)
    need = a.batch / (a.step_ms / 1e3)
    res["need"] = {"step_ms": a.step_ms, "clips_per_s": need, "gb_per_s": need * clip_bytes / 1e9}
    ok = [k for k, v in res.items() if isinstance(v, dict) and "clip_bytes" in v and v["clips_per_s"] >= need]
    print(f"  a {a.step_ms:g} ms step at batch {a.batch} needs {need:.0f} clips/s = {need * clip_bytes / 1e9:.2f} GB/s"
          f" ({clip_bytes / 2**20:.2f} MiB per clip): met by {', '.join(ok) or 'none'}", flush=True)
    print(json.dumps(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res))
    return res


if __name__ == "__main__":
    import sys
    sys.exit(1 if main()["errors"] else 0)
