"""Tasks that exist only to prove the harness: loaded into test workers with ``-I``."""

from __future__ import annotations

import os
import time
from pathlib import Path

from celery import shared_task


@shared_task
def add(x: int, y: int) -> int:
    return x + y


@shared_task
def journal_sleep(journal: str, seconds: float = 0.0, until: float | None = None) -> int:
    """Write ``start <pid>`` and, after sleeping, ``done <pid>`` to the journal; return the pid.

    ``until`` (a wall-clock time) makes many tasks finish, and so acknowledge, in the same instant.

    Appends of a short line with O_APPEND are atomic, so concurrent or successive workers never mix lines.
    """
    pid = os.getpid()
    path = Path(journal)
    with path.open("a") as handle:
        handle.write(f"start {pid}\n")
    if until is not None:
        seconds = max(seconds, until - time.time())
    time.sleep(seconds)  # gevent-patched in the worker: yields to the other tasks
    with path.open("a") as handle:
        handle.write(f"done {pid}\n")
    return pid
