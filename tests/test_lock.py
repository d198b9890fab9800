"""The one-writer lock (gruv_hpc.lock): a live holder is named, a dead one's lock is free."""
import os
import signal
import socket
import subprocess
import sys

import pytest

from gruv_hpc.lock import Lock, LockedError

HOLD = ("import sys, time; from gruv_hpc.lock import Lock; l = Lock(sys.argv[1], 'x'); l.acquire(); "
        "print('held', flush=True); time.sleep(600)")


def _holder(path, **env):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, **env})
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_writer_is_refused_and_told_who_holds_it(tmp_path):
    p = _holder(tmp_path / ".lock", SLURM_JOB_ID="4242")
    try:
        with pytest.raises(LockedError) as e:
            Lock(tmp_path / ".lock", f"run directory {tmp_path}").acquire()
        msg = str(e.value)
        assert f"pid {p.pid}" in msg and socket.gethostname() in msg and "Slurm job 4242" in msg
        assert str(tmp_path) in msg
    finally:
        p.kill()
        p.wait()


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    p = _holder(tmp_path / ".lock")
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    with Lock(tmp_path / ".lock", "x") as lock:  # the kernel dropped the dead holder's flock
        assert lock.holder()["pid"] == os.getpid()
    assert lock.holder() == {}  # released: the file stays, its holder text is cleared


def test_one_process_two_locks_on_one_path(tmp_path):
    with Lock(tmp_path / "d" / ".lock", "x"):  # the parent folder is made
        with pytest.raises(LockedError):
            Lock(tmp_path / "d" / ".lock", "x").acquire()
    with Lock(tmp_path / "d" / ".lock", "x"):
        pass
