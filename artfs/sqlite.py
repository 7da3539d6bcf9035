"""Opening the small SQLite tables that many threads and processes of one user share."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
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
            db.executescript(schema)
            return db
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                db.close()
                raise
            time.sleep(0.01)


class SharedDB:
    """A table file shared by this user's threads and processes: one connection per thread
    (a sqlite3 connection must not cross threads), opened on first use."""

    def __init__(self, path: Path, schema: str) -> None:
        self.path = path
        self._schema = schema
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = connect_shared(self.path, self._schema)
        return db

    def execute(self, sql: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
        return self._conn().execute(sql, params)

    def write_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        """`sql` once per row in one transaction: one commit, not one per row."""
        if not rows:
            return
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(sql, rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
