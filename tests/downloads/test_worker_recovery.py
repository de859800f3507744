"""Every accepted scene ends on its own: hard limits, worker deaths, broker restarts, lost enqueues.

Real ``-P gevent`` workers, real Redis, real yt-dlp and ffmpeg against the harness's media server; the
worker sweeps every second here (``MEDIA_SWEEP_INTERVAL``) so that what takes minutes in production takes
seconds.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import redis
from django.contrib.auth import get_user_model

from downloads.tasks import download_media_task
from scenes import services
from scenes.models import Scene
from tests.harness.media import MediaServer
from tests.harness.processes import ServiceProcess, wait_until
from tests.harness.services import CeleryWorker, redis_server, worker_environment
from tests.harness.tasks import STUBBORN_MARK, ingest_past_the_hard_limit

RECOVERY = {
    "MEDIA_MAX_FILESIZE": "20M",
    "MEDIA_DOWNLOAD_TIMEOUT": "120",
    "MEDIA_SWEEP_INTERVAL": "1",
    "MEDIA_STALE_AFTER": "3",
    "MEDIA_RESEND_AFTER": "3",
    "MEDIA_MAX_ATTEMPTS": "2",
    "MEDIA_RETRY_BACKOFF": "0.2",
}


@pytest.fixture
def owner(transactional_db):
    return get_user_model().objects.create_user("recovery-owner")


@pytest.fixture
def job_tmp(tmp_path: Path) -> Path:
    folder = tmp_path / "worker-tmp"
    folder.mkdir()
    return folder


def _statuses(ids: list[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for status in Scene.objects.filter(pk__in=ids).values_list("status", flat=True):
        found[status] = found.get(status, 0) + 1
    return found


def _wait_all_terminal(ids: list[str], *, timeout: float) -> None:
    try:
        wait_until(lambda: not Scene.objects.filter(pk__in=ids, status__in=["queued", "processing"]).exists(),
                   timeout=timeout, interval=0.5, what=f"all {len(ids)} scenes to finish")
    except TimeoutError as late:
        raise TimeoutError(f"{late}; statuses now {_statuses(ids)}") from None


def test_hard_limit_fails_the_scene_as_timeout_and_removes_its_temp_folder(start_worker, owner, job_tmp: Path,
                                                                           media_server: MediaServer):
    start_worker(env={**RECOVERY, "TMPDIR": str(job_tmp)})
    scene = services.scene_create(owner=owner, source_url=media_server.url(f"video.mp4?{STUBBORN_MARK}"))

    ingest_past_the_hard_limit.delay(scene.pk)

    _wait_all_terminal([scene.pk], timeout=30)
    scene.refresh_from_db()
    assert (scene.status, scene.error_code) == ("failed", "timeout")
    assert "hard time limit" in scene.error_message
    assert list(job_tmp.iterdir()) == []


def test_a_worker_drains_three_times_its_concurrency_while_some_jobs_hit_the_hard_limit(
        start_worker, owner, job_tmp: Path, media_server: MediaServer):
    concurrency = 4
    worker = start_worker(concurrency=concurrency, env={**RECOVERY, "TMPDIR": str(job_tmp)})
    stuck = [services.scene_create(owner=owner, source_url=media_server.url(f"video.mp4?{STUBBORN_MARK}"))
             for _ in range(4)]
    normal = [services.scene_create(owner=owner, source_url=media_server.url("video.mp4"))
              for _ in range(3 * concurrency - len(stuck))]

    # The hard-limited jobs go first, so every slot hits the hard limit at least once before the rest run.
    for scene in stuck:
        ingest_past_the_hard_limit.delay(scene.pk)
    for scene in normal:
        download_media_task.delay(scene.pk)

    _wait_all_terminal([s.pk for s in stuck + normal], timeout=150)
    assert _statuses([s.pk for s in stuck]) == {"failed": len(stuck)}
    assert _statuses([s.pk for s in normal]) == {"completed": len(normal)}
    assert worker.log().count("Hard time limit") >= len(stuck)
    assert list(job_tmp.iterdir()) == []


def test_a_worker_drains_after_the_broker_restarts(transactional_db, owner, tmp_path: Path, job_tmp: Path,
                                                   media_server: MediaServer):
    from tests.conftest import _worker_database_url
    from tests.harness.services import celery_broker

    with redis_server(tmp_path / "redis") as url, celery_broker(url):
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        worker = CeleryWorker(env=worker_environment(broker_url=url, database_url=_worker_database_url(),
                                                     data_dir=tmp_path / "data",
                                                     extra={**RECOVERY, "TMPDIR": str(job_tmp)}),
                              log_path=tmp_path / "worker.log", concurrency=4)
        try:
            worker.wait_ready()
            scenes = [services.scene_create(owner=owner, source_url=media_server.url("throttled.mp4?rate=2000000"))
                      for _ in range(12)]
            for scene in scenes:
                download_media_task.delay(scene.pk)
            wait_until(lambda: Scene.objects.filter(status="processing").count() >= 2, timeout=60,
                       what="jobs in flight")

            # The broker goes away with everything it held (no persistence) and comes back on the same port.
            redis.Redis.from_url(url).shutdown(nosave=True)
            time.sleep(2)
            restarted = ServiceProcess(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                        "--appendonly", "no", "--dir", str(tmp_path)],
                                       log_path=tmp_path / "redis-restarted.log")
            try:
                _wait_all_terminal([s.pk for s in scenes], timeout=180)
                assert _statuses([s.pk for s in scenes]) == {"completed": len(scenes)}
            finally:
                restarted.stop(grace=5)
        finally:
            worker.stop()


def test_a_scene_whose_enqueue_was_lost_is_sent_again(start_worker, owner, media_server: MediaServer):
    start_worker(env=RECOVERY)
    # As after a POST while the broker was down: the row is there, no task was ever sent.
    scene = services.scene_create(owner=owner, source_url=media_server.url("video.mp4"))

    _wait_all_terminal([scene.pk], timeout=60)

    assert Scene.objects.get(pk=scene.pk).status == "completed"


def test_a_killed_worker_leaves_nothing_stuck_and_no_temp_folder(start_worker, owner, job_tmp: Path,
                                                                 media_server: MediaServer):
    env = {**RECOVERY, "TMPDIR": str(job_tmp)}
    first = start_worker(env=env)
    scene = services.scene_create(owner=owner, source_url=media_server.url("throttled.mp4?rate=1000000"))
    download_media_task.delay(scene.pk)
    wait_until(lambda: (Scene.objects.get(pk=scene.pk).progress or 0) > 0, timeout=60, what="the download")

    first.kill()  # kill -9 mid-download
    assert list(job_tmp.iterdir()) != []
    start_worker(env=env)

    _wait_all_terminal([scene.pk], timeout=90)
    scene.refresh_from_db()
    assert (scene.status, scene.attempts) == ("completed", 2)
    assert list(job_tmp.iterdir()) == []


def test_a_job_that_kills_its_worker_every_time_ends_as_worker_lost(start_worker, owner, media_server: MediaServer):
    scene = services.scene_create(owner=owner, source_url=media_server.url("throttled.mp4?rate=500000"))
    download_media_task.delay(scene.pk)
    for attempt in range(1, int(RECOVERY["MEDIA_MAX_ATTEMPTS"]) + 1):
        worker = start_worker(env=RECOVERY)
        wait_until(lambda n=attempt: Scene.objects.filter(pk=scene.pk, status="processing", attempts=n).exists(),
                   timeout=60, what=f"claim number {attempt}")
        worker.kill()  # what a job that runs its worker out of memory does

    start_worker(env=RECOVERY)
    _wait_all_terminal([scene.pk], timeout=60)

    scene.refresh_from_db()
    assert (scene.status, scene.error_code, scene.attempts) == ("failed", "worker_lost", 2)


def test_warm_shutdown_hands_running_jobs_back(start_worker, owner, job_tmp: Path, media_server: MediaServer):
    env = {**RECOVERY, "TMPDIR": str(job_tmp), "MEDIA_SHUTDOWN_GRACE": "1", "MEDIA_RESEND_AFTER": "600"}
    worker = start_worker(env=env)
    scenes = [services.scene_create(owner=owner, source_url=media_server.url("throttled.mp4?rate=300000"))
              for _ in range(3)]
    for scene in scenes:
        download_media_task.delay(scene.pk)
    wait_until(lambda: Scene.objects.filter(status="processing").count() == 3, timeout=60, what="three jobs")

    started = time.monotonic()
    os.kill(worker.process.pid, signal.SIGTERM)
    worker.process.process.wait(timeout=30)

    assert time.monotonic() - started < 15
    assert _statuses([s.pk for s in scenes]) == {"queued": 3}
    assert worker.log().count("cancelled (shutdown); handed back to the queue") == 3
    assert list(job_tmp.iterdir()) == []
    start_worker(env=env)  # the re-sent tasks, not the sweeper (MEDIA_RESEND_AFTER is long), finish them
    _wait_all_terminal([s.pk for s in scenes], timeout=120)
    assert _statuses([s.pk for s in scenes]) == {"completed": 3}
