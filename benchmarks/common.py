"""What every benchmark returns, and the shared services they run against."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from tests.harness.services import (
    REPO_ROOT,
    CeleryWorker,
    celery_broker,
    r2_env,
    redis_server,
    s3_server,
    s3_test_client,
    worker_environment,
)


@dataclass(frozen=True)
class Result:
    """One line of the table: a figure measured against an anchor measured in the same run.

    ``ratio`` is figure / anchor; ``note`` says which way is good and what the raw numbers were.
    """

    benchmark: str
    figure: str
    value: float
    anchor: str
    anchor_value: float
    unit: str
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.value / self.anchor_value if self.anchor_value else float("inf")


@contextmanager
def broker_and_worker(*, concurrency: int, workdir: Path, database_url: str, env: dict[str, str] | None = None,
                      tree: Path = REPO_ROOT) -> Iterator[tuple[str, CeleryWorker]]:
    """A throwaway redis-server and one ``-P gevent`` worker on it (running the code in ``tree``); both stopped
    afterwards."""
    with redis_server(workdir / "redis") as broker_url, celery_broker(broker_url):
        worker = CeleryWorker(
            env=worker_environment(broker_url=broker_url, database_url=database_url, data_dir=workdir / "data",
                                   extra=env),
            log_path=workdir / "worker.log",
            concurrency=concurrency,
            tree=tree,
        )
        try:
            worker.wait_ready()
            yield broker_url, worker
        finally:
            worker.stop()


def scratch_dir(name: str) -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix=f"bench-{name}-")


@contextmanager
def s3_stack(*, concurrency: int, workdir: Path, database_url: str, env: dict[str, str] | None = None,
             tree: Path = REPO_ROOT) -> Iterator[tuple[str, str, CeleryWorker]]:
    """moto's S3 server with a bucket, redis and a worker storing there; yields (endpoint, bucket, worker)."""
    with s3_server(workdir) as endpoint:
        client = s3_test_client(endpoint)
        client.create_bucket(Bucket="bench")
        client.close()
        s3_env = {**r2_env(endpoint=endpoint, bucket="bench"), **(env or {})}
        with broker_and_worker(concurrency=concurrency, workdir=workdir, database_url=database_url,
                               env=s3_env, tree=tree) as (_, worker):
            yield endpoint, "bench", worker


def ingest_and_wait(urls: list[str], *, timeout: float) -> list[object]:
    """Create a scene per URL, enqueue them all, wait until every one is terminal; return the scenes."""
    import time

    from django.contrib.auth import get_user_model

    from downloads.tasks import download_media_task
    from scenes import services
    from scenes.models import Scene

    owner, _ = get_user_model().objects.get_or_create(username="bench")
    scenes = [services.scene_create(owner=owner, source_url=url) for url in urls]
    for scene in scenes:
        download_media_task.delay(scene.pk)
    ids = [scene.pk for scene in scenes]
    deadline = time.monotonic() + timeout
    while Scene.objects.filter(pk__in=ids, status__in=[Scene.Status.QUEUED, Scene.Status.PROCESSING]).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"scenes not finished within {timeout}s")
        time.sleep(0.1)
    finished = list(Scene.objects.filter(pk__in=ids))
    failed = [s for s in finished if s.status != Scene.Status.COMPLETED]
    if failed:
        first = failed[0]
        raise RuntimeError(f"{len(failed)} scenes failed, e.g. {first.error_code}: {first.error_message} "
                           f"({first.error_detail})")
    return finished


def looped_video(source: Path, target: Path, *, at_least: int) -> Path:
    """A valid MP4 of at least ``at_least`` bytes, by stream-copying ``source`` in a loop (seconds, no encoding)."""
    import subprocess

    loops = max(0, at_least // source.stat().st_size)
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-stream_loop", str(loops),
                    "-i", str(source), "-c", "copy", "-movflags", "+faststart", str(target)], check=True, timeout=600)
    return target


@dataclass(frozen=True)
class WebServer:
    port: int
    pid: int  # gunicorn's master; its workers are its children


@contextmanager
def gunicorn_server(*, database_url: str, workdir: Path) -> Iterator[WebServer]:
    """The web app under gunicorn (4 uvicorn workers) with its own redis broker, as in production."""
    import sys

    from mediastore.runstack import web_command
    from tests.harness.processes import ServiceProcess, free_port, port_open, wait_until
    from tests.harness.services import REPO_ROOT

    with redis_server(workdir / "redis") as broker_url:
        port = free_port()
        env = worker_environment(broker_url=broker_url, database_url=database_url, data_dir=workdir / "data",
                                 extra={"MEDIA_STORE_RATE": "1000000/min", "DJANGO_ALLOWED_HOSTS": "127.0.0.1"})
        argv = [*web_command(bin_dir=str(Path(sys.executable).parent), bind=f"127.0.0.1:{port}", workers=4,
                             access_log=False), "--log-level", "warning"]
        server = ServiceProcess(argv, log_path=workdir / "gunicorn.log", env=env, cwd=REPO_ROOT)
        try:
            wait_until(lambda: port_open(port), timeout=30, what="gunicorn")
            yield WebServer(port=port, pid=server.pid)
        finally:
            server.stop()


_TICK = os.sysconf("SC_CLK_TCK")


class CpuSeconds(NamedTuple):
    user: float  # all of the process's threads
    system: float
    reaped: float  # user + system of the children it has waited for


def cpu_seconds(pid: int) -> CpuSeconds:
    """The CPU seconds ``pid`` has used so far, from /proc (``OSError`` once it is gone)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) / _TICK for f in fields[11:15])
    return CpuSeconds(user=utime, system=stime, reaped=cutime + cstime)


def tasks_per_second(task: object, count: int) -> float:
    """Send ``count`` calls of a no-argument task and wait for every result: the worker's task rate."""
    import time

    from django_celery_results.models import TaskResult

    TaskResult.objects.all().delete()
    started = time.perf_counter()
    for _ in range(count):
        task.delay()  # type: ignore[attr-defined]
    while TaskResult.objects.filter(status="SUCCESS").count() < count:
        time.sleep(0.02)
    return count / (time.perf_counter() - started)
