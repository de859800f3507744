"""gunicorn hooks of the web: Prometheus multiprocess mode, and every worker process warmed before it serves.
Used as ``gunicorn -c mediastore/gunicorn_conf.py`` (``make run``, the image); every option on the command line
still decides the rest (workers, bind, worker class: sync and ``uvicorn_worker.UvicornWorker`` alike, as both
call these hooks: the metrics ones in the master, ``post_worker_init`` in each worker).

Each worker process writes its metrics to files in ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` adds every
process's files up, so a scrape sees the whole server whichever process answers. When the variable is unset a
private folder is made here (and removed at exit); set it to keep the files elsewhere (a tmpfs). Only gunicorn
should get it: a worker or a management command sharing the folder would be added into the web's figures.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

_OWNED = "MEDIASTORE_OWNS_PROMETHEUS_MULTIPROC_DIR"  # survives a reload (HUP), which runs this file again

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ[_OWNED] = tempfile.mkdtemp(prefix="mediastore-metrics-")
_FOLDER = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
_FOLDER.mkdir(parents=True, exist_ok=True)


def on_starting(server: Any) -> None:
    # A previous run's counts are not this run's: counters would jump when a restarted server added the
    # files of processes that are long gone. Only prometheus_client's own files go; the folder may be shared.
    for path in _FOLDER.glob("*.db"):
        if path.name.startswith(("counter_", "gauge_", "histogram_", "summary_")):
            path.unlink(missing_ok=True)


def post_worker_init(worker: Any) -> None:
    # In the worker process, after the app (and so Django) is loaded and before the first request: the store
    # path's lazy imports and the broker connection are paid here, not by a client (``mediastore.warmup``).
    from mediastore.warmup import warm_web_process

    warm_web_process()


def child_exit(server: Any, worker: Any) -> None:
    # A dead process's live gauges leave the sum; its counters stay, as counters must.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    if os.environ.get(_OWNED) == str(_FOLDER):
        shutil.rmtree(_FOLDER, ignore_errors=True)
