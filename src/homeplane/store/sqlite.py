"""Embedded state store on SQLite (WAL mode, synchronous=FULL).

Each write is one SQLite transaction, so a ``kill -9`` at any moment leaves
either the old or the new value, never a torn one. One connection per store,
guarded by a lock: controllers call it from the event loop's thread or from
worker threads.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from homeplane.store.base import Entry, StoreError, Txn

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    mod_revision INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta(name, value) VALUES ('revision', 0);
"""


class SQLiteStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # private keys live here: owner-only (SQLite gives its -wal and -shm files the same mode)
            try:
                os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
                os.chmod(self.path, 0o600)
            except OSError as e:
                raise StoreError(f"cannot open state store {path}: {e}") from None
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open state store {path}: {e}") from None
        self._lock = threading.Lock()

    def _next_revision(self) -> int:
        self._db.execute("UPDATE meta SET value = value + 1 WHERE name = 'revision'")
        return int(self._db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0])

    def revision(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0])

    def get(self, key: str) -> Entry | None:
        with self._lock:
            row = self._db.execute("SELECT key, value, mod_revision FROM kv WHERE key = ?", (key,)).fetchone()
        return Entry(row[0], bytes(row[1]), row[2]) if row else None

    def list(self, prefix: str) -> list[Entry]:
        # Range scan [prefix, prefix + U+10FFFF) instead of LIKE, so "%" and "_" in keys are literal.
        with self._lock:
            rows = self._db.execute(
                "SELECT key, value, mod_revision FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                (prefix, prefix + "\U0010ffff"),
            ).fetchall()
        return [Entry(k, bytes(v), r) for k, v, r in rows]

    def put(self, key: str, value: bytes) -> int:
        with self._lock, self._tx():
            rev = self._next_revision()
            self._db.execute(
                "INSERT INTO kv(key, value, mod_revision) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, mod_revision = excluded.mod_revision",
                (key, value, rev),
            )
            return rev

    def delete(self, key: str) -> bool:
        with self._lock, self._tx():
            cur = self._db.execute("DELETE FROM kv WHERE key = ?", (key,))
            if cur.rowcount:
                self._next_revision()
            return cur.rowcount > 0

    def commit(self, txn: Txn) -> bool:
        with self._lock, self._tx():
            for key, expected in txn.compares:
                row = self._db.execute("SELECT mod_revision FROM kv WHERE key = ?", (key,)).fetchone()
                actual = row[0] if row else 0
                if actual != expected:
                    return False
            if not txn.puts and not txn.deletes:
                return True
            rev = self._next_revision()
            for key, value in txn.puts:
                self._db.execute(
                    "INSERT INTO kv(key, value, mod_revision) VALUES (?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, mod_revision = excluded.mod_revision",
                    (key, value, rev),
                )
            for key in txn.deletes:
                self._db.execute("DELETE FROM kv WHERE key = ?", (key,))
            return True

    def _tx(self) -> "_Transaction":
        return _Transaction(self._db)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (including a failed compare's return)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")
