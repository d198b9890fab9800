"""Progress for long commands: a tqdm bar on a terminal, plain lines everywhere else.

Under Slurm, nohup, CI or a pipe, tqdm writes a new carriage-return frame on every refresh, and a
log file ends up holding thousands of them. There a plain line is printed instead: at most every
``interval_s`` seconds, or, with ``interval_s=None``, whenever what it shows changes (for a few
long steps, such as the runs of a sweep: a line per minute would pile up over days), and a last
one when the work ends.
"""
from __future__ import annotations

import sys
import time


def progress(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", disable: bool = False,
             file=None, interval_s: float | None = 60.0):
    """A progress bar over ``iterable`` (or of ``total`` steps, advanced with ``update``)."""
    file = file or sys.stderr
    if disable or _isatty(file):
        from tqdm import tqdm
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, file=file)
    return PlainProgress(iterable, total, desc, unit, file, interval_s)


def _isatty(file) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):
        return False


class PlainProgress:
    """The part of tqdm's interface the commands use (iteration, ``n``, ``update``, ``set_postfix``,
    ``refresh``, ``close``), printing one line per ``interval_s`` instead of redrawing a bar."""

    def __init__(self, iterable, total, desc, unit, file, interval_s):
        self.iterable, self.desc, self.unit, self.file, self.interval_s = iterable, desc, unit, file, interval_s
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.postfix = 0, ""
        self.t0 = self._last = time.time()
        self._printed: tuple | None = None
        self._closed = False

    def __iter__(self):
        for x in self.iterable:
            yield x
            self.update(1)
        self.close()  # as tqdm does: the last line once the iterable is exhausted

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.interval_s is not None:  # on changes only, the caller's refresh or set_postfix prints:
            self.refresh()               # one line per event, not one per attribute set

    def set_postfix(self, **kw) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())
        self.refresh()

    def refresh(self) -> None:
        if self.interval_s is None:
            due = self._printed != (self.n, self.postfix)
        else:
            due = time.time() - self._last >= self.interval_s
        if due:
            self._print()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._printed != (self.n, self.postfix):  # a line for the end, unless it would repeat the last
                self._print()

    def _print(self) -> None:
        self._last = time.time()
        self._printed = (self.n, self.postfix)
        done = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        elapsed = time.strftime("%H:%M:%S", time.gmtime(self._last - self.t0))
        print(f"{self.desc}: {done} {self.unit}s, {elapsed} elapsed{', ' + self.postfix if self.postfix else ''}",
              file=self.file, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
