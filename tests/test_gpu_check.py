"""bench/gpu_check.sh --cpu: the GPU check's every step, on the CPU at tiny shapes, so that the
script a GPU node runs once cannot rot where there is no GPU."""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def gpu_check(tmp_path, *args, timeout=240):
    env = {**os.environ, "OUT": str(tmp_path / "out")}
    p = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu", "--work", str(tmp_path / "work"), *args], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=timeout)
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("GPU_CHECK_JSON "), p.stdout[-3000:] + p.stderr[-3000:]
    report = json.loads(last.removeprefix("GPU_CHECK_JSON "))
    assert json.loads((tmp_path / "out" / "gpu_check.json").read_text())["steps"].keys() == report["steps"].keys()
    return p, report


def test_gpu_check_cpu_mode_passes(tmp_path):
    p, r = gpu_check(tmp_path)
    assert p.returncode == 0, p.stdout[-5000:]
    assert r["ok"] and r["mode"] == "cpu"
    assert list(r["steps"]) == ["env", "tests", "dataset", "run", "generate", "bench_train_h256", "bench_data"]
    f = r["figures"]
    assert f["tests"]["passed"] == f["tests"]["tests"] > 0
    assert f["run"]["epochs"] == [1, 2, 3] and f["run"]["resident_vs_stream_bitwise"] and f["run"]["resident_vs_stream_rel_l2"] == 0
    assert all(r["steps"]["run"]["checks"].values()) and len(r["steps"]["run"]["checks"]) >= 8
    assert f["generate"]["max_abs_diff"] <= 1e-3
    for k in ("gruv_loop", "bare_lstm", "bare_lstm_fused", "tflops_lstm", "affine_tflops", "layer_lstm_graph",
              "layer_lstm_function", "layer_torch_lstm", "bare_gru", "layer_gru_graph", "layer_gru_function",
              "ms_per_step_lstm", "ms_per_step_gru", "gbps_lstm", "gbps_gru", "floor_gb_lstm"):
        assert f["bench_train_h256"][k] > 0, k
    b = f["bench_train_h256"]
    assert b["ms_per_step_gru"] == pytest.approx(1e3 * 4 * 40 / b["bare_gru"], rel=2e-3)  # batch 4, T 40 (4 digits)
    assert b["gbps_lstm"] == pytest.approx(b["floor_gb_lstm"] / (b["ms_per_step_lstm"] / 1e3), rel=2e-3)
    g = f["goals"]["bench_train_h256"]
    assert g["gru_vs_lstm"] == pytest.approx(b["bare_gru"] / b["bare_lstm"], rel=2e-3) and g["gru_vs_lstm_met"] in (True, False)
    assert set(b["step_paths"].values()) == {"eager"} and "gru/step_graph=eager" in b["step_paths"]  # no capture on the CPU
    for c in ("lstm", "gru"):  # the step op by op, against training's own step (replayed from a graph on CUDA)
        assert b[f"bare_{c}_step_eager"] > 0
        assert g[f"{c}_step_graph_speedup"] == pytest.approx(b[f"bare_{c}"] / b[f"bare_{c}_step_eager"], rel=2e-3)
    for k in ("stream_w0", "stream_w1", "resident"):
        assert f["bench_data"][k]["clips_per_s"] > 0, k
    assert f["bench_data"]["need"]["clips_per_s"] == 4 / 0.005
    assert (tmp_path / "out" / "gpu_check_logs" / "run.log").read_text()


def test_a_failing_step_is_recorded_and_the_rest_run(tmp_path):
    (tmp_path / "work" / "data").mkdir(parents=True)
    (tmp_path / "work" / "data" / "manifest.json").write_text("{}")  # a broken dataset
    p, r = gpu_check(tmp_path, "--only", "env,bench_data", timeout=120)
    assert p.returncode == 1 and not r["ok"]
    assert list(r["steps"]) == ["env", "bench_data"]
    assert r["steps"]["env"]["ok"] and not r["steps"]["bench_data"]["ok"]
    assert r["steps"]["bench_data"]["error"] == "exit code 1"
    saved = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert "DatasetError" in saved["steps"]["bench_data"]["tail"]
    # after the summary table, not only "exit code 1": the end of the step's log, and its last line in the JSON
    end = p.stdout[p.stdout.index("\nstep                 result"):]
    assert "-- bench_data failed (exit code 1); the end of" in end and "DatasetError" in end.split("GPU_CHECK_JSON")[0]
    assert "DatasetError" in r["steps"]["bench_data"]["last_line"]


def test_goals_and_the_paper_grids_gpu_hours():
    """The grid's GPU-hours from the paper-shape figures: issue 23's own figures give its estimate
    back (8 GPU-hours of LSTM at 27 110 frames/s, the GRU's 5 220 about 41.5)."""
    import sys
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_check
    f = {"bare_lstm": 60000.0, "bare_gru": 48000.0, "bare_lstm_step_eager": 27110.0, "bare_gru_step_eager": 5220.0}
    g = gpu_check.goals({"bench_train_paper": f})["bench_train_paper"]
    assert g["grid_gpu_hours_step_eager"] == pytest.approx(8 + 8 * 27110 / 5220)
    assert g["grid_gpu_hours"] == pytest.approx(8 * 27110 / 60000 + 8 * 27110 / 48000)
    assert g["gru_vs_lstm"] == 0.8 and g["gru_vs_lstm_met"] and g["lstm_frames_per_s_met"]
    assert g["gru_step_graph_speedup"] == pytest.approx(48000 / 5220)
    g = gpu_check.goals({"bench_train_paper": {"bare_lstm": 1.0}})["bench_train_paper"]
    assert g["grid_gpu_hours"] is None and g["gru_vs_lstm_met"] is None and not g["lstm_frames_per_s_met"]
