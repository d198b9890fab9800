"""Training throughput in frames (block-steps) per second.

    python bench/train.py [--hidden 256] [--batch 8] [--steps 12]

1. gruv's training loop (train.main: DataLoader over HDF5 shards, logging, checkpointing) against
   a bare PyTorch loop of the same model on in-memory tensors, at D = 22050 (the paper's features).
2. The whole model, bare loop: the peephole `lstm` against `lstm-fused` (torch.nn.LSTM) and `gru`.
3. The recurrent layer alone (H, B, T = 40, forward + backward).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from gruv_hpc.config import TrainConfig
from gruv_hpc.model import GRU, GRUVModel, PeepholeLSTM
from gruv_hpc.train import make_optimizer


DEVICE = torch.device("cpu")


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def flops_per_frame(cell: str, dim: int, hidden: int) -> float:
    """Forward + backward (x3) multiply-adds (x2) of one block-step."""
    rec = {"lstm": 8, "lstm-fused": 8, "gru": 6}[cell] * hidden * hidden
    return 3 * 2 * (2 * dim * hidden + rec)


def bare_loop(cell: str, dim: int, hidden: int, batch: int, T: int, steps: int, warmup: int = 2) -> float:
    torch.manual_seed(0)
    model = GRUVModel(dim, hidden, cell).to(DEVICE)
    opt = make_optimizer(TrainConfig(), model.parameters())  # the training default: RMSprop as in the paper's code
    x, y = torch.randn(batch, T, dim, device=DEVICE), torch.randn(batch, T, dim, device=DEVICE)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=DEVICE.type == "cuda")
    for i in range(warmup + steps):
        if i == warmup:
            _sync()
            t0 = time.perf_counter()
        with amp:
            pred, _ = model(x)
        loss = torch.nn.functional.mse_loss(pred.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
        opt.step()
    _sync()
    return steps * batch * T / (time.perf_counter() - t0)


def layer_alone(layer, B: int, T: int, H: int, n: int = 30) -> float:
    layer = layer.to(DEVICE)
    x = torch.randn(B, T, H, requires_grad=True, device=DEVICE)

    def step():
        y = layer(x)[0]
        y.sum().backward()
    for _ in range(5):
        step()
    _sync()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    _sync()
    return n * B * T / (time.perf_counter() - t0)


def gruv_loop(hidden: int, batch: int, steps: int, work: Path, workers: int) -> float:
    """frames/s of train.main's own epochs (training time only, evaluation excluded), after a warm-up epoch.
    Each epoch is ``steps`` optimizer steps, data loading from the HDF5 shards included."""
    from gruv_hpc.config import PreprocessConfig, build
    from gruv_hpc.preprocess import parse_sources, preprocess
    from gruv_hpc.synth import make_corpus
    from gruv_hpc.train import main
    data = work / "data"
    if not (data / "manifest.json").exists():
        make_corpus(work / "corpus", songs_per_artist=12, min_s=55, max_s=60, seed=0)
        preprocess(parse_sources([f"a={work / 'corpus' / 'aurora'}", f"b={work / 'corpus' / 'circuit'}"]), data,
                   PreprocessConfig(), progress=False)
    cfg = build(TrainConfig, dict(data=str(data), hidden=hidden, cell="lstm", batch_size=batch, epochs=3, workers=workers,
                                  device=DEVICE.type,
                                  limit_train_batches=steps, gen_seconds=0.0, log_every_steps=5))
    run = work / f"run-{time.time_ns()}"
    main(cfg, run)
    hist = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return sum(h["frames_per_s"] * h["epoch_s"] for h in hist[1:]) / sum(h["epoch_s"] for h in hist[1:])


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=16, help="steps per measured epoch (two are measured)")
    p.add_argument("--dim", type=int, default=22050)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the gruv loop (0: in the training process)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (cuda: bf16 autocast and TF32, as in training)")
    a = p.parse_args()
    global DEVICE
    DEVICE = torch.device("cuda" if a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available()) else "cpu")
    if DEVICE.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    T, res = 40, {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {DEVICE}"
          + (f" ({torch.cuda.get_device_name()})" if DEVICE.type == "cuda" else ""))
    # Bare loop before and after the gruv loop (the machine's speed drifts); same number of steps.
    bare = [bare_loop("lstm", a.dim, a.hidden, a.batch, T, 2 * a.steps)]
    with tempfile.TemporaryDirectory() as tmp:
        res["gruv_loop"] = gruv_loop(a.hidden, a.batch, a.steps, Path(tmp), a.workers)
    bare.append(bare_loop("lstm", a.dim, a.hidden, a.batch, T, 2 * a.steps))
    res["bare_lstm"] = sum(bare) / 2
    print(f"1. D={a.dim} H={a.hidden} T={T} B={a.batch}: gruv loop {res['gruv_loop']:.0f} frames/s, "
          f"bare loop {res['bare_lstm']:.0f} frames/s -> x{res['gruv_loop'] / res['bare_lstm']:.3f}")
    res["bare_lstm_fused"] = bare_loop("lstm-fused", a.dim, a.hidden, a.batch, T, a.steps)
    res["bare_gru"] = bare_loop("gru", a.dim, a.hidden, a.batch, T, a.steps)
    for cell in ("lstm", "lstm_fused", "gru"):
        res[f"tflops_{cell}"] = res[f"bare_{cell}"] * flops_per_frame(cell.replace("_", "-"), a.dim, a.hidden) / 1e12
    print(f"2. whole model: lstm {res['bare_lstm']:.0f}, lstm-fused {res['bare_lstm_fused']:.0f}, gru {res['bare_gru']:.0f} "
          f"frames/s -> lstm/lstm-fused x{res['bare_lstm'] / res['bare_lstm_fused']:.3f}")
    print(f"   achieved: lstm {res['tflops_lstm']:.3f}, lstm-fused {res['tflops_lstm_fused']:.3f}, gru {res['tflops_gru']:.3f} TFLOP/s")
    H, B = a.hidden, a.batch
    torch.manual_seed(0)
    res["layer_lstm"] = layer_alone(PeepholeLSTM(H, H), B, T, H)
    res["layer_lstm_eager"] = layer_alone(PeepholeLSTM(H, H, fused_backward=False), B, T, H)
    res["layer_torch_lstm"] = layer_alone(torch.nn.LSTM(H, H, batch_first=True), B, T, H)
    res["layer_gru"] = layer_alone(GRU(H, H), B, T, H)
    print(f"3. layer alone H={H} B={B} T={T} fwd+bwd: peephole lstm {res['layer_lstm']:.0f}, eager peephole "
          f"{res['layer_lstm_eager']:.0f}, torch.nn.LSTM {res['layer_torch_lstm']:.0f}, gru {res['layer_gru']:.0f} frames/s "
          f"-> peephole/nn.LSTM x{res['layer_lstm'] / res['layer_torch_lstm']:.2f} (eager x{res['layer_lstm_eager'] / res['layer_torch_lstm']:.2f})")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
