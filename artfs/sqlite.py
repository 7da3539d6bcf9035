"""Opening the small SQLite tables that many threads and processes of one user share."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

#: How long a writer waits for another to finish before giving up.
BUSY_TIMEOUT_S = 60.0


def connect_shared(path: Path, schema: str) -> sqlite3.Connection:
    """An autocommit connection in WAL mode with `schema` applied.

    Switching a database to WAL needs a moment of exclusive access, and SQLite reports
    "database is locked" at once, without waiting, when another connection opens it at that
    moment; the switch is retried until the deadline. WAL is persistent, so it only happens once.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(schema)
            return db
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                db.close()
                raise
            time.sleep(0.01)
