"""Sweep overheads on the local Slurm cluster (slurm/cluster.sh start first).

    python bench/sweep.py

1. Wall time to validate and submit a 64-run grid (one sbatch per job array, not one per run).
2. Wall time of `gruv sweep status` on it (one sacct call).
3. Time from a preemption signal (scancel --signal=USR2) to the job training again.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def sh(*cmd) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def main():
    from gruv_hpc.cluster import sweep
    from gruv_hpc.cluster.scheduler import log_path
    from gruv_hpc.paths import SweepPaths
    from gruv_hpc.dataset.build import PreprocessConfig, parse_sources, preprocess
    from gruv_hpc.dataset.synth import make_corpus
    from gruv_hpc.training import cells
    if not sweep.slurm_available():
        raise SystemExit("no Slurm cluster answers: run slurm/cluster.sh start")
    work = Path(tempfile.mkdtemp(prefix="gruv-bench-sweep-"))
    make_corpus(work / "corpus", songs_per_artist=3, min_s=6, max_s=9, seed=1)
    preprocess(parse_sources([f"a={work / 'corpus' / 'aurora'}", f"b={work / 'corpus' / 'circuit'}"]), work / "data",
               PreprocessConfig(sample_rate=8000, block_size=64, clip_blocks=8), progress=False)
    grid = work / "grid.toml"
    grid.write_text(f"""data = "{work / 'data'}"
[train]
epochs = 100000
batch_size = 4
workers = 0
gen_seconds = 0.0
[grid]
cell = {json.dumps([cells.PAPER_LSTM, cells.PAPER_GRU])}
hidden = [4, 8, 16, 32]
seed = [0, 1, 2, 3, 4, 5, 6, 7]
[slurm]
time_min = 10
cpus_per_task = 1
mem_gb = 0.5
array_parallelism = 1
signal_delay_s = 30
""")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "gruv_hpc.cli", "sweep", "submit", str(grid), "--out", str(work / "sw"),
                        "--executor", "slurm", "--quiet"], capture_output=True, text=True)
    t_submit = time.perf_counter() - t
    assert r.returncode == 0, r.stderr
    state = sweep.load_state(work / "sw")
    arrays = {r.job.job_id.split("_")[0] for r in state.runs.values()}
    print(f"1. validate + submit {len(state.runs)} runs: {t_submit:.2f} s (wall, whole command) as {len(arrays)} job array(s)")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "gruv_hpc.cli", "sweep", "status", str(work / "sw"), "--json"],
                       capture_output=True, text=True, check=True)
    t_status = time.perf_counter() - t
    n = len(json.loads(r.stdout)["runs"])
    print(f"2. status of {n} runs: {t_status:.2f} s (wall, whole command)")

    sh("scancel", *sorted(arrays))

    # 3. preemption, on a run of its own (a requeued array task would queue behind its siblings).
    r = subprocess.run([sys.executable, "-m", "gruv_hpc.cli", "sweep", "submit", str(grid), "--out", str(work / "one"),
                        "--executor", "slurm", "--quiet", "cell=lstm", "hidden=4", "seed=0"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    state = sweep.load_state(work / "one")
    name = next(iter(state.runs))
    jid = state.runs[name].job.job_id
    run = state.run_paths(name)
    for _ in range(1200):
        if run.step_ckpts():
            break
        time.sleep(0.05)
    log = log_path(SweepPaths(work / "one").logs, jid)
    before = log.read_text().count("resumed from") if log.exists() else 0
    t = time.perf_counter()
    subprocess.run(["scancel", "--signal=USR2", jid])  # (exits non-zero for array tasks, yet signals them)
    t_back = None
    for _ in range(3000):
        if log.exists() and log.read_text().count("resumed from") > before:
            t_back = time.perf_counter() - t
            break
        time.sleep(0.05)
    sh("scancel", jid)
    print(f"3. preemption signal -> checkpoint, requeue, restart, resumed training: {t_back:.1f} s" if t_back else
          "3. the job did not resume within 150 s")
    print(json.dumps({"submit_64_s": t_submit, "status_64_s": t_status, "preempt_to_training_s": t_back}))


if __name__ == "__main__":
    main()
