"""``gruv tensorboard``: a TensorBoard server over every run of a sweep, that lives and dies with
the command. TERM, INT and HUP stop the server before gruv exits; if gruv is killed outright,
the kernel sends the server TERM (Linux's parent-death signal). No orphan keeps the port.
TensorBoard reads a directory of links to the runs (``RunLinks``), which this process keeps in
step with the sweep: each run under its own name, new runs as they start."""
from __future__ import annotations

import getpass
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gruv_hpc import jobenv
from gruv_hpc.errors import ConfigError
from gruv_hpc.paths import RunPaths, SweepPaths

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
DEFAULT_RELOAD_S = 5.0  # TensorBoard's own default


LINKS_PREFIX = "gruv-tensorboard-"


def _remove_orphans() -> None:
    """Remove the link directories of gruv processes that were killed outright (SIGKILL skips
    ``close``): each is named after its process, ``gruv-tensorboard-PID-XXXX``."""
    for d in Path(tempfile.gettempdir()).glob(LINKS_PREFIX + "*-*"):
        pid = d.name[len(LINKS_PREFIX):].split("-")[0]
        if not pid.isdigit() or not d.is_dir() or d.is_symlink() or d.stat().st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)  # links only
        except OSError:
            pass  # alive (another user's pid, or ours)


def _own_tb(run_dir: Path) -> Path | None:
    """A run's TensorBoard folder, resolved, where it lies inside the run directory; None where
    there is none, or where ``tb`` is a link out of the run (to ``/etc``, say): TensorBoard would
    read, and show, whatever it leads to."""
    tb = RunPaths(run_dir).tb
    try:
        real = tb.resolve(strict=True)
        return real if real.is_dir() and real.is_relative_to(run_dir.resolve(strict=True)) else None
    except (OSError, RuntimeError):  # missing, or a loop of links
        return None


class RunLinks:
    """A directory of one symlink per run, NAME -> SWEEP/runs/NAME/tb, that TensorBoard reads as
    its one ``--logdir``. Why not the alternatives:

    - ``--logdir_spec NAME:PATH,...`` names each run "NAME/.", and the HParams plugin then looks
      for a session's metrics in run "NAME/./." (it keeps a group "." for run names ending in
      "."): every metric column stays empty. The list is also fixed at start, so a run that
      starts later never appears, and a comma in a path splits it.
    - ``--logdir SWEEP/runs`` fills the columns but names every run "NAME/tb".

    Links are added as runs write their first event files (``sync``, called every reload
    interval) and removed with their runs. The directory is this process's own (in TMPDIR), so a
    read-only sweep works, two servers over one sweep do not share it, and ``close`` removes it."""

    def __init__(self, sweep_dir):
        self.runs = SweepPaths(sweep_dir).runs
        if not self.runs.is_dir():
            raise ConfigError(f"{sweep_dir}: no {self.runs.name}/ directory; is it a sweep directory?")
        _remove_orphans()
        self.dir = Path(tempfile.mkdtemp(prefix=f"{LINKS_PREFIX}{os.getpid()}-"))
        self.sync()

    def sync(self) -> list[str]:
        """Bring the links in line with runs/; returns the names added."""
        try:
            want = {d.name: tb for d in self.runs.iterdir() if (tb := _own_tb(d)) is not None}
        except OSError:
            return []  # runs/ moved away or unreadable for a moment: keep what is linked
        have = {p.name: p for p in self.dir.iterdir()}
        for name in have.keys() - want.keys():
            have[name].unlink(missing_ok=True)
        added = []
        for name in sorted(want.keys() - have.keys()):
            try:
                (self.dir / name).symlink_to(want[name], target_is_directory=True)
                added.append(name)
            except FileExistsError:
                pass
        return added

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)  # links only: the runs' files are untouched


def command(logdir, host: str, port: int, reload_s: float = DEFAULT_RELOAD_S) -> list[str]:
    """The server's command line over ``logdir`` (a ``RunLinks`` directory): one path, never split."""
    # This interpreter's TensorBoard (the one installed with gruv-hpc), not whichever is first on PATH.
    return [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", host, "--port", str(port),
            "--reload_interval", f"{reload_s:g}"]


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


def _check_port(host: str, port: int) -> None:
    """Refuse a port in use in one line before starting anything (TensorBoard would say it among
    its start-up notes and exit 255). Another process may still take it in between; then
    TensorBoard's own message stands."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            # As TensorBoard's server binds: a port left in TIME_WAIT by the last server is free,
            # one that something listens on is not.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise ConfigError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror}); another "
                          "gruv tensorboard may be using it: pass another --port") from None


def serve(sweep_dir, host: str, port: int, grace_s: float = 15.0, out=print,
          reload_s: float = DEFAULT_RELOAD_S) -> int:
    """Run TensorBoard until it exits or this process is told to stop. Returns the exit status.
    Every ``reload_s`` seconds new runs of the sweep are linked in; TensorBoard, reloading at the
    same interval, shows them at its next reload."""
    if not 0 < reload_s < math.inf:
        raise ConfigError(f"--reload-interval {reload_s:g}: must be a number of seconds above 0 (default "
                          f"{DEFAULT_RELOAD_S:g})")
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port}: must be 1 .. 65535 (default 6006; another gruv tensorboard may use it)")
    _check_port(host, port)
    links = RunLinks(sweep_dir)
    try:
        return _serve(links, host, port, grace_s, out, reload_s)
    finally:
        links.close()


def _serve(links: RunLinks, host: str, port: int, grace_s: float, out, reload_s: float) -> int:
    cmd = command(links.dir, host, port, reload_s)
    out(" ".join(cmd))
    out(f"runs: {links.runs} ({len(list(links.dir.iterdir()))} with TensorBoard files; new ones are added as they start)")
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
    next_sync = time.monotonic() + reload_s
    try:
        while True:
            try:
                rc = proc.wait(timeout=min(0.5, reload_s))
                break
            except subprocess.TimeoutExpired:
                if stopped and time.time() - stopped[0][1] > grace_s:
                    proc.kill()  # TensorBoard ignored TERM
                if not stopped and time.monotonic() >= next_sync:
                    for name in links.sync():
                        out(f"new run: {name}")
                    next_sync = time.monotonic() + reload_s
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return 128 + stopped[0][0] if stopped else rc
