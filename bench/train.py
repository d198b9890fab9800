"""Training throughput in frames (block-steps) per second, achieved TFLOP/s and MFU.

    python bench/train.py [--hidden 256] [--batch 8] [--steps 16] [--device auto] [--data DIR]

1. gruv's training loop (train.main: the data path, logging, checkpointing) against a bare
   PyTorch loop of the same model on in-memory tensors, at D = 22050 (the paper's features).
2. The whole model, bare loop: the peephole `lstm` (its recurrence as chosen on this device, and
   eager), `lstm-fused` (torch.nn.LSTM: cuDNN on GPUs) and `gru`; achieved TFLOP/s and MFU.
3. The affine GEMMs alone (D->H and H->D, forward + backward, at B*T rows): TFLOP/s and MFU.
4. The recurrent layer alone (H, B, T = 40, forward + backward): the peephole LSTM's CUDA-graph
   path (on CUDA), its eager Function, plain autograd, torch.nn.LSTM and the GRU.

On CUDA every model runs as training does: bf16 autocast, TF32. MFU divides by the device's dense
bf16 tensor peak (PEAK_TFLOPS, matched on the device name; none on the CPU). FLOPs per frame
count the matmuls: forward, and backward without the input layer's input gradient.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

# As training's entry points do (training.distributed.prefer_huge_pages), before torch's first
# large allocation: both loops below run with it, so they compare like with like.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402

from gruv_hpc.training.config import TrainConfig
from gruv_hpc.training.model import GRU, GRUVModel, PeepholeLSTM
from gruv_hpc.training.trainer import make_optimizer


DEVICE = torch.device("cpu")
# Dense bf16 tensor-core peak, TFLOP/s (vendor datasheets, without sparsity); first match wins.
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("GH200", 989.4), ("H200", 989.4), ("H100", 989.4),
               ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0))


def peak_tflops(name: str | None) -> float | None:
    for key, peak in PEAK_TFLOPS:
        if name and key in name:
            return peak
    return None


def _timed(step, warmup: int, n: int) -> float:
    """Seconds for ``n`` calls of ``step`` after ``warmup`` untimed ones (the device synchronized)."""
    for _ in range(warmup):
        step()
    _sync()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    _sync()
    return time.perf_counter() - t0


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def rec_macs(cell: str, hidden: int) -> int:
    """Multiply-adds per frame of a recurrent layer's input and recurrent matmuls (H -> kH each)."""
    return {"lstm": 8, "lstm-fused": 8, "gru": 6}[cell] * hidden * hidden


def affine_flops_per_frame(dim: int, hidden: int) -> float:
    """D->H: forward + weight gradient (its input is data); H->D: forward + both gradients."""
    return 2 * dim * hidden * (2 + 3)


def flops_per_frame(cell: str, dim: int, hidden: int) -> float:
    return affine_flops_per_frame(dim, hidden) + 2 * 3 * rec_macs(cell, hidden)


def bare_loop(cell: str, dim: int, hidden: int, batch: int, T: int, steps: int, warmup: int = 3,
              recurrence: str = "auto") -> float:
    torch.manual_seed(0)
    model = GRUVModel(dim, hidden, cell, recurrence=recurrence).to(DEVICE)
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
        opt.step()
    _sync()
    return steps * batch * T / (time.perf_counter() - t0)


def affine_alone(dim: int, hidden: int, rows: int, n: int) -> float:
    """TFLOP/s of the two affine layers' GEMMs alone (forward + backward as in training)."""
    inp, out = torch.nn.Linear(dim, hidden).to(DEVICE), torch.nn.Linear(hidden, dim).to(DEVICE)
    x = torch.randn(rows, dim, device=DEVICE)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=DEVICE.type == "cuda")

    def step():
        with amp:
            y = out(inp(x))
        y.float().sum().backward()
    return n * rows * affine_flops_per_frame(dim, hidden) / _timed(step, 3, n) / 1e12


def layer_alone(layer, B: int, T: int, H: int, n: int = 30) -> float:
    layer = layer.to(DEVICE)
    x = torch.randn(B, T, H, requires_grad=True, device=DEVICE)

    def step():
        y = layer(x)[0]
        y.sum().backward()
    return n * B * T / _timed(step, 5, n)


def make_dataset(work: Path, songs: int, song_s: tuple[float, float], block_size: int, sample_rate: int) -> Path:
    from gruv_hpc.dataset.config import PreprocessConfig
    from gruv_hpc.dataset.build import parse_sources, preprocess
    from gruv_hpc.dataset.synth import make_corpus
    data = work / "data"
    if not (data / "manifest.json").exists():
        make_corpus(work / "corpus", songs_per_artist=songs, min_s=song_s[0], max_s=song_s[1], seed=0)
        preprocess(parse_sources([f"a={work / 'corpus' / 'aurora'}", f"b={work / 'corpus' / 'circuit'}"]), data,
                   PreprocessConfig(sample_rate=sample_rate, block_size=block_size), progress=False)
    return data


def gruv_loop(data: Path, hidden: int, batch: int, steps: int, work: Path, workers: int) -> float:
    """frames/s of train.main's own epochs (training time only, evaluation excluded), after a warm-up epoch.
    Each epoch is ``steps`` optimizer steps, data loading from the HDF5 shards included."""
    from gruv_hpc.config import build
    from gruv_hpc.training.trainer import main
    cfg = build(TrainConfig, dict(data=str(data), hidden=hidden, cell="lstm", batch_size=batch, epochs=3, workers=workers,
                                  device=DEVICE.type, limit_train_batches=steps, gen_seconds=0.0, log_every_steps=5))
    run = work / f"run-{time.time_ns()}"
    main(cfg, run)
    hist = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return sum(h["frames_per_s"] * h["epoch_s"] for h in hist[1:]) / sum(h["epoch_s"] for h in hist[1:])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=16, help="steps per measured epoch (two are measured)")
    p.add_argument("--T", type=int, default=40, help="sequence length of the bare loops (the paper's clips: 40)")
    p.add_argument("--dim", type=int, default=None, help="D of the bare loops (default: the dataset's)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the gruv loop (0: in the training process)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (cuda: bf16 autocast and TF32, as in training)")
    p.add_argument("--data", help="an existing dataset for the gruv loop (default: synthesize one)")
    p.add_argument("--songs", type=int, default=12, help="songs per artist of the synthetic corpus")
    p.add_argument("--song-s", type=float, nargs=2, default=[55, 60], metavar=("MIN", "MAX"))
    p.add_argument("--block-size", type=int, default=11025)
    p.add_argument("--sample-rate", type=int, default=44100)
    p.add_argument("--layer-iters", type=int, default=30, help="iterations of each layer-alone measurement")
    p.add_argument("--json", help="also write the figures to this file")
    a = p.parse_args(argv)
    global DEVICE
    DEVICE = torch.device("cuda" if a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available()) else "cpu")
    if DEVICE.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else None
    peak = peak_tflops(name)
    T, H, B = a.T, a.hidden, a.batch
    torch.manual_seed(0)
    res = {"device": name or "cpu", "peak_bf16_tflops": peak, "hidden": H, "batch": B, "T": T,
           "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE")}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {DEVICE}" + (f" ({name})" if name else "")
          + (f"; MFU against {peak} TFLOP/s (dense bf16)" if peak else "; no MFU (no known peak)"), flush=True)

    errors = {}
    res["errors"] = errors

    def save():
        if a.json:
            Path(a.json).write_text(json.dumps(res))

    def measure(key, fn, *args, **kw):
        """One figure; a failure is recorded (and makes the exit code 1), the others still run."""
        try:
            res[key] = fn(*args, **kw)
        except Exception as e:  # noqa: BLE001
            import traceback
            traceback.print_exc()
            res[key], errors[key] = None, f"{type(e).__name__}: {e}"[:300]
            if DEVICE.type == "cuda":
                torch.cuda.empty_cache()
        return res[key]

    def ratio(x, y):
        return res[x] / res[y] if res.get(x) and res.get(y) else None

    def fmt(v, spec=".0f"):
        return "failed" if v is None else format(v, spec)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(a.data) if a.data else make_dataset(Path(tmp), a.songs, a.song_s, a.block_size, a.sample_rate)
        dim = a.dim or json.loads((data / "manifest.json").read_text())["params"]["feature_dim"]
        res["dim"] = dim
        # Bare loop before and after the gruv loop (the machine's speed drifts); same number of steps.
        measure("bare_lstm_before", bare_loop, "lstm", dim, H, B, T, 2 * a.steps)
        measure("gruv_loop", gruv_loop, data, H, B, a.steps, Path(tmp), a.workers)
    measure("bare_lstm_after", bare_loop, "lstm", dim, H, B, T, 2 * a.steps)
    bare = [v for v in (res["bare_lstm_before"], res["bare_lstm_after"]) if v]
    res["bare_lstm"] = sum(bare) / len(bare) if bare else None
    print(f"1. D={dim} H={H} T={T} B={B}: gruv loop {fmt(res['gruv_loop'])} frames/s, "
          f"bare loop {fmt(res['bare_lstm'])} frames/s -> x{fmt(ratio('gruv_loop', 'bare_lstm'), '.3f')}", flush=True)
    save()
    measure("bare_lstm_eager", bare_loop, "lstm", dim, H, B, T, a.steps, recurrence="eager")
    measure("bare_lstm_fused", bare_loop, "lstm-fused", dim, H, B, T, a.steps)
    measure("bare_gru", bare_loop, "gru", dim, H, B, T, a.steps)
    for cell in ("lstm", "lstm_eager", "lstm_fused", "gru"):
        f = flops_per_frame(cell.replace("_eager", "").replace("_", "-"), dim, H)
        fr = res[f"bare_{cell}"]
        res[f"tflops_{cell}"] = fr * f / 1e12 if fr else None
        res[f"mfu_{cell}"] = res[f"tflops_{cell}"] / peak if peak and fr else None
    mfu = (lambda k: f" (MFU {res[k]:.1%})" if res[k] is not None else "")
    print(f"2. whole model: lstm {fmt(res['bare_lstm'])} (eager recurrence {fmt(res['bare_lstm_eager'])}), "
          f"lstm-fused {fmt(res['bare_lstm_fused'])}, gru {fmt(res['bare_gru'])} frames/s "
          f"-> lstm/lstm-fused x{fmt(ratio('bare_lstm', 'bare_lstm_fused'), '.3f')}", flush=True)
    print(f"   achieved: lstm {fmt(res['tflops_lstm'], '.3f')}{mfu('mfu_lstm')}, lstm-fused "
          f"{fmt(res['tflops_lstm_fused'], '.3f')}{mfu('mfu_lstm_fused')}, gru {fmt(res['tflops_gru'], '.3f')}"
          f"{mfu('mfu_gru')} TFLOP/s", flush=True)
    save()
    measure("affine_tflops", affine_alone, dim, H, B * T, max(a.steps, 5))
    res["affine_mfu"] = res["affine_tflops"] / peak if peak and res["affine_tflops"] else None
    res["affine_share_of_flops"] = affine_flops_per_frame(dim, H) / flops_per_frame("lstm", dim, H)
    print(f"3. affine GEMMs alone ({B * T} x {dim} x {H}, fwd+bwd): {fmt(res['affine_tflops'], '.3f')} TFLOP/s"
          f"{mfu('affine_mfu')}; {res['affine_share_of_flops']:.0%} of the lstm model's FLOPs", flush=True)
    save()
    n = a.layer_iters
    for key, make in (("layer_lstm", lambda: PeepholeLSTM(H, H)),
                      ("layer_lstm_graph", lambda: PeepholeLSTM(H, H, recurrence="graph")),
                      ("layer_lstm_function", lambda: PeepholeLSTM(H, H, recurrence="eager")),
                      ("layer_lstm_autograd", lambda: PeepholeLSTM(H, H, fused_backward=False)),
                      ("layer_torch_lstm", lambda: torch.nn.LSTM(H, H, batch_first=True)),
                      ("layer_gru", lambda: GRU(H, H))):
        torch.manual_seed(0)
        measure(key, lambda: layer_alone(make(), B, T, H, n))
    for k in ("layer_lstm_graph", "layer_lstm_function", "layer_lstm_autograd"):
        res[f"{k}_vs_torch_lstm"] = ratio(k, "layer_torch_lstm")
    res["layer_graph_vs_function"] = ratio("layer_lstm_graph", "layer_lstm_function")
    x = (lambda k: fmt(res[f"{k}_vs_torch_lstm"], ".2f"))
    print(f"4. layer alone H={H} B={B} T={T} fwd+bwd, frames/s: peephole lstm as chosen {fmt(res['layer_lstm'])}, "
          f"graph path{'' if DEVICE.type == 'cuda' else ' (no capture on the CPU)'} {fmt(res['layer_lstm_graph'])}, "
          f"eager Function {fmt(res['layer_lstm_function'])}, plain autograd {fmt(res['layer_lstm_autograd'])}, "
          f"torch.nn.LSTM {fmt(res['layer_torch_lstm'])}, gru {fmt(res['layer_gru'])} -> vs nn.LSTM: graph "
          f"x{x('layer_lstm_graph')}, Function x{x('layer_lstm_function')}, autograd x{x('layer_lstm_autograd')}; "
          f"graph/Function x{fmt(res['layer_graph_vs_function'], '.2f')}", flush=True)
    save()
    print(json.dumps(res))
    if errors:
        print(f"failed: {', '.join(errors)}", flush=True)
    return res


if __name__ == "__main__":
    import sys
    sys.exit(1 if main()["errors"] else 0)
