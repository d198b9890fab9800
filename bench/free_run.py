"""What training on the model's own free run costs a step (``rollout_frames``, ``rollout_noise``), and
what a gaussian head costs (``head``).

    python bench/free_run.py [--free 0 16 64] [--noise 0 0.5] [--head mean] [--hidden 128] [--dim 513] [--T 256]
                             [--batch 5] [--steps 8] [--repeats 5] [--cell lstm gru] [--out FILE.json]

The real-music runs' shape by default (logmag at 1024/256 has D = 513; 256 frames a clip; H = 128,
batch 5, predict = damped), trained on in-memory tensors with training's own step (bench/train.py's
``bare_loop``: RMSprop, the paper's; eager on the CPU; denormals flushed as training's entry points
do), ``--repeats`` runs of ``--steps`` timed steps each after warm-up steps, and the median of the
steps per second. ``free`` = 0 is teacher forcing; the free run's N steps go one frame at a time
through the recurrent layer, the input affine and the output affine, with the gradient through
them, so their cost does not batch over time as the teacher-forced frames' does. ``--head mean
gaussian`` measures each setting with both heads (a gaussian head adds a second H -> D affine and
the NLL); the ratio is to the mean head's teacher forcing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import train  # noqa: E402  (bench/train.py: its bare_loop)
from gruv_hpc.training import cells  # noqa: E402
from gruv_hpc.training.config import HEADS  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--free", type=int, nargs="+", default=[0, 16, 64])
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.5])
    p.add_argument("--cell", nargs="+", default=[cells.PAPER_LSTM, cells.PAPER_GRU])
    p.add_argument("--head", nargs="+", default=["mean"], choices=list(HEADS))
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--dim", type=int, default=513)
    p.add_argument("--T", type=int, default=256)
    p.add_argument("--batch", type=int, default=5)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; D={a.dim} H={a.hidden} T={a.T} "
          f"batch {a.batch}; median of {a.repeats} runs of {a.steps} steps")
    print("| cell | head | rollout_frames | rollout_noise | steps/s | x teacher forcing |")
    print("|---|---|---|---|---|---|")
    for cell in a.cell:
        base = None
        for head in a.head:
            for free in a.free:
                for noise in (a.noise if free else [0.0]):
                    runs = [train.bare_loop(cell, a.dim, a.hidden, a.batch, a.T, a.steps, warmup=3, predict="damped",
                                            free=free, free_noise=noise, head=head) / (a.batch * a.T)
                            for _ in range(a.repeats)]
                    med = statistics.median(runs)
                    base = med if free == 0 and base is None else base  # the first head's teacher forcing
                    rel = med / base if base else float("nan")
                    rows.append({"cell": cell, "head": head, "rollout_frames": free, "rollout_noise": noise,
                                 "steps_per_s": med, "runs": runs, "relative": rel})
                    print(f"| {cell} | {head} | {free} | {noise:g} | {med:.2f} | {rel:.2f} |", flush=True)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "optimizer": "rmsprop",
           "args": {k: v for k, v in vars(a).items() if k != "out"}, "rows": rows}
    if a.out:
        a.out.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    sys.exit(main() and 0)
