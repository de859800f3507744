"""redis-server, moto's S3 server and real Celery workers, each on its own free loopback port."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from tests.harness.processes import ServiceProcess, free_port, port_open, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
ALLOWED_INTERNET = "127.0.0.1/32"


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A throwaway redis-server; yields its URL (database 0)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH; `make test` installs it")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    process = ServiceProcess(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--protected-mode", "yes"],
        log_path=workdir / "redis.log",
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(answers, timeout=10, what=f"redis-server on port {port}")
        client.close()
        yield url
    finally:
        process.stop(grace=5)


@contextmanager
def s3_server(workdir: Path) -> Iterator[str]:
    """moto's standalone server: a real S3 HTTP endpoint on loopback; yields its URL."""
    port = free_port()
    process = ServiceProcess(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        log_path=workdir / "moto.log",
    )
    try:
        wait_until(lambda: port_open(port), timeout=30, what=f"moto S3 server on port {port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop(grace=5)


class WebServer:
    """The app as production serves it (``mediastore.runstack.web_command``: gunicorn, uvicorn workers, ASGI) on
    a free loopback port, logging to a file. ``host`` may be another loopback address than the test "internet"
    (127.0.0.2: internal to the worker, as the web is in production)."""

    def __init__(self, *, env: Mapping[str, str], log_path: Path, workers: int = 1, host: str = "127.0.0.1") -> None:
        from mediastore.runstack import web_command

        self.host = host
        self.port = free_port(host)
        argv = web_command(bin_dir=str(Path(sys.executable).parent), bind=f"{host}:{self.port}", workers=workers)
        self.process = ServiceProcess(argv, log_path=log_path, env=dict(env), cwd=REPO_ROOT)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            if not self.process.alive():
                raise RuntimeError(f"the web server exited during start-up:\n{self.log()[-4000:]}")
            return port_open(self.port, self.host) and "Booting worker" in self.log()

        wait_until(ready, timeout=timeout, interval=0.1, what="the web server to listen")

    def worker_pids(self) -> list[int]:
        """The gunicorn worker processes (the master's children)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return [int(pid) for pid in children]

    def log(self) -> str:
        return self.process.log()

    def kill(self) -> None:
        self.process.kill()

    def stop(self) -> None:
        self.process.stop(grace=15)


class CeleryWorker:
    """``celery worker -P gevent`` in its own process group, logging to a file."""

    def __init__(self, *, env: Mapping[str, str], log_path: Path, concurrency: int,
                 includes: tuple[str, ...] = ("tests.harness.tasks",), tree: Path = REPO_ROOT) -> None:
        self.name = f"test-{uuid.uuid4().hex[:8]}@%h"
        argv = [
            sys.executable, "-m", "celery", "-A", "mediastore", "worker",
            "-P", "gevent", "-c", str(concurrency), "-n", self.name, "--loglevel", "INFO",
            "-Q", "celery,webhooks",  # downloads and webhook deliveries alike
            # One worker per test: no peers to synchronise with, and quicker start and stop.
            "--without-mingle", "--without-gossip",
        ]
        if includes:
            argv += ["-I", ",".join(includes)]  # one comma list: of several -I options only the last counts
        # ``tree``: another checkout of the code (a benchmark's anchor runs an earlier commit's worker).
        self.process = ServiceProcess(argv, log_path=log_path, env=dict(env), cwd=tree)

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if not self.process.alive():
                raise RuntimeError(f"the worker exited during start-up:\n{self.log()[-4000:]}")
            return " ready." in self.log()

        wait_until(ready, timeout=timeout, interval=0.1, what="the Celery worker to say it is ready")

    def log(self) -> str:
        return self.process.log()

    def kill(self) -> None:
        self.process.kill()

    def stop(self) -> None:
        self.process.stop(grace=20)


def worker_environment(*, broker_url: str, database_url: str, data_dir: Path,
                       extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("R2_", "PYTEST_"))}
    env.update({
        "DJANGO_SETTINGS_MODULE": "mediastore.settings",
        "CELERY_BROKER_URL": broker_url,
        "DATABASE_URL": database_url,
        "DATA_DIR": str(data_dir),
        "PYTHONUNBUFFERED": "1",
        # The test "internet": media servers listen on 127.0.0.1; every other loopback address is internal
        # to the worker (canaries that must never be reached).
        "MEDIA_ALLOWED_NETWORKS": ALLOWED_INTERNET,
    })
    env.pop("DATABASE_NAME", None)
    if extra:
        env.update(extra)
    return env


@contextmanager
def celery_broker(url: str) -> Iterator[None]:
    """Point this process's Celery app at ``url`` for a while, then back.

    kombu keeps producer pools in a global registry per connection; a pool closed by force would be
    handed out again, so the registry is reset instead.
    """
    from kombu import pools

    from mediastore import celery_app

    def switch(to: str) -> None:
        pools.reset()
        celery_app._pool = None
        celery_app.amqp._producer_pool = None
        celery_app.conf.broker_url = to

    previous = celery_app.conf.broker_url
    switch(url)
    try:
        yield
    finally:
        switch(previous)


S3_TEST_KEY = "test"


def r2_env(*, endpoint: str, bucket: str, key: str = S3_TEST_KEY) -> dict[str, str]:
    """The R2_* variables that point a worker (or the web side) at a test S3 server's bucket."""
    return {"R2_BUCKET": bucket, "R2_ENDPOINT_URL": endpoint, "R2_ACCESS_KEY_ID": key,
            "R2_SECRET_ACCESS_KEY": key, "R2_REGION": "us-east-1"}


def s3_test_client(endpoint: str, key: str = S3_TEST_KEY) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key,
                        aws_secret_access_key=key)
