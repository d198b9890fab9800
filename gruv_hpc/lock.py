"""One writer at a time: an exclusive lock on a run directory, a dataset being written, a sweep.

The lock is ``flock`` on a small lock file that also names its holder (host, pid, Slurm job,
command, since when), so the second writer fails at once with an error that says who holds it.
The kernel drops a flock when its process dies, however it dies: a lock left behind by a killed
process is simply free again (the stale holder text is overwritten), and never needs cleaning up.

Shared filesystems:
- NFS (v3 with lockd, v4): Linux maps flock onto NFS byte-range locks, which the server holds
  across clients; they are dropped when the client process dies (or its lease expires).
- Lustre: flock works across nodes only when the client is mounted with ``-o flock``; with
  ``localflock`` it is node-local (two nodes could both hold it), and with ``noflock`` it fails:
  then this module raises an error saying so rather than run unlocked.
- GPFS/Spectrum Scale and BeeGFS support flock across nodes.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from gruv_hpc import jobenv
from gruv_hpc.errors import GruvError


class LockedError(GruvError):
    """Another process holds the lock; the message names it."""


def pid_alive(pid, host: str | None = None) -> bool:
    """Whether process ``pid`` lives. ``host``: where it was recorded; a process of another host
    cannot be checked from here and counts as not alive (callers that must be careful check the
    host themselves)."""
    if host is not None and host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
        return True
    except PermissionError:  # it exists, as another user's
        return True
    except (OSError, TypeError, ValueError):
        return False


def holder_info() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": jobenv.task_job_id(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(sys.argv)[:300]}


def describe(h: dict) -> str:
    if not h:
        return "another process (it has not written its name yet)"
    job = f", Slurm job {h['slurm_job_id']}" if h.get("slurm_job_id") else ""
    return f"pid {h.get('pid')} on {h.get('host')}{job}, since {h.get('since')}"


class Lock:
    """``with Lock(path, "run directory X"):`` holds ``path`` exclusively or raises LockedError."""

    def __init__(self, path: str | Path, what: str):
        self.path, self.what, self.fd = Path(path), what, None

    def __enter__(self) -> "Lock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockedError(f"{self.what} is in use by {describe(self.holder())} (lock {self.path})") from None
            raise GruvError(f"cannot lock {self.path} ({e.strerror}): the filesystem does not support flock "
                            "(on Lustre, mount with -o flock)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder_info()).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # the file stays: unlinking it would race with the next locker
        except OSError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def holder(self) -> dict:
        """Who holds (or last held) the lock, as written in the lock file; {} if unknown."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    @property
    def held(self) -> bool:
        return self.fd is not None
