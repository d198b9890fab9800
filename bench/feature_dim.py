"""What each transform's feature dimension does to training speed (issue 30).

    python bench/feature_dim.py [--hidden 256 1024] [--batch 5] [--steps 8] [--repeats 3] [--device auto]

The paper's fft at 11025 samples has D = 22050 features a frame, 4 frames a second of 44.1 kHz
audio; logmag at 2048/512 has D = 1025 and 86 frames a second; logmag_if twice logmag's D. For
each transform at its default frame and hop, and each H, this trains the whole model on in-memory
tensors with training's own step (bench/train.py's ``bare_loop``: the default cell, RMSprop,
T = 40 frames a clip, the paper's), ``--repeats`` times, and prints the median of the frames per
second and what that is in seconds of audio trained per second (frames/s x hop / 44100): a frame
of a small D is cheap, but a second of audio holds many more of them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import train  # noqa: E402  (bench/train.py: its bare_loop and DEVICE)
from gruv_hpc.dataset.transforms import get_transform  # noqa: E402
from gruv_hpc.training import cells  # noqa: E402

SAMPLE_RATE = 44100
TRANSFORMS = ("fft", "logmag", "logmag_if")  # each at its default frame and hop


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--batch", type=int, default=5, help="clips a step (the original code's 5)")
    p.add_argument("--T", type=int, default=40, help="frames a clip")
    p.add_argument("--steps", type=int, default=8, help="timed steps a run")
    p.add_argument("--repeats", type=int, default=3, help="runs of each point; the median is printed")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the figures to this file")
    a = p.parse_args(argv)
    train.DEVICE = torch.device("cuda" if a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())
                                else "cpu")
    name = torch.cuda.get_device_name() if train.DEVICE.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}; cell {cells.DEFAULT}, batch {a.batch}, T {a.T}, "
          f"median of {a.repeats} runs of {a.steps} steps")
    print(f"{'transform':>10} {'frame/hop':>10} {'D':>6} {'H':>5} {'frames/s':>10} {'audio s/s':>10} {'spread':>7}")
    out = {"device": name, "batch": a.batch, "T": a.T, "rows": []}
    for h in a.hidden:
        for t in TRANSFORMS:
            tf = get_transform(t)
            runs = [train.bare_loop(cells.DEFAULT, tf.feature_dim, h, a.batch, a.T, a.steps, warmup=2)
                    for _ in range(a.repeats)]
            fps = statistics.median(runs)
            audio = fps * tf.hop / SAMPLE_RATE
            spread = (max(runs) - min(runs)) / fps
            print(f"{t:>10} {f'{tf.frame}/{tf.hop}':>10} {tf.feature_dim:>6} {h:>5} {fps:>10.0f} {audio:>10.2f} "
                  f"{spread:>7.1%}")
            out["rows"].append({"transform": t, "frame": tf.frame, "hop": tf.hop, "dim": tf.feature_dim, "hidden": h,
                                "frames_per_s": fps, "audio_s_per_s": audio, "runs": runs})
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
