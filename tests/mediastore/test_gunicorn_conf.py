"""The web under gunicorn with ``-c mediastore/gunicorn_conf.py``: /metrics adds up every worker process, and
every worker process is warmed before it serves."""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.metrics import parse, scrape, value
from tests.harness.processes import ServiceProcess, free_port, port_open, wait_until
from tests.harness.services import REPO_ROOT

TOKEN = "a-metrics-token-for-the-tests"
APPS = {"sync": ("sync", "mediastore.wsgi:application"),
        "uvicorn": ("uvicorn_worker.UvicornWorker", "mediastore.asgi:application")}

Start = Callable[..., tuple[ServiceProcess, int]]


@pytest.fixture
def gunicorn(tmp_path: Path, broker_url: str) -> Iterator[Start]:
    started: list[ServiceProcess] = []

    def start(kind: str = "sync", *, multiproc_dir: Path | None,
              options: tuple[str, ...] = (), env_extra: dict[str, str] | None = None) -> tuple[ServiceProcess, int]:
        worker_class, app = APPS[kind]
        port = free_port()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DATABASE_", "R2_", "CELERY_", "PYTEST_", "PROMETHEUS_"))}
        env.update({"DATA_DIR": str(tmp_path / "data"), "CELERY_BROKER_URL": broker_url, "METRICS_TOKEN": TOKEN,
                    "TMPDIR": str(tmp_path)})
        if multiproc_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc_dir)
        env.update(env_extra or {})
        process = ServiceProcess(
            [os.path.join(os.path.dirname(sys.executable), "gunicorn"), app, "-c", "mediastore/gunicorn_conf.py",
             "--bind", f"127.0.0.1:{port}", "--workers", "2", "-k", worker_class, *options],
            log_path=tmp_path / f"gunicorn-{len(started)}.log", env=env, cwd=REPO_ROOT)
        started.append(process)
        wait_until(lambda: port_open(port), timeout=60, interval=0.1, what="gunicorn to listen")
        return process, port

    try:
        yield start
    finally:
        for process in started:
            process.stop(grace=20)


def _store_refused(port: int) -> None:
    """One unauthenticated store request (no database needed), on a connection of its own."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/media/store", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json", "Connection": "close"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    refused.value.close()
    assert refused.value.code == 401


def _pids_that_counted(folder: Path) -> set[str]:
    return {path.stem.rsplit("_", 1)[1] for path in folder.glob("counter_*.db")}


def _refused_count(port: int) -> float:
    status, body = scrape(f"http://127.0.0.1:{port}/metrics", token=TOKEN)
    assert status == 200
    return value(parse(body), "mediastore_store_requests_total", status="401")


@pytest.mark.parametrize("kind", list(APPS))
def test_metrics_add_up_every_worker_process(gunicorn: Start, tmp_path: Path, kind: str):
    # Which worker accepts a connection is the kernel's choice; on one busy CPU the same worker can win every
    # time. A worker that retires after two requests makes the count span processes whatever the kernel does.
    folder = tmp_path / "prometheus"
    process, port = gunicorn(kind, multiproc_dir=folder, options=("--max-requests", "2"))

    sent = 0
    try:
        # uvicorn looks at its request count every 0.1 s, so it may answer a few more before it retires.
        while len(_pids_that_counted(folder)) < 2 and sent < 100:
            _store_refused(port)
            sent += 1
            time.sleep(0.02)
        counted = _refused_count(port)
    except urllib.error.URLError as exc:  # a server that went away says why only in its log
        pytest.fail(f"{exc}\n{process.log()}")

    assert len(_pids_that_counted(folder)) >= 2, process.log()
    assert counted == sent, process.log()


def test_a_restarted_server_counts_from_zero(gunicorn: Start, tmp_path: Path):
    folder = tmp_path / "prometheus"
    first, port = gunicorn(multiproc_dir=folder)
    for _ in range(3):
        _store_refused(port)
    first.stop(grace=20)
    assert _pids_that_counted(folder)  # the first run's files are still there

    _, port = gunicorn(multiproc_dir=folder)

    assert _refused_count(port) == 0


def test_without_a_configured_folder_a_private_one_is_used_and_removed_at_exit(gunicorn: Start, tmp_path: Path):
    process, port = gunicorn(multiproc_dir=None)
    _store_refused(port)
    folders = list(tmp_path.glob("mediastore-metrics-*"))

    counted = _refused_count(port)
    process.stop(grace=20)

    assert counted == 1
    assert len(folders) == 1
    assert not folders[0].exists()


def _warmed_workers(process: ServiceProcess, count: int) -> list[str]:
    def lines() -> list[str]:
        return [line for line in process.log().splitlines() if "web worker warmed:" in line]

    wait_until(lambda: len(lines()) >= count, timeout=60, interval=0.1, what=f"{count} warmed workers")
    return lines()


@pytest.mark.parametrize("kind", list(APPS))
def test_every_worker_process_is_warm_before_it_serves(gunicorn: Start, kind: str):
    process, port = gunicorn(kind, multiproc_dir=None)

    warmed = _warmed_workers(process, 2)
    _store_refused(port)

    assert all("downloads.tasks" in line and "broker connected" in line for line in warmed), process.log()
    assert " INFO mediastore.warmup " in warmed[0]
    assert "Traceback" not in process.log()


def test_every_worker_process_holds_the_databases_wal_open(gunicorn: Start, tmp_path: Path):
    process, _ = gunicorn(multiproc_dir=None)

    warmed = _warmed_workers(process, 2)

    assert all("SQLite WAL kept open" in line for line in warmed), process.log()
    # Nothing else has opened the (new) database: the WAL is there because the idle connections hold it.
    assert (tmp_path / "data" / "db.sqlite3-wal").exists()


@pytest.mark.parametrize("kind", list(APPS))
def test_a_broker_that_is_down_at_boot_only_costs_a_warning(gunicorn: Start, kind: str):
    # Port 1, where nothing listens: a port found free may be taken by another test's server meanwhile, and
    # one that accepts and never answers held each warm-up past gunicorn's worker timeout.
    process, port = gunicorn(kind, multiproc_dir=None, env_extra={"CELERY_BROKER_URL": "redis://127.0.0.1:1/0"})

    warmed = _warmed_workers(process, 2)
    _store_refused(port)  # the web serves

    assert all("broker unreachable" in line for line in warmed), process.log()
    assert process.log().count("WARNING mediastore.warmup web worker warm-up: the broker did not answer") == 2
    assert process.alive()
