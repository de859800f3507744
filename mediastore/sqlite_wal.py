"""One idle SQLite connection per web process, held open so the write-ahead log outlives each request's own.

Under uvicorn every request opens its own SQLite connection and closes it at the end (``mediastore.databases``
says why they cannot be kept). When the connection that closes is the last one open on the file, SQLite copies
the whole WAL back into the database, syncs it, and deletes the WAL and its shared-memory index; the next
request creates both again. On a quiet server that was every write request: 1.1 ms instead of 0.1 ms for a
connect, one INSERT and a close, most of it in the kernel. With this connection open no close is the last, and
the WAL is checkpointed as it fills (SQLite's default: by the writer whose commit takes it past 1000 pages).

The connection never holds a transaction, so it stops no checkpoint from copying every frame. SQLite only: a
no-op on MongoDB and for an in-memory database.
"""

from __future__ import annotations

import sqlite3
import threading

_lock = threading.Lock()
_keeper: sqlite3.Connection | None = None


def keep_wal_open() -> bool:
    """Open this process's idle connection on the default database, once; True when one is open."""
    from django.db import DEFAULT_DB_ALIAS, connections
    from django.db.backends.sqlite3.base import DatabaseWrapper

    global _keeper
    connection = connections[DEFAULT_DB_ALIAS]
    if not isinstance(connection, DatabaseWrapper) or connection.is_in_memory_db():
        return False
    with _lock:
        if _keeper is None:
            _keeper = open_idle(str(connection.settings_dict["NAME"]))
    return True


def open_idle(path: str) -> sqlite3.Connection:
    """A connection on ``path`` that has joined its WAL and holds no transaction."""
    keeper = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        # WAL mode first, as every Django connection sets it (``mediastore.databases``): on a file still in
        # rollback mode (new, not migrated yet) this connection would hold nothing once its read ended.
        keeper.execute("PRAGMA journal_mode=WAL").fetchall()
        # A connection joins the WAL (maps its index, takes its shared lock) on its first read of the file.
        keeper.execute("SELECT count(*) FROM sqlite_master").fetchall()
    except sqlite3.Error:
        keeper.close()
        raise
    return keeper


def release() -> None:
    """Close the idle connection (tests; a process that exits needs no call)."""
    global _keeper
    with _lock:
        if _keeper is not None:
            _keeper.close()
            _keeper = None
