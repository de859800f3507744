import sqlite3
from contextlib import closing
from pathlib import Path
from unittest import mock

import pytest
from django.db import DEFAULT_DB_ALIAS, connection

from mediastore import sqlite_wal


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "db.sqlite3"
    with closing(sqlite3.connect(path, isolation_level=None)) as setup:
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE t (x)")
    return path


def _write_and_close(path: Path) -> None:
    # As a request does: its own connection (in WAL mode, as Django's init_command sets), one INSERT that
    # commits, closed at the end.
    request = sqlite3.connect(path, isolation_level=None)
    request.execute("PRAGMA journal_mode=WAL")
    request.execute("INSERT INTO t VALUES (randomblob(500))")
    request.close()


def test_a_request_that_closes_last_checkpoints_and_deletes_the_wal(database: Path):
    # Why the keeper exists: this is SQLite's behaviour without it.
    _write_and_close(database)

    assert not database.with_name("db.sqlite3-wal").exists()


def test_with_the_idle_connection_open_a_request_that_closes_leaves_the_wal(database: Path):
    keeper = sqlite_wal.open_idle(str(database))
    try:
        _write_and_close(database)

        assert database.with_name("db.sqlite3-wal").stat().st_size > 0
        assert keeper.execute("SELECT count(*) FROM t").fetchone() == (1,)
    finally:
        keeper.close()


def test_the_idle_connection_keeps_the_wal_of_a_file_not_yet_in_wal_mode(tmp_path: Path):
    # A new database, before migrate, still in rollback mode.
    path = tmp_path / "new.sqlite3"
    with closing(sqlite3.connect(path, isolation_level=None)) as setup:
        setup.execute("CREATE TABLE t (x)")
    keeper = sqlite_wal.open_idle(str(path))
    try:
        _write_and_close(path)  # the first request switches the file to WAL

        assert path.with_name("new.sqlite3-wal").exists()
    finally:
        keeper.close()


def test_the_idle_connection_does_not_stop_a_checkpoint_from_copying_every_frame(database: Path):
    keeper = sqlite_wal.open_idle(str(database))
    try:
        for _ in range(5):
            _write_and_close(database)
        with closing(sqlite3.connect(database, isolation_level=None)) as other:
            busy, frames, copied = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        keeper.close()

    assert (busy, frames, copied) == (0, 0, 0)  # TRUNCATE empties the log only once every frame is copied


@pytest.mark.django_db
def test_the_web_process_opens_one_idle_connection_on_the_default_database():
    try:
        assert sqlite_wal.keep_wal_open() is (connection.vendor == "sqlite")
        first = sqlite_wal._keeper
        sqlite_wal.keep_wal_open()

        assert sqlite_wal._keeper is first
    finally:
        sqlite_wal.release()
    assert sqlite_wal._keeper is None


def test_no_idle_connection_on_mongodb():
    with mock.patch("django.db.connections", {DEFAULT_DB_ALIAS: mock.Mock(vendor="mongodb")}):
        assert sqlite_wal.keep_wal_open() is False
    assert sqlite_wal._keeper is None
