"""Cancel against a real gevent worker: queued, downloading, uploading, and racing the completion.

A processing scene must be stopped by its worker within 2 s of the cancel: yt-dlp's process group killed,
the multipart upload aborted, the job folder removed, the scene ``cancelled``, and nothing stored.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from downloads.tasks import download_media_task
from scenes import lifecycle, services
from scenes.models import Scene
from tests.harness import scene_states
from tests.harness.faults import FaultProxy
from tests.harness.media import MediaServer
from tests.harness.processes import process_table, wait_until, ytdlp_jobs
from tests.harness.services import r2_env
from tests.harness.tokens import api_token

CANCEL_WITHIN = 2.0
LIMITS = {"MEDIA_MAX_FILESIZE": "50M", "MEDIA_SOCKET_TIMEOUT": "10", "MEDIA_DOWNLOAD_TIMEOUT": "120"}


@pytest.fixture
def owner(transactional_db, settings, broker_url):
    settings.MEDIA_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    settings.REDIS_URL = broker_url  # where the web side announces cancels to the workers
    return get_user_model().objects.create_user("canceller")


@pytest.fixture
def api(owner):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token(owner)}")
    return client


def _children(pid: int) -> dict[int, str]:
    """The live (not zombie) child processes of ``pid``: pid → command line."""
    return {p.pid: p.cmdline for p in process_table() if p.ppid == pid and p.state != "Z"}


def _alive_in_group(pgid: int) -> list[int]:
    return [p.pid for p in process_table() if p.pgrp == pgid and p.state != "Z"]


def _job_dirs(scene_id: str) -> list[str]:
    return [name for name in os.listdir(tempfile.gettempdir()) if f"-{scene_id}-" in name]


def _keys(s3_bucket) -> list[str]:
    client, name = s3_bucket
    return sorted(item["Key"] for item in client.list_objects_v2(Bucket=name).get("Contents", []))


def _open_uploads(s3_bucket) -> list[str]:
    client, name = s3_bucket
    return [upload["Key"] for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", [])]


def _cancel_and_time(api: APIClient, scene_id: str) -> tuple[dict, float]:
    started = time.monotonic()
    answer = api.post(f"/api/v1/scenes/{scene_id}/cancel")
    assert answer.status_code == 202, answer.content
    wait_until(lambda: Scene.objects.get(pk=scene_id).status != Scene.Status.PROCESSING, timeout=15, interval=0.02,
               what="the worker to stop the run")
    took = time.monotonic() - started
    print(f"cancel of a processing scene: cancelled {took:.2f}s after the request")  # the figure (pytest -s)
    return answer.json(), took


def test_a_queued_scene_is_cancelled_at_once_and_its_task_then_does_nothing(api, owner, start_worker, media_server):
    scene = services.scene_create(owner=owner, source_url=media_server.url("video.mp4"))

    answer = api.post(f"/api/v1/scenes/{scene.pk}/cancel")

    assert answer.status_code == 202
    assert answer.json()["status"] == "cancelled"
    worker = start_worker(concurrency=2)
    download_media_task.delay(scene.pk)
    wait_until(lambda: "nothing to do (already_cancelled)" in worker.log(), timeout=30, what="the task to run")
    assert Scene.objects.get(pk=scene.pk).status == "cancelled"


@pytest.mark.parametrize("helper", ["1", "0"], ids=["helper", "plain"])
def test_a_downloading_scene_is_stopped_within_2_s_and_no_process_is_left(api, owner, start_worker,
                                                                           media_server: MediaServer, helper: str):
    worker = start_worker(concurrency=2, env={**LIMITS, "MEDIA_YTDLP_HELPER": helper})
    scene = services.scene_create(owner=owner, source_url=media_server.url("throttled.mp4?rate=150000"))
    download_media_task.delay(scene.pk)
    wait_until(lambda: (Scene.objects.get(pk=scene.pk).progress or 0) > 0, timeout=60, interval=0.1,
               what="the download to make progress")
    downloaders = ytdlp_jobs(worker.process.pid)
    assert downloaders, f"no yt-dlp job of the worker: {_children(worker.process.pid)}"

    answer, took = _cancel_and_time(api, scene.pk)

    assert answer["status"] == "processing"  # until the worker has stopped the run
    assert answer["cancel_requested_at"]
    final = Scene.objects.get(pk=scene.pk)
    assert final.status == "cancelled", (final.status, final.error_code, final.error_message)
    assert took < CANCEL_WITHIN, f"the worker took {took:.2f}s to stop the run"
    assert all(not _alive_in_group(pid) for pid in downloaders), "a yt-dlp process group is still alive"
    assert _job_dirs(scene.pk) == []
    assert "cancelled on request" in worker.log()


def test_an_uploading_scene_is_stopped_within_2_s_with_its_multipart_upload_aborted(api, owner, start_worker,
                                                                                     media_server, s3_bucket,
                                                                                     s3_endpoint):
    _, bucket = s3_bucket
    with FaultProxy(s3_endpoint) as proxy:
        # Every part takes 20 s: the run is certainly uploading when the cancel comes.
        proxy.slow(20, times=100, when=lambda method, path: method == "PUT" and "partNumber=" in path)
        start_worker(concurrency=2, env={**LIMITS, **r2_env(endpoint=proxy.url, bucket=bucket)})
        scene = services.scene_create(owner=owner, source_url=media_server.url("large.mp4"))
        download_media_task.delay(scene.pk)
        wait_until(lambda: Scene.objects.get(pk=scene.pk).stage == Scene.Stage.UPLOADING, timeout=60, interval=0.05,
                   what="the upload to start")
        wait_until(lambda: bool(_open_uploads(s3_bucket)), timeout=10, what="the multipart upload to be open")

        _, took = _cancel_and_time(api, scene.pk)

    assert Scene.objects.get(pk=scene.pk).status == "cancelled"
    assert took < CANCEL_WITHIN, f"the worker took {took:.2f}s to stop the run"
    assert _open_uploads(s3_bucket) == []
    assert _keys(s3_bucket) == []
    assert _job_dirs(scene.pk) == []


def test_a_cancelled_scene_can_be_retried(api, owner, django_capture_on_commit_callbacks):
    scene = services.scene_create(owner=owner, source_url="http://93.184.216.34/video.mp4")  # global: no DNS
    api.post(f"/api/v1/scenes/{scene.pk}/cancel")

    from unittest import mock

    with mock.patch("downloads.tasks.download_media_task.apply_async"):
        retried = api.post(f"/api/v1/scenes/{scene.pk}/retry")

    assert retried.status_code == 202
    assert retried.json()["status"] == "queued"
    assert retried.json()["cancel_requested_at"] is None


def test_a_finished_scene_cannot_be_cancelled(api, owner):
    scene = services.scene_create(owner=owner, source_url="https://example.com/v.mp4")
    scene_states.start(scene_id=scene.pk)
    scene_states.complete(scene_id=scene.pk, storage_key="scenes/x/media.mp4")

    answer = api.post(f"/api/v1/scenes/{scene.pk}/cancel")

    assert answer.status_code == 409
    assert Scene.objects.get(pk=scene.pk).status == "completed"


@pytest.mark.parametrize("round_", range(12))
def test_a_cancel_racing_the_completion_ends_in_exactly_one_terminal_status(owner, round_):
    """The web's cancel and the worker's completion write at the same moment, from two threads; whichever
    commits first wins, and the other side learns it lost (409, or a completion that matched nothing, after
    which the run writes ``cancelled`` itself)."""
    scene = services.scene_create(owner=owner, source_url="https://example.com/v.mp4")
    scene_states.start(scene_id=scene.pk)
    barrier = threading.Barrier(2)
    results: dict[str, object] = {}

    def web() -> None:
        barrier.wait()
        time.sleep(0.0005 * (round_ % 4))
        try:
            results["cancel"] = lifecycle.cancel(scene_id=scene.pk)
        except lifecycle.SceneStateConflict:
            results["cancel"] = "conflict"

    def worker() -> None:
        barrier.wait()
        time.sleep(0.0005 * (round_ // 4))
        completed = async_to_sync(lifecycle.complete)(scene_id=scene.pk, attempt=1, fields={"storage_key": "k"})
        results["complete"] = completed
        if not completed and async_to_sync(lifecycle.cancel_waiting)(scene_id=scene.pk, attempt=1):
            results["cancelled"] = async_to_sync(lifecycle.cancelled)(scene_id=scene.pk, attempt=1)

    threads = [threading.Thread(target=web), threading.Thread(target=worker)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    final = Scene.objects.get(pk=scene.pk).status
    if results["complete"]:
        assert (final, results["cancel"]) == ("completed", "conflict")
    else:
        assert (final, results["cancel"], results.get("cancelled")) == ("cancelled", "processing", True)
