"""Generation: the paper's `refeed` algorithm against `stateful`, same model, same seed, one run.

    python bench/generate.py [--hidden 256] [--seed-blocks 40] [--ratios 1,3,6]

A 10 s seed is 40 blocks of the paper's features (D = 22050); a 3x continuation is 120 blocks.
Reports wall times, the speed-up and the max abs difference of the generated features.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from gruv_hpc.generation import generate_refeed, generate_stateful
from gruv_hpc.training import cells
from gruv_hpc.training.model import GRUVModel


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--dim", type=int, default=22050)
    p.add_argument("--cell", default=cells.DEFAULT, choices=cells.names())
    p.add_argument("--seed-blocks", type=int, default=40)
    p.add_argument("--ratios", default="1,3,6")
    a = p.parse_args()
    torch.manual_seed(0)
    model = GRUVModel(a.dim, a.hidden, a.cell).eval()
    seed = torch.randn(a.seed_blocks, a.dim)
    generate_stateful(model, seed, 2)  # warm-up
    out = []
    for r in (float(x) for x in a.ratios.split(",")):
        n = int(round(r * a.seed_blocks))
        t = time.perf_counter()
        s = generate_stateful(model, seed, n)
        ts = time.perf_counter() - t
        t = time.perf_counter()
        f = generate_refeed(model, seed, n)
        tr = time.perf_counter() - t
        diff = float((s - f).abs().max())
        out.append({"ratio": r, "blocks": n, "stateful_s": ts, "refeed_s": tr, "speedup": tr / ts, "max_abs_diff": diff})
        print(f"{a.cell} D={a.dim} H={a.hidden}, seed {a.seed_blocks} blocks, continuation {r:g}x = {n} blocks: "
              f"stateful {ts:.3f} s, refeed {tr:.2f} s -> x{tr / ts:.0f}; max abs diff {diff:.1e}", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
