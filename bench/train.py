"""Training throughput in frames (block-steps) per second, achieved TFLOP/s and MFU.

    python bench/train.py [--hidden 256] [--batch 8] [--steps 16] [--device auto] [--data DIR]

1. gruv's training loop (train.main: the data path, logging, checkpointing) against a bare
   PyTorch loop of the same model on in-memory tensors, at D = 22050 (the paper's features).
2. The whole model, bare loop, for every registered cell (gruv_hpc.training.cells: the paper's
   peephole LSTM and GRU with their recurrences as chosen on this device, torch.nn.LSTM), with
   training's own step (training/step.py: on CUDA the whole step replayed from one CUDA graph);
   the LSTM with its eager recurrence; the paper's two cells with the step taken op by op
   ("_step_eager", as before issue 23's step graph): frames/s, ms per training step, achieved
   TFLOP/s and MFU, and achieved GB/s against the memory-traffic floor of a step (below).
3. The affine GEMMs alone (D->H and H->D, forward + backward, at B*T rows): TFLOP/s and MFU.
4. The recurrent layer alone (H, B, T = 40, forward + backward): the peephole LSTM's CUDA-graph
   path (on CUDA), its eager Function, plain autograd, torch.nn.LSTM, and the GRU's CUDA-graph
   path, its eager Function and plain autograd.

On CUDA every model runs as training does: bf16 autocast, TF32. MFU divides by the device's dense
bf16 tensor peak (PEAK_TFLOPS, matched on the device name; none on the CPU). FLOPs per frame
count the matmuls: forward, and backward without the input layer's input gradient.

The memory-traffic floor of one training step (issue 23): at batch 5 a step is bound by memory
traffic, not FLOPs. Per parameter: the bf16 weights read forward and backward (2 + 2 bytes), the
fp32 gradient written (4) and RMSprop reading the parameter, gradient and square average and
writing the parameter and square average (5 x 4): FLOOR_BYTES_PER_PARAM = 28 bytes. "GB/s" is
that traffic over the measured step time; "floor ms" that traffic at the device's peak memory
bandwidth (PEAK_GBPS; none on the CPU).
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

from gruv_hpc.training import cells, distributed
from gruv_hpc.training.cells.gru import GRU
from gruv_hpc.training.cells.lstm import PeepholeLSTM
from gruv_hpc.training.config import TrainConfig
from gruv_hpc.training.model import GRUVModel
from gruv_hpc.training.step import TrainStep, step_graph_mode, wants_capturable
from gruv_hpc.training.optim import make_optimizer

distributed.flush_denormals()  # as training's entry points do, for both loops


DEVICE = torch.device("cpu")
# Dense bf16 tensor-core peak, TFLOP/s (vendor datasheets, without sparsity); first match wins.
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("GH200", 989.4), ("H200", 989.4), ("H100", 989.4),
               ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0))
# Peak memory bandwidth, GB/s (vendor datasheets); first match wins.
PEAK_GBPS = (("H100 PCIe", 2000.0), ("H100 NVL", 3900.0), ("GH200", 4900.0), ("H200", 4800.0), ("H100", 3350.0),
             ("A100-SXM4-40GB", 1555.0), ("A100", 2039.0), ("L40S", 864.0), ("L4", 300.0))
FLOOR_BYTES_PER_PARAM = 2 + 2 + 4 + 5 * 4  # see the module docstring
STEP_PATHS: dict[str, str] = {}  # bare_loop's models: how each step was taken (graph, eager, ...)


def _peak(table, name: str | None) -> float | None:
    for key, peak in table:
        if name and key in name:
            return peak
    return None


def peak_tflops(name: str | None) -> float | None:
    return _peak(PEAK_TFLOPS, name)


def peak_gbps(name: str | None) -> float | None:
    return _peak(PEAK_GBPS, name)


def model_params(cell: str, dim: int, hidden: int) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in GRUVModel(dim, hidden, cell).parameters())


def key_of(cell: str) -> str:
    """A cell's name as a figure key: lstm-fused -> lstm_fused."""
    return cell.replace("-", "_")


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


def bare_loop(cell: str, dim: int, hidden: int, batch: int, T: int, steps: int, warmup: int = 4,
              recurrence: str = "auto", step_graph: str = "auto", predict: str = "next", free: int = 0,
              free_noise: float = 0.0, head: str = "mean") -> float:
    """The whole model trained on in-memory tensors with training's own step (training/step.py):
    on CUDA, by default, replayed from one CUDA graph (its capture is in the warm-up). ``free`` and
    ``free_noise``: training's rollout_frames and rollout_noise, ``head`` training's head (bench/free_run.py)."""
    torch.manual_seed(0)
    model = GRUVModel(dim, hidden, cell, recurrence=recurrence, predict=predict, head=head).to(DEVICE)
    cfg = TrainConfig()  # the training default: RMSprop as in the paper's code
    mode = step_graph_mode(step_graph, DEVICE, 1, cfg.optimizer, cfg.lr_schedule)
    opt = make_optimizer(cfg, model.parameters(), capturable=wants_capturable(mode, DEVICE))
    step = TrainStep(model, opt, mode=mode, device=DEVICE, amp=True, full_batch=batch, free=free, free_noise=free_noise)
    win = torch.randn(batch, T + 1, dim, device=DEVICE)
    # as the trainer passes rollout_noise's generator (a step with one runs eagerly)
    kw = {"generator": torch.Generator(device=DEVICE).manual_seed(0)} if free and free_noise > 0 else {}
    for i in range(warmup + steps):
        if i == warmup:
            _sync()
            t0 = time.perf_counter()
        step(win, win[:, 1:], True, **kw)
    _sync()
    fps = steps * batch * T / (time.perf_counter() - t0)
    # how the step was taken, so that a figure is never labelled with a path it did not take
    path = ("graph" if step.replays else "graph path, no capture") if mode == "graph" and not step.failed else \
        "eager (the capture failed)" if step.failed else "eager"
    STEP_PATHS[f"{cell}{'/recurrence=' + recurrence if recurrence != 'auto' else ''}/step_graph={step_graph}"] = path
    return fps


def affine_alone(dim: int, hidden: int, rows: int, n: int) -> float:
    """TFLOP/s of the two affine layers' GEMMs alone (forward + backward as in training)."""
    inp, out = torch.nn.Linear(dim, hidden).to(DEVICE), torch.nn.Linear(hidden, dim).to(DEVICE)
    x = torch.randn(rows, dim, device=DEVICE)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=DEVICE.type == "cuda")

    def step():
        with amp:
            y = out(inp(x))
        y.float().sum().backward()
    return n * rows * cells.affine_flops_per_frame(dim, hidden) / _timed(step, 3, n) / 1e12


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
    cfg = build(TrainConfig, dict(data=str(data), hidden=hidden, cell=cells.DEFAULT, batch_size=batch, epochs=3, workers=workers,
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
    p.add_argument("--loop-only", action="store_true", help="measure part 1 only (the gruv loop against the bare loop)")
    a = p.parse_args(argv)
    global DEVICE
    DEVICE = torch.device("cuda" if a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available()) else "cpu")
    if DEVICE.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else None
    peak, gbps = peak_tflops(name), peak_gbps(name)
    d = key_of(cells.DEFAULT)
    T, H, B = a.T, a.hidden, a.batch
    torch.manual_seed(0)
    res = {"device": name or "cpu", "peak_bf16_tflops": peak, "peak_gbps": gbps, "hidden": H, "batch": B, "T": T,
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
        measure(f"bare_{d}_before", bare_loop, cells.DEFAULT, dim, H, B, T, 2 * a.steps)
        measure("gruv_loop", gruv_loop, data, H, B, a.steps, Path(tmp), a.workers)
    measure(f"bare_{d}_after", bare_loop, cells.DEFAULT, dim, H, B, T, 2 * a.steps)
    bare = [v for v in (res[f"bare_{d}_before"], res[f"bare_{d}_after"]) if v]
    res[f"bare_{d}"] = sum(bare) / len(bare) if bare else None
    print(f"1. D={dim} H={H} T={T} B={B}: gruv loop {fmt(res['gruv_loop'])} frames/s, "
          f"bare loop ({cells.DEFAULT}) {fmt(res[f'bare_{d}'])} frames/s -> x{fmt(ratio('gruv_loop', f'bare_{d}'), '.3f')}",
          flush=True)
    res["gruv_loop_vs_bare"] = ratio("gruv_loop", f"bare_{d}")
    save()
    if a.loop_only:
        return res
    # 2. Every registered cell's whole model, and the default cell with its eager recurrence.
    # On CUDA each whole step is replayed from one CUDA graph (step_graph=auto); "_step_eager" is
    # the paper's cells with the step taken op by op (the recurrences still graphed): before issue 23's step graph.
    models = [(key_of(c), c, {}) for c in cells.names()] + [(f"{d}_eager", cells.DEFAULT, {"recurrence": "eager"})] \
        + [(f"{key_of(c)}_step_eager", c, {"step_graph": "eager"}) for c in (cells.PAPER_LSTM, cells.PAPER_GRU)]
    for k, cell, kw in models:
        if k != d:
            measure(f"bare_{k}", bare_loop, cell, dim, H, B, T, a.steps, **kw)
        fr, spec = res[f"bare_{k}"], cells.get(cell)
        res[f"tflops_{k}"] = fr * spec.flops_per_frame(dim, H) / 1e12 if fr else None
        res[f"mfu_{k}"] = res[f"tflops_{k}"] / peak if peak and fr else None
        res[f"ms_per_step_{k}"] = 1e3 * B * T / fr if fr else None
        res[f"params_{k}"] = n = model_params(cell, dim, H)
        res[f"floor_gb_{k}"] = n * FLOOR_BYTES_PER_PARAM / 1e9
        res[f"gbps_{k}"] = res[f"floor_gb_{k}"] / (res[f"ms_per_step_{k}"] / 1e3) if fr else None
        res[f"floor_ms_{k}"] = 1e3 * res[f"floor_gb_{k}"] / gbps if gbps else None
    mfu = (lambda k: f" (MFU {res[k]:.1%})" if res[k] is not None else "")
    what = (lambda kw: " eager recurrence" if kw.get("recurrence") else " step op by op" if kw.get("step_graph") else "")
    print("2. whole model, frames/s: " + ", ".join(f"{cells.label(c)}{what(kw)} "
                                                   f"{fmt(res[f'bare_{k}'])}" for k, c, kw in models), flush=True)
    print("   achieved TFLOP/s: " + ", ".join(f"{k} {fmt(res[f'tflops_{k}'], '.3f')}{mfu(f'mfu_{k}')}"
                                             for k, _, _ in models), flush=True)
    print("   ms per step (B x T frames), and the step's memory traffic floor (GB, at "
          + (f"{gbps:.0f} GB/s: ms" if gbps else "no known peak bandwidth") + ") -> achieved GB/s: "
          + ", ".join(f"{k} {fmt(res[f'ms_per_step_{k}'], '.2f')} ms, floor {res[f'floor_gb_{k}']:.3g} GB"
                      + (f" = {res[f'floor_ms_{k}']:.3f} ms" if gbps else "") + f" -> {fmt(res[f'gbps_{k}'], '.3g')} GB/s"
                      for k, _, _ in models), flush=True)
    res["step_paths"] = dict(STEP_PATHS)
    print("   each step taken as: " + ", ".join(f"{k}: {v}" for k, v in STEP_PATHS.items()), flush=True)
    save()
    measure("affine_tflops", affine_alone, dim, H, B * T, max(a.steps, 5))
    res["affine_mfu"] = res["affine_tflops"] / peak if peak and res["affine_tflops"] else None
    res["affine_share_of_flops"] = cells.affine_flops_per_frame(dim, H) / cells.get(cells.DEFAULT).flops_per_frame(dim, H)
    print(f"3. affine GEMMs alone ({B * T} x {dim} x {H}, fwd+bwd): {fmt(res['affine_tflops'], '.3f')} TFLOP/s"
          f"{mfu('affine_mfu')}; {res['affine_share_of_flops']:.0%} of the {cells.DEFAULT} model's FLOPs", flush=True)
    save()
    n = a.layer_iters
    for key, make in (("layer_lstm", lambda: PeepholeLSTM(H, H)),
                      ("layer_lstm_graph", lambda: PeepholeLSTM(H, H, recurrence="graph")),
                      ("layer_lstm_function", lambda: PeepholeLSTM(H, H, recurrence="eager")),
                      ("layer_lstm_autograd", lambda: PeepholeLSTM(H, H, fused_backward=False)),
                      ("layer_torch_lstm", lambda: torch.nn.LSTM(H, H, batch_first=True)),
                      ("layer_gru", lambda: GRU(H, H)),
                      ("layer_gru_graph", lambda: GRU(H, H, recurrence="graph")),
                      ("layer_gru_function", lambda: GRU(H, H, recurrence="eager")),
                      ("layer_gru_autograd", lambda: GRU(H, H, fused_backward=False))):
        torch.manual_seed(0)
        measure(key, lambda: layer_alone(make(), B, T, H, n))
    for k in ("layer_lstm_graph", "layer_lstm_function", "layer_lstm_autograd", "layer_gru_graph"):
        res[f"{k}_vs_torch_lstm"] = ratio(k, "layer_torch_lstm")
    res["layer_graph_vs_function"] = ratio("layer_lstm_graph", "layer_lstm_function")
    res["layer_gru_graph_vs_function"] = ratio("layer_gru_graph", "layer_gru_function")
    res["layer_gru_graph_vs_lstm_graph"] = ratio("layer_gru_graph", "layer_lstm_graph")
    x = (lambda k: fmt(res[f"{k}_vs_torch_lstm"], ".2f"))
    graph = "" if DEVICE.type == "cuda" else " (no capture on the CPU)"
    print(f"4. layer alone H={H} B={B} T={T} fwd+bwd, frames/s: peephole lstm as chosen {fmt(res['layer_lstm'])}, "
          f"graph path{graph} {fmt(res['layer_lstm_graph'])}, "
          f"eager Function {fmt(res['layer_lstm_function'])}, plain autograd {fmt(res['layer_lstm_autograd'])}, "
          f"torch.nn.LSTM {fmt(res['layer_torch_lstm'])} -> vs nn.LSTM: graph "
          f"x{x('layer_lstm_graph')}, Function x{x('layer_lstm_function')}, autograd x{x('layer_lstm_autograd')}; "
          f"graph/Function x{fmt(res['layer_graph_vs_function'], '.2f')}", flush=True)
    print(f"   gru as chosen {fmt(res['layer_gru'])}, graph path{graph} {fmt(res['layer_gru_graph'])}, eager Function "
          f"{fmt(res['layer_gru_function'])}, plain autograd {fmt(res['layer_gru_autograd'])} -> graph/Function "
          f"x{fmt(res['layer_gru_graph_vs_function'], '.2f')}, gru graph/lstm graph "
          f"x{fmt(res['layer_gru_graph_vs_lstm_graph'], '.2f')}", flush=True)
    save()
    print(json.dumps(res))
    if errors:
        print(f"failed: {', '.join(errors)}", flush=True)
    return res


if __name__ == "__main__":
    import sys
    sys.exit(1 if main()["errors"] else 0)
