"""Folders gruv replaces whole (a dataset, a report): built beside their place, swapped in by two
renames, and never a file lost that gruv did not write.

One helper for the dataset build, ``gruv analyze`` and the pipeline's analysis:

- ``swap_in(staging, out, foreign)``: ``out`` -> ``.NAME.old``, ``staging`` -> ``out``; then what
  ``foreign(old)`` names (the user's files in the old folder) is moved into the new one, and only
  then is the old folder removed. A crash between any two steps leaves every file in ``out`` or in
  ``.NAME.old``; ``recover`` finishes or undoes the swap. A foreign name that the new folder also
  has is never overwritten: the old folder is kept and the error names it.
- ``replace_dir(out, what, build, foreign)``: the whole cycle for a folder that is rebuilt from
  scratch each time (a report): the lock ``.NAME.lock`` (the ``Lock`` runs and datasets use), so
  a second writer fails at once naming the first; a staging folder named after this process
  (``.NAME.staging-PID``); the swap.
- A marker (``MARKER``) that lists every file gruv wrote into such a folder, so that anything a
  user added since is found by name (``unlisted``).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, TypeVar

from gruv_hpc.errors import GruvError
from gruv_hpc.fsio import atomic_write_text, fsync_dir
from gruv_hpc.lock import Lock, pid_alive

T = TypeVar("T")
Foreign = Callable[[Path], list]  # a folder -> the names of its top-level entries gruv did not write

MARKER = ".gruv-owned.json"


def aside_path(out: Path) -> Path:
    """Where the folder being replaced waits, for the moment of the swap."""
    return out.with_name(f".{out.name}.old")


def lock_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.lock")


def staging_path(out: Path, pid: int | None = None) -> Path:
    """This process' staging folder beside ``out``: two writers never share one."""
    return out.with_name(f".{out.name}.staging-{os.getpid() if pid is None else pid}")


def none_foreign(d: Path) -> list:
    return []


def _carry(old: Path, out: Path, foreign: Foreign) -> None:
    """Move the user's entries of ``old`` into ``out``, then remove ``old`` (the rest is gruv's)."""
    for name in foreign(old):
        if (out / name).exists() or (out / name).is_symlink():
            raise GruvError(f"{old / name}: not written by gruv, and the new {out} has a {name} of its own; "
                            f"{old} is kept: move {name} elsewhere, then remove {old}")
        os.rename(old / name, out / name)
    fsync_dir(out)
    shutil.rmtree(old, ignore_errors=True)


def swap_in(staging: Path, out: Path, foreign: Foreign = none_foreign) -> None:
    """Two renames (see the module's docstring), then the user's files carried over."""
    old = aside_path(out)
    if out.exists():
        os.rename(out, old)
    os.rename(staging, out)
    fsync_dir(out.parent)
    if old.is_dir():
        _carry(old, out, foreign)


def recover(out: Path, foreign: Foreign = none_foreign) -> str | None:
    """Finish or undo a swap a crash interrupted; call it with the lock held. Returns what was
    done ("put back": the previous folder is in place again; "finished": the new one stays, the
    user's files carried into it), or None."""
    old = aside_path(out)
    if not old.is_dir():
        return None
    if out.exists():
        _carry(old, out, foreign)
        return "finished"
    os.rename(old, out)
    return "put back"


def write_marker(d: Path, what: str) -> None:
    """List every file and folder under ``d`` (relative paths) in ``d/MARKER``: what gruv wrote."""
    entries = sorted(str(p.relative_to(d)) for p in d.rglob("*"))
    atomic_write_text(d / MARKER, json.dumps({"written_by": what, "entries": entries}, indent=0))


def unlisted(d: Path) -> list[str] | None:
    """The entries under ``d`` its marker does not list (what someone else put there), or None
    when ``d`` has no readable marker."""
    try:
        listed = set(json.loads((d / MARKER).read_text())["entries"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    found: list[str] = []
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d)
        if str(rel) != MARKER and str(rel) not in listed and not any(str(q) in found for q in rel.parents):
            found.append(str(rel))  # (a folder is named once, not each file in it)
    return found


def unlisted_top(d: Path) -> list:
    """``unlisted`` as top-level names (for ``swap_in``: what to carry over); [] without a marker."""
    return sorted({Path(rel).parts[0] for rel in unlisted(d) or []})


def _clean_stale_staging(out: Path) -> None:
    """Staging folders of writers that died (under the lock, only this process' could be live)."""
    for d in out.parent.glob(f".{out.name}.staging*"):
        pid = d.name.rpartition("-")[2]
        if d != staging_path(out) and not (pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid))):
            shutil.rmtree(d, ignore_errors=True)


def replace_dir(out: Path, what: str, build: Callable[[Path], T], check: Callable[[Path], None] = lambda d: None,
                foreign: Foreign = none_foreign) -> T:
    """Rebuild the folder ``out`` whole: under its lock, ``check(out)`` (may it be replaced? raise if
    not), ``build(staging)`` into this process' staging folder, ``write_marker``, swap it in.
    Returns what ``build`` returned. Raises ``LockedError`` naming the holder when another process
    is writing ``out``; a failed ``build`` leaves ``out`` as it was and no staging folder."""
    out = Path(out)
    with Lock(lock_path(out), what):
        recover(out, foreign)
        check(out)
        _clean_stale_staging(out)
        staging = staging_path(out)
        try:
            result = build(staging)
            write_marker(staging, what.split(" ")[0])
            swap_in(staging, out, foreign)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return result
