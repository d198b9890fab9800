"""Checkpoints: when to save, atomic saves, rotation, ``best.pt``, loading the newest readable one.

A checkpoint counts once ``os.replace`` has put it in place: it is written to a temp file in the
same directory and fsynced first, so a kill at any moment leaves the previous one intact.
"""
from __future__ import annotations

import os
import random
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from gruv_hpc.fsio import atomic_write, temp_name
from gruv_hpc.lock import pid_alive
from gruv_hpc.paths import RunPaths, ckpt_step


class _WriteErrors:
    """A file torch.save writes through, keeping the OSError a write raised: torch reports it as
    "RuntimeError: ... unexpected pos", which says nothing of a full disk."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, b) -> int:
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(f):
        w = _WriteErrors(f)
        try:
            torch.save(obj, w)
        except RuntimeError:
            if w.error is not None:
                raise w.error from None  # ENOSPC as itself: the trainer names the path and the last good checkpoint
            raise
    atomic_write(path, write, mode="wb")


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    # weights_only: a checkpoint is data; unpickling it must not be able to run code.
    return torch.load(path, map_location=map_location, weights_only=True)


class Checkpointer:
    """Owns a run's checkpoints: the save policy (every ``ckpt_every_epochs`` epochs, the last
    epoch, a new best on dev, every ``ckpt_every_min`` minutes mid-epoch, a stop request), the
    writes (rank 0 only), rotation to the newest ``keep_last`` plus ``best.pt``, and loading."""

    def __init__(self, paths: RunPaths, every_epochs: int, every_min: float, keep_last: int, enabled: bool = True):
        self.paths, self.every_epochs, self.every_s, self.keep_last = paths, every_epochs, every_min * 60, keep_last
        self.enabled = enabled
        self.last_save = time.time()

    def due_mid_epoch(self) -> bool:
        return time.time() - self.last_save > self.every_s

    def due_at_epoch_end(self, epoch: int, last_epoch: int, is_best: bool) -> bool:
        return epoch % self.every_epochs == 0 or epoch == last_epoch or is_best

    def save(self, state: dict, step: int, is_best: bool = False) -> Path | None:
        """Write step_<step>.pt atomically, point best.pt at it if it is the best, drop old ones."""
        self.last_save = time.time()
        if not self.enabled:
            return None
        paths = self.paths
        path = paths.step_ckpt(step)
        atomic_torch_save(state, path)
        if is_best:
            # A hard link: no second copy of a multi-GB file, and rotation cannot delete the best.
            tmp = temp_name(paths.best)
            tmp.unlink(missing_ok=True)
            try:
                os.link(path, tmp)
            except OSError:  # filesystems without hard links
                atomic_torch_save(state, tmp)
            os.replace(tmp, paths.best)
        self._rotate(step)
        self.last_save = time.time()
        return path

    def _rotate(self, step: int) -> None:
        """Keep the newest ``keep_last`` checkpoints up to ``step`` (the one just written, so it is
        always kept). A checkpoint beyond ``step`` belongs to no timeline of this run (the run
        resumed from an older one because it did not load): it is set aside, never kept in a slot."""
        kept = 0
        for p in self.paths.step_ckpts():  # newest first
            if ckpt_step(p) > step:
                self._set_aside(p, f"newer than the step {step} this run resumed to")
            elif kept < self.keep_last:
                kept += 1
            else:
                p.unlink(missing_ok=True)

    def _set_aside(self, p: Path, why: str) -> None:
        dest = self.paths.unreadable / p.name
        dest.parent.mkdir(exist_ok=True)
        k = 1
        while dest.exists():
            dest, k = self.paths.unreadable / f"{p.stem}.{k}{p.suffix}", k + 1
        os.replace(p, dest)
        warnings.warn(f"checkpoint {p} set aside as {dest}: {why}", stacklevel=3)

    def load_latest(self, map_location="cpu") -> tuple[dict | None, Path | None]:
        """The newest checkpoint that loads. Rank 0 sets each unreadable one aside (into
        checkpoints/unreadable/, never deleted), so it can never take a rotation slot."""
        return load_latest(self.paths, map_location,
                           on_unreadable=(lambda p: self._set_aside(p, "unreadable")) if self.enabled else None)

    def unreadable(self) -> list[Path]:
        return sorted(self.paths.unreadable.glob("*.pt")) if self.paths.unreadable.is_dir() else []

    def clean_temp(self) -> None:
        """Remove temp files left by a save that was killed. Only stale ones: the caller holds the
        run directory's lock, and a temp file whose writer is still alive here is left alone."""
        if not (self.enabled and self.paths.ckpt_dir.is_dir()):
            return
        for p in self.paths.ckpt_dir.glob(".*.tmp*"):
            pid = p.name.rpartition(".tmp")[2]
            if pid.isdigit() and int(pid) != os.getpid() and pid_alive(pid):
                continue
            p.unlink(missing_ok=True)

    def discard(self) -> Path | None:
        """Start over (resume=never): move checkpoints, metrics, TensorBoard files and the done
        marker into discarded-<time>/ in the run directory. Nothing is deleted."""
        paths = self.paths
        old = [p for p in (paths.ckpt_dir, paths.tb, paths.metrics, paths.done) if p.exists()]
        if not (self.enabled and old):
            return None
        dest = paths.discarded(time.strftime("%Y%m%d-%H%M%S"))
        dest.mkdir()
        for p in old:
            os.replace(p, dest / p.name)
        return dest


def _load_run_checkpoint(p: Path, map_location) -> dict:
    state = load_checkpoint(p, map_location)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError("not a gruv checkpoint")
    return state


def load_latest(paths: RunPaths, map_location="cpu", on_unreadable=None) -> tuple[dict | None, Path | None]:
    """The newest checkpoint that loads (readers such as generation move nothing; the trainer's
    ``on_unreadable`` sets a bad one aside)."""
    for p in paths.step_ckpts():
        try:
            return _load_run_checkpoint(p, map_location), p
        except Exception as e:  # truncated zip, bad pickle, ...: fall back to the previous one
            warnings.warn(f"checkpoint {p} is unreadable ({type(e).__name__}: {e}); trying the previous one", stacklevel=3)
            if on_unreadable:
                on_unreadable(p)
    return None, None


def load_best(paths: RunPaths, map_location="cpu") -> tuple[dict | None, Path | None]:
    """best.pt, or the newest checkpoint that loads when there is none or it does not load."""
    if paths.best.exists():
        try:
            return _load_run_checkpoint(paths.best, map_location), paths.best
        except Exception as e:
            warnings.warn(f"{paths.best} is unreadable ({type(e).__name__}: {e}); using the newest readable "
                          "checkpoint instead", stacklevel=2)
    return load_latest(paths, map_location)


# ---------------------------------------------------------------------------------------------
# RNG state, as plain tensors and numbers (a weights_only checkpoint holds no numpy objects)

# ---------------------------------------------------------------------------------------------
# The checkpoint's layout: named parts, and a format version

FORMAT_VERSION = 3
# 1: gruv-hpc 0.1, the training state in flat keys and rank 0's part only;
# 2: the state in "train", every rank's part in "ranks";
# 3: 2 with "format_version" (the layout of every part is its own state_dict).


def pack(parts: dict, meta: dict) -> dict:
    """A checkpoint: each part's ``state_dict()`` under its name, beside ``meta`` (what the run was:
    its config, git origin, world size) and the format version."""
    return {"format_version": FORMAT_VERSION, **{name: p.state_dict() for name, p in parts.items()}, **meta}


def upgrade(sd: dict) -> dict:
    """A checkpoint of any earlier format in the current layout; a newer one is refused."""
    version = sd.get("format_version", 2 if "train" in sd else 1)
    if version > FORMAT_VERSION:
        raise ValueError(f"checkpoint format {version} is newer than this gruv-hpc reads ({FORMAT_VERSION}); "
                         "upgrade gruv-hpc")
    if version == 1:
        shared = ("epoch", "step", "pos", "best_dev", "history", "train_time")
        sd = {**sd, "train": {k: sd[k] for k in shared},
              "ranks": [{"loss_sum": sd["loss_sum"], "loss_n": sd["loss_n"], "rng": sd["rng"]}]}
    return {**sd, "format_version": FORMAT_VERSION}


def unpack(parts: dict, sd: dict) -> None:
    """Load every registered part from checkpoint ``sd``, in registration order; a part the
    checkpoint lacks is named."""
    sd = upgrade(sd)
    missing = [name for name in parts if name not in sd]
    if missing:
        raise KeyError(f"the checkpoint has no {', '.join(missing)}")
    for name, p in parts.items():
        p.load_state_dict(sd[name])


def rng_state() -> dict:
    np_state = np.random.get_state()
    st = {"python": random.getstate(), "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                                                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
          "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    # .cpu(): a checkpoint loaded with map_location="cuda" brings these tensors to the GPU too
    random.setstate(_tuplify(st["python"]))
    n = st["numpy"]
    np.random.set_state((n[0], n[1].cpu().numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(st["torch"].cpu())
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in st["cuda"]])


# The streams a run draws from, each its own key: derive_seed(seed, key, n) for two different
# (seed, n) never coincide, unlike seed + n (seed 2's epoch e would be seed 1's epoch e + 1).
DATA_ORDER, RANK = 0, 1


def derive_seed(seed: int, stream: int, n: int) -> int:
    """A 64-bit seed for item ``n`` (an epoch, a rank) of ``stream`` of a run seeded ``seed``:
    numpy's SeedSequence hashes the three together, so nearby seeds and items give unrelated
    seeds (no two runs share a data order, no rank of one run another's RNG)."""
    return int(np.random.SeedSequence([int(seed) & (2**64 - 1), stream, n]).generate_state(1, np.uint64)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF])  # numpy's legacy seed takes 32-bit words
    torch.manual_seed(seed)


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def git_info() -> dict:
    """The SHA and dirty flag of the source tree this package runs from (None outside git)."""
    src = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return {"sha": None, "dirty": None}
        st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                            capture_output=True, text=True, timeout=10)
        return {"sha": sha.stdout.strip(), "dirty": bool(st.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"sha": None, "dirty": None}
