"""``gruv tensorboard``: a TensorBoard server over every run of a sweep, that lives and dies with
the command. TERM, INT and HUP stop the server before gruv exits; if gruv is killed outright,
the kernel sends the server TERM (Linux's parent-death signal). No orphan keeps the port."""
from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import sys
import time

from gruv_hpc import jobenv
from gruv_hpc.errors import ConfigError
from gruv_hpc.paths import RunPaths, SweepPaths

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def command(sweep_dir, host: str, port: int) -> list[str]:
    runs = SweepPaths(sweep_dir).runs
    if not runs.is_dir():
        raise ConfigError(f"{sweep_dir}: no {runs.name}/ directory; is it a sweep directory?")
    tbs = [(d.name, RunPaths(d).tb) for d in sorted(runs.iterdir()) if RunPaths(d).tb.is_dir()]
    if any("," in str(tb) or ":" in name for name, tb in tbs):
        # --logdir_spec is NAME:PATH,NAME:PATH: a comma in a path would split it. One --logdir
        # over runs/ is never split (each run then shows as NAME/tb).
        logdir = ["--logdir", str(runs)]
    else:
        logdir = ["--logdir_spec", ",".join(f"{name}:{tb}" for name, tb in tbs)]
    # This interpreter's TensorBoard (the one installed with gruv-hpc), not whichever is first on PATH.
    return [sys.executable, "-m", "tensorboard.main", *logdir, "--host", host, "--port", str(port)]


def how_to_reach(host: str, port: int) -> list[str]:
    """Where to point a browser, here and from a laptop (an ssh tunnel to this node)."""
    name, fq = socket.gethostname(), socket.getfqdn()
    node = fq if fq.startswith(name + ".") else name  # getfqdn() may say just "localhost"
    local = host in ("127.0.0.1", "localhost", "::1")
    lines = [f"TensorBoard: http://{'localhost' if local else node}:{port}/"]
    remote = bool(os.environ.get("SSH_CONNECTION")) or node.split(".")[0] not in ("localhost", "")
    if remote:
        lines.append(f"from your laptop: ssh -N -L {port}:{'localhost' if local else node}:{port} "
                     f"{getpass.getuser()}@{node}   then open http://localhost:{port}/")
        if jobenv.in_job():
            lines.append("  (this is a compute node: add -J USER@LOGIN_NODE to jump through the login node)")
        if local:
            lines.append("  (it listens on 127.0.0.1 only, which the tunnel needs; --host 0.0.0.0 would open it to "
                         "everyone who can reach this node)")
    return lines


def _die_with_parent() -> None:
    """In the child, before exec: TERM it when its parent dies, however the parent died."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the signal handlers below still stop it


def serve(sweep_dir, host: str, port: int, grace_s: float = 15.0, out=print) -> int:
    """Run TensorBoard until it exits or this process is told to stop. Returns the exit status."""
    cmd = command(sweep_dir, host, port)
    out(" ".join(cmd))
    for line in how_to_reach(host, port):
        out(line)
    proc = subprocess.Popen(cmd, preexec_fn=_die_with_parent)
    stopped: list[tuple[int, float]] = []  # (signal, when)

    def stop(signum, frame):
        stopped.append((signum, time.time()))
        try:
            proc.terminate()
        except OSError:
            pass

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if stopped and time.time() - stopped[0][1] > grace_s:
                    proc.kill()  # TensorBoard ignored TERM
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return 128 + stopped[0][0] if stopped else rc
