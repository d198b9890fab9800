"""Writing files so that a kill at any moment leaves the old version or the new one, never half.

Every file the project writes that another process reads (manifests, configs, sweep state,
checkpoints, done markers) goes through ``atomic_write``: a temp file in the same directory,
fsynced, then ``os.replace``, then an fsync of the directory so the rename itself survives a
crash. This module imports neither torch nor numpy.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable, IO


def fsync_dir(d: str | Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # some filesystems do not let a directory be opened; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """The temp file of a write in progress: hidden, beside its target, with the writer's pid."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write(path: str | Path, write: Callable[[IO], None], mode: str = "w") -> None:
    """Call ``write(f)`` on a temp file beside ``path``, fsync it, and move it into place.

    On any error (a full disk, say) the temp file is removed and the old ``path`` is untouched."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def json_safe(obj):
    """NaN and infinities become None: strict JSON readers reject Python's NaN/Infinity tokens."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dumps(obj, **kw) -> str:
    """json.dumps that never writes NaN or Infinity (see json_safe)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kw)


def atomic_write_json(path: str | Path, obj, indent: int | None = 1) -> None:
    atomic_write_text(path, dumps(obj, indent=indent))
