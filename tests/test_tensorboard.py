"""gruv tensorboard as the browser sees it: the real server over a tiny trained sweep, its
HParams data read over HTTP with the requests TensorBoard's own frontend sends."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_config
from gruv_hpc.paths import read_jsonl
from gruv_hpc.training.trainer import main

ARTISTS = ("aurora", "circuit")
STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, route: str):
    return json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}{route}", timeout=10))


def _post(port: int, route: str, body: dict):
    # As the HParams dashboard posts it (TensorBoard refuses a POST without X-XSRF-Protected).
    req = urllib.request.Request(f"http://127.0.0.1:{port}{route}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"})
    return json.load(urllib.request.urlopen(req, timeout=30))


def _until(what: str, fn, p: subprocess.Popen, bound_s: float = 120):
    """fn()'s first truthy value. The bound only stops a hang (it is no timing assertion)."""
    deadline = time.time() + bound_s
    while time.time() < deadline:
        assert p.poll() is None, f"gruv tensorboard exited ({p.returncode}) while waiting for {what}"
        try:
            v = fn()
            if v:
                return v
        except OSError:
            pass  # not listening yet
        time.sleep(0.3)
    raise AssertionError(f"no {what} within {bound_s} s")


def _session_groups(port: int) -> dict[str, dict[str, float]]:
    """{run: {metric tag: value}} from /session_groups, the request the HParams table sends:
    every hparam and every metric the experiment lists, as columns in the result."""
    exp = _post(port, "/data/plugin/hparams/experiment", {"experimentName": ""})
    cols = [{"hparam": h["name"], "includeInResult": True} for h in exp["hparamInfos"]]
    cols += [{"metric": m["name"], "includeInResult": True} for m in exp.get("metricInfos", [])]
    res = _post(port, "/data/plugin/hparams/session_groups",
                {"experimentName": "", "allowedStatuses": STATUSES, "colParams": cols, "startIndex": 0, "sliceSize": 100})
    return {g["name"]: {m["name"]["tag"]: m["value"] for m in g.get("metricValues", [])} for g in res["sessionGroups"]}


def test_hparams_metrics_over_http_and_a_run_that_starts_later(data, tmp_path):
    sweep = tmp_path / "grid,v2" / "sweep"  # a comma in the path: never split (issue 22)
    runs = sweep / "runs"
    main(tiny_config(data, epochs=2, hidden=8), runs / "lstm-h8")
    main(tiny_config(data, epochs=2, hidden=8, cell="gru"), runs / "gru-h8")
    (runs / "gru-h16").mkdir()  # submitted, not started: no TensorBoard files yet
    port = _free_port()
    p = subprocess.Popen([sys.executable, "-m", "gruv_hpc.cli", "tensorboard", str(sweep), "--port", str(port),
                          "--reload-interval", "1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        listed = _until("runs", lambda: _get(port, "/data/runs"), p)
        assert sorted(listed) == ["gru-h8", "lstm-h8"]  # the runs' own names: no "/." or "/tb"
        groups = _until("HParams metric values", lambda: (g := _session_groups(port)) and all(g.values()) and g, p)
        assert set(groups) == {"gru-h8", "lstm-h8"}
        for name, got in groups.items():
            hist = read_jsonl(runs / name / "metrics.jsonl")
            last = hist[-1]
            want = {"epoch/dev_loss": last["dev_loss"], "epoch/train_loss": last["train_loss"],
                    "epoch/best_dev_loss": min(h["dev_loss"] for h in hist),
                    **{f"epoch/dev_loss/{a}": last["dev_loss_by_artist"][a] for a in ARTISTS}}
            for tag, v in want.items():
                assert got.get(tag) == pytest.approx(v, rel=1e-6), (name, tag, got)  # float32 in the event file

        # A run that starts after the server: linked in and read within a reload or two.
        main(tiny_config(data, epochs=1, hidden=4), runs / "lstm-h4")
        _until("the late run", lambda: "lstm-h4" in _get(port, "/data/runs"), p)
        # until its dev loss is in: TensorBoard can list a run's first scalars a reload before the rest
        late = _until("the late run's metrics", lambda: (g := _session_groups(port).get("lstm-h4")) and
                      "epoch/dev_loss" in g and g, p)
        assert late["epoch/dev_loss"] == pytest.approx(read_jsonl(runs / "lstm-h4" / "metrics.jsonl")[-1]["dev_loss"],
                                                       rel=1e-6)
    finally:
        p.terminate()
        out, _ = p.communicate(timeout=60)
    assert "new run: lstm-h4" in out and "--logdir_spec" not in out, out
    links = [w for w in out.split() if "gruv-tensorboard-" in w]
    assert links and not Path(links[0]).exists()  # its link directory went with it


def test_tensorboard_refuses_bad_input_in_one_line(tmp_path):
    import socket
    (tmp_path / "sw" / "runs").mkdir(parents=True)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()  # a port in use (say, by another gruv tensorboard)
    taken = busy.getsockname()[1]
    for args, msg in (([str(tmp_path / "nosuch")], "no runs/ directory"),
                      ([str(tmp_path / "sw"), "--reload-interval", "0"], "--reload-interval 0: must be a number of seconds above 0"),
                      ([str(tmp_path / "sw"), "--port", str(taken)], f"--port {taken}: cannot listen on 127.0.0.1")):
        port = [] if "--port" in args else ["--port", str(_free_port())]
        r = subprocess.run([sys.executable, "-m", "gruv_hpc.cli", "tensorboard", *args, *port],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines() == [f"gruv: error: {r.stderr.split('error: ', 1)[1].strip()}"]
        assert msg in r.stderr, r.stderr
    busy.close()


@pytest.mark.parametrize("port, reload_s, msg", [(-1, 5.0, "--port -1: must be 1 .. 65535"),
                                                  (99999, 5.0, "--port 99999: must be 1 .. 65535"),
                                                  (0, 5.0, "--port 0: must be 1 .. 65535"),
                                                  (6006, float("inf"), "--reload-interval inf: must be a number")])
def test_ports_and_intervals_out_of_range_are_refused_by_name(tmp_path, port, reload_s, msg):
    """Issue 32 L1/L5: these were a raw OverflowError, a server that never reloads, or 'localhost:0'."""
    from gruv_hpc.errors import ConfigError
    from gruv_hpc.tbserver import serve
    (tmp_path / "sw" / "runs").mkdir(parents=True)
    with pytest.raises(ConfigError, match=msg):
        serve(tmp_path / "sw", "127.0.0.1", port, reload_s=reload_s)


def test_a_runs_tb_link_out_of_its_run_is_not_followed(tmp_path):
    """Issue 32 L9: runs/evil/tb -> /etc was linked and TensorBoard walked /etc."""
    from gruv_hpc.tbserver import RunLinks
    runs = tmp_path / "sw" / "runs"
    (runs / "good" / "tb").mkdir(parents=True)
    (runs / "evil").mkdir()
    (runs / "evil" / "tb").symlink_to("/etc", target_is_directory=True)
    (runs / "loop").mkdir()
    (runs / "loop" / "tb").symlink_to(runs / "loop" / "tb")
    links = RunLinks(tmp_path / "sw")
    try:
        assert sorted(p.name for p in links.dir.iterdir()) == ["good"]
    finally:
        links.close()


def test_link_directories_of_killed_servers_are_removed(tmp_path):
    from gruv_hpc.tbserver import LINKS_PREFIX, RunLinks
    (tmp_path / "sw" / "runs" / "a" / "tb").mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import tempfile
    orphan = Path(tempfile.mkdtemp(prefix=f"{LINKS_PREFIX}{dead.pid}-"))
    (orphan / "a").symlink_to(tmp_path / "sw" / "runs" / "a" / "tb")
    mine = Path(tempfile.mkdtemp(prefix=f"{LINKS_PREFIX}{os.getpid()}-"))  # a live process's: kept
    links = RunLinks(tmp_path / "sw")
    try:
        assert not orphan.exists() and mine.exists()
        assert (tmp_path / "sw" / "runs" / "a" / "tb").is_dir()  # the target is untouched
    finally:
        links.close()
        mine.rmdir()


def test_spectrogram_image_has_axes_and_size():
    from gruv_hpc.plotting import log_frequency_edges, spectrogram_image
    sr, n = 8000, 64
    freqs = np.fft.rfftfreq(n, 1 / sr)
    edges = log_frequency_edges(freqs)
    # Each bin's edges are the geometric means of it and its neighbours.
    assert edges[1] == pytest.approx(np.sqrt(freqs[1] * freqs[2])) and len(edges) == len(freqs)
    mag = np.full((40, len(freqs)), 1e-3)
    mag[:, 8] = 1.0  # a 1 kHz tone
    img = spectrogram_image(mag, freqs, n / sr, title="t", mark_s=0.1, mark_label="generated")
    assert img.shape == (400, 800, 3) and img.dtype == np.uint8
    # Not the old near-black image: white margins with labels around the plot, and colour in it.
    assert img.mean() > 100 and len(np.unique(img.reshape(-1, 3), axis=0)) > 50
    with pytest.raises(ValueError, match="2 frequency bins"):
        log_frequency_edges(np.array([0.0, 100.0]))
