"""The GPU check: every CUDA path tested and measured in one run (bench/gpu_check.sh runs this).

    bash bench/gpu_check.sh [--cpu] [--budget SECONDS] [--only STEP,STEP] [--work DIR]

Steps, each in its own process under its own time limit (and all under ``--budget``); a failing
step is recorded and the next one runs; the exit code is 0 only when every step passed:

  env                versions, the device, its memory
  tests              pytest tests/test_cuda.py (GRUV_REQUIRE_CUDA=1: a skip is a failure), and the
                     model's CPU tests (test_recurrence.py, test_model.py) under the node's torch
  dataset            a synthetic corpus, preprocessed with the paper's parameters
  run                2 epochs on the device (resident data), resumed for a 3rd (streamed);
                     a second run streamed from the start, compared with the first
  generate           generation on the device from that run: stateful against refeed
  bench_train_paper  bench/train.py at the paper's shape: D=22050, H=2048, T=40, batch 5, bf16
  bench_train_h256   bench/train.py at H=256
                     (each: every cell's frames/s, ms per step and achieved GB/s against the
                     step's memory-traffic floor; the layers alone, layer_gru_graph among them)
  bench_data         bench/data.py: streaming with 0/1/2 workers, resident, the rate a 5 ms step needs

The figures' "goals" (issue 23: the GRU at >= 0.8x the LSTM's frames/s, the LSTM at >= 60 000
frames/s at the paper's shape) are reported met or not; they never fail the check.

It ends with one line ``GPU_CHECK_JSON {...}`` holding every figure, also written (after every
step) to ``$OUT/gpu_check.json`` when $OUT is set, with each step's log in ``$OUT/gpu_check_logs/``.

``--cpu`` runs the same steps on the CPU at tiny shapes (one bench_train step), so that the
script is exercised where there is no GPU (tests/test_gpu_check.py). This file imports no torch:
the steps that need it run in their own processes (``--step NAME``).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TAIL_LINES = 15  # lines of a failed step's log printed again after the summary

# Per mode: the corpus, the dataset parameters, the run's shapes, the benchmarks' arguments.
MODES = {
    "cuda": dict(
        device="cuda", budget=390, songs=6, song_s=(40, 45), pre={}, hidden=256, batch=5, limit=0, workers=2,
        seed_s=10.0,
        # the CUDA tests, and the model's CPU tests under this machine's torch (CI has another)
        tests=["tests/test_cuda.py", "tests/test_recurrence.py", "tests/test_model.py"],
        bench_train={"bench_train_paper": ["--hidden", "2048", "--batch", "5", "--steps", "8", "--workers", "2"],
                     "bench_train_h256": ["--hidden", "256", "--batch", "5", "--steps", "8", "--workers", "2"]},
        bench_data=["--batch", "5", "--step-ms", "5", "--seconds", "2", "--workers", "0", "1", "2"],
        timeouts=dict(env=60, tests=150, dataset=90, run=150, generate=90, bench_train_paper=150,
                      bench_train_h256=120, bench_data=120)),
    "cpu": dict(
        device="cpu", budget=150, songs=3, song_s=(3, 4), pre=dict(sample_rate=8000, block_size=64, clip_blocks=8),
        hidden=8, batch=4, limit=6, workers=0, seed_s=0.32, tests=["tests/test_cuda.py"],
        bench_train={"bench_train_h256": ["--hidden", "16", "--batch", "4", "--steps", "2", "--layer-iters", "3"]},
        bench_data=["--batch", "4", "--step-ms", "5", "--seconds", "0.2", "--workers", "0", "1"],
        timeouts=dict(env=60, tests=120, dataset=60, run=90, generate=60, bench_train_h256=90, bench_data=60)),
}
MIN_STEP_S = 15  # a step is not started with less time than this left in the budget
GOAL_GRU_VS_LSTM = 0.8          # the paper's GRU at this fraction of the LSTM's frames/s, or better
GOAL_LSTM_FRAMES_PER_S = 60000  # the LSTM at the paper's shape (bench_train_paper)
# Frames one cell's half of the paper's grid trains (2 artists x 4 hidden sizes x 2000 epochs),
# from issue 23's own estimate: 8 GPU-hours of LSTM at 27 110 frames/s. Timed at H = 2048 for every
# run, so the hours it gives are an upper bound.
GRID_FRAMES_PER_CELL = 8 * 3600 * 27110
# A dry run of the CUDA mode's shapes on a machine without a GPU: GPU_CHECK_DEVICE=cpu (slow, partial).
if os.environ.get("GPU_CHECK_DEVICE"):
    MODES["cuda"]["device"] = os.environ["GPU_CHECK_DEVICE"]


# ---------------------------------------------------------------------------------------------
# Steps that run in a process of their own: python3 bench/gpu_check.py --step NAME

class Checks:
    """Named pass/fail checks and figures of one step."""

    def __init__(self):
        self.checks, self.figures = {}, {}

    def check(self, name: str, ok: bool, detail=None) -> bool:
        self.checks[name] = bool(ok)
        mark = "ok  " if ok else "FAIL"
        print(f"  [{mark}] {name}" + (f": {detail}" if detail is not None else ""), flush=True)
        return bool(ok)


class Tee(io.TextIOBase):
    """stdout to the log and to a buffer (to find what train.main printed)."""

    def __init__(self, out):
        self.out, self.buf = out, io.StringIO()

    def write(self, s):
        self.out.write(s)
        self.buf.write(s)
        return len(s)

    def flush(self):
        self.out.flush()


def _printed(fn, *args, **kw) -> tuple[object, str]:
    tee = Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        r = fn(*args, **kw)
    return r, tee.buf.getvalue()


def step_env(mode: dict, work: Path, c: Checks) -> None:
    import platform

    import torch

    import gruv_hpc
    f = c.figures
    f.update(gruv_hpc=str(Path(gruv_hpc.__file__).parent), python=platform.python_version(), torch=torch.__version__,
             cuda=torch.version.cuda,
             cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
             cpus=os.cpu_count(), gpus=torch.cuda.device_count())
    for mod in ("numpy", "scipy", "h5py", "soundfile", "cffi", "tensorboard", "triton"):
        try:
            m = __import__(mod)
            f[mod] = getattr(m, "__version__", "?")
        except Exception as e:  # noqa: BLE001
            f[mod] = f"missing ({type(e).__name__})"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info(0)
        f.update(device=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                 mem_total_gib=total / 2**30, mem_free_gib=free / 2**30)
        try:
            f["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                         capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            f["driver"] = None
    print("  " + ", ".join(f"{k} {v}" for k, v in f.items()), flush=True)
    if mode["device"] == "cuda":
        c.check("cuda available", torch.cuda.is_available())
    c.check("soundfile imports", not str(f["soundfile"]).startswith("missing"), f["soundfile"])


def step_dataset(mode: dict, work: Path, c: Checks) -> None:
    from gruv_hpc.dataset.config import PreprocessConfig
    from gruv_hpc.dataset.build import parse_sources, preprocess
    from gruv_hpc.dataset.synth import make_corpus
    if (work / "data" / "manifest.json").exists():
        print(f"  reusing {work / 'data'}", flush=True)
        m = json.loads((work / "data" / "manifest.json").read_text())
        s = m["summary"]
        c.figures.update(train_clips=s["train_clips"], dev_clips=s["dev_clips"], feature_dim=m["params"]["feature_dim"])
        return
    t0 = time.time()
    make_corpus(work / "corpus", songs_per_artist=mode["songs"], min_s=mode["song_s"][0], max_s=mode["song_s"][1], seed=0)
    t1 = time.time()
    m = preprocess(parse_sources([f"aurora={work / 'corpus' / 'aurora'}", f"circuit={work / 'corpus' / 'circuit'}"]),
                   work / "data", PreprocessConfig(**mode["pre"]), progress=False)
    s = m["summary"]
    c.figures.update(synth_s=t1 - t0, preprocess_s=time.time() - t1, train_clips=s["train_clips"],
                     dev_clips=s["dev_clips"], hours=s["hours"], feature_dim=m["params"]["feature_dim"])
    print(f"  {s['train_clips']} train + {s['dev_clips']} dev clips, D={m['params']['feature_dim']}", flush=True)
    c.check("dataset has train and dev clips", s["train_clips"] >= mode["batch"] and s["dev_clips"] > 0)


def _run_cfg(mode: dict, work: Path, **kw):
    from gruv_hpc.training.config import TrainConfig
    from gruv_hpc.config import build
    base = dict(data=str(work / "data"), hidden=mode["hidden"], batch_size=mode["batch"], device=mode["device"],
                workers=mode["workers"], gen_seconds=0.0, log_every_steps=5, limit_train_batches=mode["limit"], seed=0)
    return build(TrainConfig, {**base, **kw})


def step_run(mode: dict, work: Path, c: Checks) -> None:
    import torch

    from gruv_hpc.training.checkpoint import load_checkpoint
    from gruv_hpc.paths import RunPaths, read_jsonl
    from gruv_hpc.generation.tensorboard import training_hooks
    from gruv_hpc.training.trainer import main
    import shutil
    shutil.rmtree(work / "runs", ignore_errors=True)  # a rerun (--only run --work DIR) starts afresh
    a, b = work / "runs" / "a", work / "runs" / "b"
    t0 = time.time()
    _, out1 = _printed(main, _run_cfg(mode, work, epochs=2, data_on_device="auto"), a)
    first = read_jsonl(a / "metrics.jsonl")
    t1 = time.time()
    # resumed for a 3rd epoch, streaming this time (a runtime key), with the generated sample at the end
    res, out2 = _printed(main, _run_cfg(mode, work, epochs=3, data_on_device="false", gen_seconds=mode["seed_s"] / 4), a,
                         hooks=training_hooks())  # the sample comes from the entry point's hooks, as gruv train's
    t2 = time.time()
    hist = read_jsonl(a / "metrics.jsonl")
    f = c.figures
    f.update(first_s=t1 - t0, resume_s=t2 - t1, epochs=[h["epoch"] for h in hist],
             train_loss=[h["train_loss"] for h in hist], dev_loss=[h["dev_loss"] for h in hist],
             frames_per_s=[h["frames_per_s"] for h in hist], peak_mem_mb=[h["peak_mem_mb"] for h in hist])
    c.check("2 epochs on the device", [h["epoch"] for h in first] == [1, 2])
    c.check("resident data chosen (auto)", "data: resident on " + mode["device"] in out1,
            next((ln for ln in out1.splitlines() if ln.startswith("data: ")), None))
    c.check("resumed: 'resumed from' printed", "resumed from" in out2,
            next((ln for ln in out2.splitlines() if "resumed from" in ln), None))
    c.check("resumed: metrics.jsonl epochs continue 1, 2, 3", [h["epoch"] for h in hist] == [1, 2, 3])
    c.check("resumed: the first 2 lines kept", hist[:2] == first)
    c.check("resumed: steps continue", hist[2]["step"] > hist[1]["step"] > hist[0]["step"])
    c.check("losses finite", all(math.isfinite(v) for h in hist for v in (h["train_loss"], h["dev_loss"])))
    c.check("done", res["status"] == "done" and (a / "done.json").exists())
    events = b"".join(p.read_bytes() for p in (a / "tb").glob("events.*"))
    c.check("TensorBoard sample generated on the device", b"generated/audio" in events)
    # The same 2 epochs streamed from the start: the data paths must agree.
    t3 = time.time()
    _printed(main, _run_cfg(mode, work, epochs=2, data_on_device="false"), b)
    f["stream_run_s"] = time.time() - t3
    wa = next(st["model"] for st in map(load_checkpoint, RunPaths(a).step_ckpts()) if st["train"]["epoch"] == 2)
    wb = load_checkpoint(RunPaths(b).step_ckpts()[0])["model"]
    diff = max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)
    rel = math.sqrt(sum(float((wa[k].double() - wb[k].double()).pow(2).sum()) for k in wa)
                    / sum(float(v.double().pow(2).sum()) for v in wa.values()))
    la = [v for h in first for v in (h["train_loss"], h["dev_loss"])]
    lb = [v for h in read_jsonl(b / "metrics.jsonl") for v in (h["train_loss"], h["dev_loss"])]
    loss_rel = max(abs(x - y) / abs(x) for x, y in zip(la, lb)) if len(la) == len(lb) else math.inf
    bitwise = all(torch.equal(wa[k], wb[k]) for k in wa)
    f.update(resident_vs_stream_max_abs_diff=diff, resident_vs_stream_rel_l2=rel, resident_vs_stream_loss_rel=loss_rel,
             resident_vs_stream_bitwise=bitwise, resident_vs_stream_losses_equal=la == lb)
    if mode["device"] == "cpu":  # the same batches: bitwise on the CPU
        c.check("resident vs streaming: bitwise equal weights and losses after 2 epochs", bitwise and la == lb)
    else:  # on the GPU: reported bitwise or not; a different batch would differ by far more than this
        c.check("resident vs streaming: losses within 1e-3 and weights within 1e-3 (relative L2) after 2 epochs",
                loss_rel <= 1e-3 and rel <= 1e-3,
                f"bitwise {bitwise}, max abs diff {diff:.3g}, relative L2 {rel:.3g}, losses {loss_rel:.3g}")


def step_generate(mode: dict, work: Path, c: Checks) -> None:
    import torch

    from gruv_hpc.generation import generate, generate_refeed, generate_stateful, load_run, seed_features
    run, dev, s = work / "runs" / "a", mode["device"], mode["seed_s"]
    side = generate(run, work / "gen.wav", seed_seconds=s, length_ratio=1.0, device=dev, algorithm="stateful")
    c.figures["stateful_wall_s"] = side["wall_s"]
    c.check("generate() wrote the WAV", (work / "gen.wav").stat().st_size > 0 and side["generated_blocks"] > 0,
            f"{side['generated_blocks']} blocks in {side['wall_s']:.3f} s")
    lr = load_run(run, device=dev)
    seed, _ = seed_features(lr, "dev", 0, s)
    x = torch.from_numpy(seed).to(dev)
    n = len(seed)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    g1 = generate_stateful(lr.model, x, n)
    sync()
    t1 = time.perf_counter()
    g2 = generate_refeed(lr.model, x, n)
    sync()
    t2 = time.perf_counter()
    diff = float((g1 - g2).abs().max())
    scale = float(g2.abs().max())
    c.figures.update(blocks=n, stateful_s=t1 - t0, refeed_s=t2 - t1, speedup=(t2 - t1) / max(t1 - t0, 1e-9),
                     max_abs_diff=diff, scale=scale)
    c.check("on the device", g1.device.type == dev and g2.device.type == dev)
    c.check("stateful == refeed within 1e-3 x max(1, |refeed|)", diff <= 1e-3 * max(1.0, scale),
            f"max abs diff {diff:.3g} (|refeed| up to {scale:.3g}), stateful {t1 - t0:.3f} s, refeed {t2 - t1:.3f} s")


STEP_FUNCS = {"env": step_env, "dataset": step_dataset, "run": step_run, "generate": step_generate}


def run_step_here(name: str, mode: dict, work: Path) -> int:
    """The body of a step process: run it, write WORK/results/NAME.json."""
    c = Checks()
    err = None
    try:
        STEP_FUNCS[name](mode, work, c)
    except BaseException as e:  # noqa: BLE001 (recorded, and the process fails)
        import traceback
        traceback.print_exc()
        err = f"{type(e).__name__}: {e}"
    ok = err is None and all(c.checks.values())
    (work / "results").mkdir(exist_ok=True)
    (work / "results" / f"{name}.json").write_text(json.dumps({"ok": ok, "checks": c.checks, "figures": c.figures,
                                                                "error": err}, default=str))
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------
# The orchestrator

def _round(x):
    if isinstance(x, float):
        return float(f"{x:.4g}") if math.isfinite(x) else str(x)
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v) for v in x]
    return x


def _stream(proc, prefix: str, log) -> None:
    for line in proc.stdout:
        sys.stdout.write(f"{prefix}{line}")
        sys.stdout.flush()
        log.write(line)


def goals(figures: dict) -> dict:
    """Issue 23's goals from the bench_train steps' figures (met: True/False, None: not measured)."""
    from gruv_hpc.training import cells
    lstm, gru = (c.replace("-", "_") for c in (cells.PAPER_LSTM, cells.PAPER_GRU))
    out = {}
    for name in ("bench_train_paper", "bench_train_h256"):
        f = figures.get(name) or {}
        if not f:
            continue
        fl, fg = f.get(f"bare_{lstm}"), f.get(f"bare_{gru}")
        g = {"lstm_frames_per_s": fl, "gru_frames_per_s": fg, "gru_vs_lstm": fg / fl if fl and fg else None,
             "ms_per_step_lstm": f.get(f"ms_per_step_{lstm}"), "ms_per_step_gru": f.get(f"ms_per_step_{gru}"),
             "gbps_lstm": f.get(f"gbps_{lstm}"), "gbps_gru": f.get(f"gbps_{gru}"),
             "floor_ms_lstm": f.get(f"floor_ms_{lstm}"), "layer_gru_graph": f.get("layer_gru_graph"),
             "layer_lstm_graph": f.get("layer_lstm_graph")}
        g["gru_vs_lstm_met"] = None if g["gru_vs_lstm"] is None else g["gru_vs_lstm"] >= GOAL_GRU_VS_LSTM
        # the step replayed from one CUDA graph (training's default on CUDA) against the step op by op
        for c in (lstm, gru):
            se = f.get(f"bare_{c}_step_eager")
            g[f"{c}_step_eager_frames_per_s"] = se
            g[f"{c}_step_graph_speedup"] = f.get(f"bare_{c}") / se if se and f.get(f"bare_{c}") else None
        if name == "bench_train_paper":
            hours = (lambda *fr: sum(GRID_FRAMES_PER_CELL / x / 3600 for x in fr) if all(fr) else None)
            g["grid_gpu_hours"] = hours(fl, fg)
            g["grid_gpu_hours_step_eager"] = hours(g[f"{lstm}_step_eager_frames_per_s"], g[f"{gru}_step_eager_frames_per_s"])
            g["lstm_frames_per_s_met"] = None if fl is None else fl >= GOAL_LSTM_FRAMES_PER_S
        out[name] = g
    return out


def run_command(cmd: list[str], timeout: float, log_path: Path, prefix: str, env: dict) -> tuple[int | None, str]:
    """Run ``cmd`` in its own process group, its output live (prefixed) and in ``log_path``.
    Returns (exit code or None on timeout, the output's tail)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, bufsize=1)
        t = threading.Thread(target=_stream, args=(proc, prefix, log), daemon=True)
        t.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the step and whatever it started (DataLoader workers)
            proc.wait()
            rc = None
        t.join(timeout=10)
    tail = log_path.read_text(errors="replace")[-1500:]
    return rc, tail


def plan(mode_name: str, mode: dict, work: Path, py: str) -> list[tuple[str, list[str], list[str]]]:
    """(step, command, steps it needs)."""
    me = [py, str(Path(__file__).resolve()), "--work", str(work)] + (["--cpu"] if mode_name == "cpu" else [])
    data = str(work / "data")
    steps = [("env", me + ["--step", "env"], []),
             ("tests", [py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *mode["tests"],
                        "--junitxml", str(work / "results" / "tests.xml")], []),
             ("dataset", me + ["--step", "dataset"], []),
             ("run", me + ["--step", "run"], ["dataset"]),
             ("generate", me + ["--step", "generate"], ["run"])]
    for name, args in mode["bench_train"].items():
        steps.append((name, [py, "bench/train.py", "--device", mode["device"], "--data", data,
                             "--json", str(work / "results" / f"{name}.json"), *args], ["dataset"]))
    steps.append(("bench_data", [py, "bench/data.py", "--device", mode["device"], "--data", data,
                                 "--json", str(work / "results" / "bench_data.json"), *mode["bench_data"]], ["dataset"]))
    return steps


def _tests_result(xml: Path) -> tuple[bool, dict]:
    import xml.etree.ElementTree as ET
    if not xml.exists():
        return False, {}
    root = ET.parse(xml).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    n["passed"] = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    n["names"] = {tc.get("name"): ("failed" if tc.find("failure") is not None or tc.find("error") is not None
                                   else "skipped" if tc.find("skipped") is not None else "passed")
                  for tc in suite.iter("testcase")}
    return n["tests"] > 0 and n["passed"] == n["tests"], n


def orchestrate(a) -> int:
    mode_name = "cpu" if a.cpu else "cuda"
    mode = MODES[mode_name]
    budget = a.budget or mode["budget"]
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="gruv-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "results").mkdir(exist_ok=True)
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    logs = (out / "gpu_check_logs") if out else (work / "logs")
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    if mode_name == "cuda":
        env["GRUV_REQUIRE_CUDA"] = "1"
    else:
        env["GRUV_CUDA_TESTS_ON_CPU"] = "1"
        env.setdefault("OMP_NUM_THREADS", "1")  # tiny shapes: threads only contend
    only = set(a.only.split(",")) if a.only else None
    if only:  # what the chosen steps read, when an earlier run in --work did not leave it
        if "generate" in only and not (work / "runs" / "a" / "done.json").exists():
            only.add("run")
        if only & {"run", "bench_train_paper", "bench_train_h256", "bench_data"} \
                and not (work / "data" / "manifest.json").exists():
            only.add("dataset")
    t_start = time.time()
    report = {"mode": mode_name, "ok": False, "budget_s": budget, "work": str(work), "steps": {}, "figures": {}}
    print(f"gpu_check ({mode_name}): work dir {work}, budget {budget} s", flush=True)

    def write():
        report["total_s"] = time.time() - t_start
        if out:
            out.mkdir(parents=True, exist_ok=True)
            (out / "gpu_check.json").write_text(json.dumps(_round(report), indent=1))

    for name, cmd, needs in plan(mode_name, mode, work, a.python):
        if only and name not in only:
            continue
        left = budget - (time.time() - t_start)
        rec = {"ok": False, "s": 0.0}
        report["steps"][name] = rec
        # A step needs the steps before it that it reads from (with --only, from an earlier --work run).
        missing = [n for n in needs if n in report["steps"] and not report["steps"][n]["ok"]]
        if missing:
            rec["error"] = f"not run: needs {', '.join(missing)}"
        elif left < MIN_STEP_S:
            rec["error"] = f"not run: {left:.0f} s left of the {budget} s budget"
        if "error" in rec:
            print(f"== {name}: {rec['error']}", flush=True)
            write()
            continue
        timeout = min(mode["timeouts"][name], left)
        print(f"== {name} (limit {timeout:.0f} s): {' '.join(cmd[1:])}", flush=True)
        t0 = time.time()
        rc, tail = run_command(cmd, timeout, logs / f"{name}.log", f"[{name}] ", env)
        rec["s"] = time.time() - t0
        rec["rc"] = rc
        res = work / "results" / f"{name}.json"
        if name == "tests":
            ok, counts = _tests_result(work / "results" / "tests.xml")
            rec["ok"] = ok and rc == 0
            report["figures"]["tests"] = counts
        elif name in STEP_FUNCS:
            r = json.loads(res.read_text()) if res.exists() else {}
            rec["ok"] = rc == 0 and r.get("ok", False)
            rec["checks"] = r.get("checks", {})
            if r.get("error"):
                rec["error"] = r["error"]
            report["figures"][name] = r.get("figures", {})
        else:
            report["figures"][name] = json.loads(res.read_text()) if res.exists() else {}
            rec["ok"] = rc == 0 and res.exists()
        if rc is None:
            rec["error"] = f"timed out after {timeout:.0f} s"
        if not rec["ok"]:
            rec.setdefault("error", f"exit code {rc}")
            rec["tail"] = tail[-600:]
            rec["log"] = str(logs / f"{name}.log")
            # its last line in the compact JSON, the tail at the end of the output: a device run
            # whose output is cut to its last lines still says why the step failed
            rec["last_line"] = next((ln for ln in reversed(tail.splitlines()) if ln.strip()), "")[-300:]
        print(f"== {name}: {'PASS' if rec['ok'] else 'FAIL'} in {rec['s']:.1f} s"
              + ("" if rec["ok"] else f" ({rec['error']})"), flush=True)
        write()
    report["ok"] = bool(report["steps"]) and all(r["ok"] for r in report["steps"].values())
    report["figures"]["goals"] = g = goals(report["figures"])
    for name, v in g.items():
        def f(x, spec=".0f"):
            return "-" if x is None else format(x, spec)
        print(f"{name}: LSTM {f(v['lstm_frames_per_s'])} frames/s ({f(v['ms_per_step_lstm'], '.2f')} ms/step, "
              f"{f(v['gbps_lstm'])} GB/s of the step's floor traffic), GRU {f(v['gru_frames_per_s'])} frames/s "
              f"({f(v['ms_per_step_gru'], '.2f')} ms/step) -> GRU/LSTM x{f(v['gru_vs_lstm'], '.2f')} "
              f"(goal >= {GOAL_GRU_VS_LSTM}: {v['gru_vs_lstm_met']})"
              + (f"; LSTM goal >= {GOAL_LSTM_FRAMES_PER_S}: {v['lstm_frames_per_s_met']}"
                 if "lstm_frames_per_s_met" in v else "")
              + f"; step graph vs op by op: LSTM x{f(v['lstm_step_graph_speedup'], '.2f')}, "
                f"GRU x{f(v['gru_step_graph_speedup'], '.2f')}"
              + (f"; the paper's grid: {f(v['grid_gpu_hours'], '.1f')} GPU-hours "
                 f"(op by op: {f(v['grid_gpu_hours_step_eager'], '.1f')})" if "grid_gpu_hours" in v else ""), flush=True)
    write()
    print("\nstep                 result   seconds")
    for name, r in report["steps"].items():
        print(f"{name:20s} {'PASS' if r['ok'] else 'FAIL':8s} {r['s']:7.1f}" + ("" if r["ok"] else f"  {r.get('error', '')}"))
    for name, r in report["steps"].items():
        if not r["ok"] and r.get("tail"):
            print(f"\n-- {name} failed ({r.get('error', '')}); the end of {r.get('log', 'its log')}:")
            print("\n".join("   " + ln for ln in r["tail"].splitlines()[-TAIL_LINES:]))
    print(f"gpu_check: {'ALL PASSED' if report['ok'] else 'FAILED'} in {time.time() - t_start:.0f} s ({mode_name})")
    compact = dict(report)
    compact["steps"] = {k: {kk: vv for kk, vv in v.items() if kk != "tail"} for k, v in report["steps"].items()}
    if "tests" in compact["figures"]:
        compact["figures"] = {**compact["figures"], "tests": {k: v for k, v in compact["figures"]["tests"].items()
                                                              if k != "names" or not report["steps"]["tests"]["ok"]}}
    print("GPU_CHECK_JSON " + json.dumps(_round(compact), separators=(",", ":")), flush=True)
    return 0 if report["ok"] else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="the same steps on the CPU at tiny shapes")
    p.add_argument("--budget", type=float, default=0, help="seconds for all steps (default 390 on CUDA, 150 with --cpu)")
    p.add_argument("--only", help="comma-separated steps to run (e.g. to rerun one that failed)")
    p.add_argument("--work", help="working directory (default: a new temp dir); the dataset is reused from it")
    p.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)
    p.add_argument("--step", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.step:
        return run_step_here(a.step, MODES["cpu" if a.cpu else "cuda"], Path(a.work))
    return orchestrate(a)


if __name__ == "__main__":
    sys.exit(main())
