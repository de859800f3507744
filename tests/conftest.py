"""Fixtures for real services. Each starts on a free loopback port and is stopped even when a test fails."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from django.conf import settings
from django.db import connections

from mediastore import celery_app
from tests.harness.media import MediaFiles, MediaServer, generate_media
from tests.harness.services import (
    CeleryWorker,
    WebServer,
    redis_server,
    s3_server,
    s3_test_client,
    worker_environment,
)

USING_MONGODB = (os.environ.get("DATABASE_URL") or "").startswith(("mongodb://", "mongodb+srv://"))


# Tests that start a whole process stack (a gevent worker, a browser, the web server, make run's stack): what
# `make test-fast` leaves out (-m "not stack").
_STACK_FIXTURES = {"start_worker", "browser", "chromium", "s3_worker", "worker"}
_STACK_MODULES = ("test_runstack.py", "test_gunicorn_conf.py", "test_celery_worker.py", "test_worker_recovery.py",
                  "test_image_commands.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & _STACK_FIXTURES or item.path.name.endswith(("_worker.py", "_browser.py", *_STACK_MODULES)):
            item.add_marker(pytest.mark.stack)
    if USING_MONGODB:
        return
    skip = pytest.mark.skip(reason="needs DATABASE_URL pointing at MongoDB")
    for item in items:
        if "mongodb" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _empty_cache():
    """Throttle counters live in the cache; no test inherits another's."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(scope="session")
def harness_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("harness")


@pytest.fixture(scope="session")
def redis_session_url(harness_dir: Path) -> Iterator[str]:
    with redis_server(harness_dir / "redis") as url:
        # The test process publishes through the same app the web process uses; point it here before
        # anything opens a broker connection.
        celery_app.conf.broker_url = url
        yield url


@pytest.fixture(autouse=True)
def _live_messages_stay_in_the_harness(settings):
    """Every transition publishes to ``REDIS_URL`` (``scenes.live``), whose default is the Redis ``make run``
    uses: no test writes there. Port 1 refuses at once; ``broker_url`` points it at the harness's Redis."""
    settings.REDIS_URL = "redis://127.0.0.1:1/0"


@pytest.fixture
def broker_url(redis_session_url: str, settings) -> str:
    """The session's Redis, emptied: no test sees another's messages or unacked entries. Live messages
    (cancels, the live stream) go there too."""
    client = redis.Redis.from_url(redis_session_url)
    client.flushall()
    client.close()
    settings.REDIS_URL = redis_session_url
    return redis_session_url


@pytest.fixture(scope="session")
def s3_endpoint(harness_dir: Path) -> Iterator[str]:
    with s3_server(harness_dir / "s3") as url:
        yield url


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> Iterator[tuple[Any, str]]:
    """A fresh bucket on the session's S3 server; yields (boto3 client, bucket name)."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    client = s3_test_client(s3_endpoint)
    client.create_bucket(Bucket=name)
    try:
        yield client, name
    finally:
        client.close()


@pytest.fixture(scope="session")
def media_files(harness_dir: Path) -> MediaFiles:
    return generate_media(harness_dir / "media")


@pytest.fixture(scope="session")
def media_server(media_files: MediaFiles) -> Iterator[MediaServer]:
    with MediaServer(media_files) as server:
        yield server


def _worker_database_url() -> str:
    """The URL of the test database this process set up, for a worker process to open the same one."""
    settings_dict = connections["default"].settings_dict
    if settings.DATABASE_IS_MONGODB:
        parts = urlsplit(settings_dict["HOST"])
        return urlunsplit(parts._replace(path="/" + settings_dict["NAME"]))
    return "sqlite:///" + str(settings_dict["NAME"])


StartWorker = Callable[..., CeleryWorker]


@pytest.fixture
def start_worker(transactional_db: None, broker_url: str, tmp_path: Path) -> Iterator[StartWorker]:
    """Start real ``-P gevent`` workers on the test broker and test database; all are stopped after.

    Tests that use it commit their rows (``transactional_db``) so the worker process can read them.
    """
    workers: list[CeleryWorker] = []

    def start(*, concurrency: int = 4, env: Mapping[str, str] | None = None, wait: bool = True) -> CeleryWorker:
        worker = CeleryWorker(
            env=worker_environment(
                broker_url=broker_url,
                database_url=_worker_database_url(),
                data_dir=tmp_path / "worker-data",
                extra=env,
            ),
            log_path=tmp_path / f"worker-{len(workers)}.log",
            concurrency=concurrency,
        )
        workers.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    try:
        yield start
    finally:
        # A test that needs a graceful stop asks for it; after the test only speed matters. A warm shutdown
        # waits out the broker poll (about 5 s a worker, some 90 workers a run), and whatever a killed worker
        # leaves in the broker or the database is wiped before the next test (flushall, transactional_db).
        for worker in workers:
            worker.kill()


StartWeb = Callable[..., WebServer]


@pytest.fixture
def start_web(transactional_db: None, broker_url: str, tmp_path: Path) -> Iterator[StartWeb]:
    """Start the app as production serves it (gunicorn, uvicorn workers, ASGI) on the test broker and test
    database, with the same ``DATA_DIR`` as ``start_worker``'s workers (so it serves their local media)."""
    servers: list[WebServer] = []

    def start(*, env: Mapping[str, str] | None = None, workers: int = 1, host: str = "127.0.0.1") -> WebServer:
        server = WebServer(
            env=worker_environment(broker_url=broker_url, database_url=_worker_database_url(),
                                   data_dir=tmp_path / "worker-data", extra=env),
            log_path=tmp_path / f"web-{len(servers)}.log", workers=workers, host=host,
        )
        servers.append(server)
        server.wait_ready()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.kill()  # as for workers: nothing after the test needs a graceful stop
