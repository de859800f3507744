"""One schema for both backends: migrations are complete under SQLite and MongoDB settings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.services import REPO_ROOT


def _makemigrations_check(database_url: str | None, data_dir: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DATABASE_NAME"}}
    env["DATA_DIR"] = str(data_dir)
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    started = time.monotonic()
    result = subprocess.run([sys.executable, "manage.py", "makemigrations", "--check", "--dry-run"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    return result, time.monotonic() - started


def test_migrations_are_complete_on_sqlite(tmp_path: Path):
    result, _ = _makemigrations_check(None, tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "No changes detected" in result.stdout


@pytest.mark.parametrize("url", ["mongodb://127.0.0.1:1/x"])
def test_migrations_are_complete_on_mongodb_with_no_server(tmp_path: Path, url: str):
    # Port 1 refuses at once: this is the no-server case, and it must not crash.
    result, elapsed = _makemigrations_check(url, tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "No changes detected" in result.stdout
    assert "MongoDB is not reachable" in result.stderr
    assert elapsed < 30
