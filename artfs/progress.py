"""Byte-based progress for long transfers: a bar with rate and time left on a terminal, nothing
otherwise.

The bytes move deep inside stores and copy loops, on many threads at once; threading a callback
through every call would touch each signature on the way. Instead the loops that move bytes
call `add(n)`, which feeds whichever bar is open in this process (a no-op when none is).
Callers also report each finished file with `Progress.done`, so a store that cannot report
its bytes as they move still advances the bar file by file.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm import tqdm

#: A bar appears only for work that lasts longer than this (seconds): a quick command must not
#: flicker, a slow one must not look stuck.
SHOW_AFTER_S = 0.2
#: Redraw at most this often (seconds): redrawing per 1 MiB chunk would cost more than it shows.
REDRAW_S = 0.2

_active: Progress | Tracker | None = None
_active_lock = threading.Lock()


class Tracker:
    """Bytes moved so far out of an expected total, for a process without a terminal (the
    mount, during a commit) to hand to one that has one."""

    def __init__(self) -> None:
        self.total = 0
        self.done = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n

    def state(self) -> dict[str, int]:
        return {"done": min(self.done, self.total) if self.total else self.done,
                "total": self.total}


class Progress:
    """One bar over `total` bytes; safe to advance from any thread."""

    def __init__(self, total: int, what: str, *, quiet: bool = False,
                 stream: TextIO | None = None) -> None:
        out = stream or sys.stderr
        self.total = total
        self._streamed = 0
        self._done = 0
        self._lock = threading.Lock()
        self._bar = tqdm(total=total, desc=what, unit="B", unit_scale=True, unit_divisor=1024,
                         file=out, disable=quiet or not _is_terminal(out), leave=False,
                         delay=SHOW_AFTER_S, mininterval=REDRAW_S, dynamic_ncols=True)

    def add(self, n: int) -> None:
        """Bytes moved by a copy or transfer loop."""
        with self._lock:
            self._streamed += n
            self._show()

    def done(self, n: int) -> None:
        """Bytes of files finished so far grow by `n` (a floor under what `add` reported)."""
        with self._lock:
            self._done += n
            self._show()

    def _show(self) -> None:
        value = min(self.total, max(self._streamed, self._done))
        if value > self._bar.n:
            self._bar.update(value - self._bar.n)

    def set_total(self, total: int) -> None:
        with self._lock:
            self.total = total
            self._bar.total = total
            self._show()

    def close(self) -> None:
        self._bar.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def bar(total: int, what: str, *, quiet: bool = False) -> Iterator[Progress]:
    """Open a bar that `add` feeds until the block ends (one at a time per process)."""
    progress = Progress(total, what, quiet=quiet)
    try:
        with _feeding(progress):
            yield progress
    finally:
        progress.close()


@contextmanager
def track() -> Iterator[Tracker]:
    """Count the bytes `add` reports until the block ends, without drawing anything. One at a
    time per process: two commits at once in one mount would count into the later one."""
    tracker = Tracker()
    with _feeding(tracker):
        yield tracker


@contextmanager
def _feeding(sink: Progress | Tracker) -> Iterator[None]:
    global _active
    with _active_lock:
        outer, _active = _active, sink
    try:
        yield
    finally:
        with _active_lock:
            _active = outer


def expect(total: int) -> None:
    """The work under way will move `total` bytes, as far as a tracker needs to know."""
    current = _active
    if isinstance(current, Tracker):
        current.total = total


def add(n: int) -> None:
    """Report `n` bytes moved to the bar open in this process, if any."""
    current = _active
    if current is not None:
        current.add(n)
