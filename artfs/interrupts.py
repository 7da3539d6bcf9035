"""Ctrl-C and SIGTERM during a command that changes a registry: first undo or stop what is in
flight, then end as if killed by the signal.

Python turns Ctrl-C into KeyboardInterrupt only in the main thread, and only when the work
running elsewhere (thread pools, a request the mount carries out) is waited for; SIGTERM kills
at once. Either way work could finish after the user asked it to stop, or be left half-done
(an S3 multipart upload left open). A handler that acts first closes that gap.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a command: it exits with 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def cancel_on_signal(cancel: Callable[[], None], doing: str) -> Iterator[None]:
    """Within the block, Ctrl-C and SIGTERM say `doing`, call `cancel`, then raise
    Interrupted. A second signal acts as it would without this."""
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: object) -> None:
        for s, h in previous.items():
            signal.signal(s, h)
        print(f"artfs: interrupted: {doing}", file=sys.stderr, flush=True)
        cancel()
        raise Interrupted(signum)

    for s in (signal.SIGINT, signal.SIGTERM):
        previous[s] = signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
