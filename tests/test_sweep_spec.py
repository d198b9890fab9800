"""Sweeps without a cluster: the sweep file, validation, the state file, planning, status, dry runs."""
import subprocess
import sys
import time


from gruv_hpc import sweep
from gruv_hpc.sweep import JobRecord, RunRecord

from conftest import write_sweep


def _record(sw, d, job=None):
    """sweep.json as a submission of ``sw`` to ``d`` would leave it (``job(run)``: its last job)."""
    state = sweep.load_state(d)
    state.runs = {r.name: RunRecord(r.config, r.grid, [job(r)] if job else []) for r in sw.runs}
    state.paths.root.mkdir(parents=True, exist_ok=True)
    state.save()
    return state


def test_plan_and_status_agree_on_a_live_local_job(tmp_path):
    f = write_sweep(tmp_path / "s.toml", tmp_path / "nodata", {"epochs": 1}, {"cell": ["lstm", "gru"]})
    sw, d = sweep.load_sweep(f), tmp_path / "sw"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "submitit"])
    try:
        _record(sw, d, lambda r: JobRecord(str(sleeper.pid), "local", time.time(), sleeper.pid))
        (d / "runs" / "gru").mkdir(parents=True)
        (d / "runs" / "gru" / "done.json").write_text("{}")
        todo, skipped = sweep.plan(sw, sweep.load_state(d))
        assert todo == [] and skipped == {"lstm": f"job {sleeper.pid} is RUNNING", "gru": "done"}
        assert {r["name"]: r["state"] for r in sweep.status(d)} == {"lstm": "RUNNING", "gru": "COMPLETED"}
    finally:
        sleeper.kill()
        sleeper.wait()
    todo, skipped = sweep.plan(sw, sweep.load_state(d))
    assert [r.name for r in todo] == ["lstm"] and skipped == {"gru": "done"}
    assert {r["name"]: r["state"] for r in sweep.status(d)} == {"lstm": "UNKNOWN", "gru": "COMPLETED"}
