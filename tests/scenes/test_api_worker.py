"""The API against the real stack: a worker ingests what the API stores; deletes leave no object behind."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from scenes.models import Scene
from tests.harness.faults import FaultProxy
from tests.harness.media import MediaServer
from tests.harness.processes import wait_until
from tests.harness.services import r2_env
from tests.harness.tokens import api_token

LIMITS = {"MEDIA_MAX_FILESIZE": "20M", "MEDIA_SOCKET_TIMEOUT": "5", "MEDIA_DOWNLOAD_TIMEOUT": "120"}


@pytest.fixture
def api(transactional_db, settings):
    settings.MEDIA_ALLOWED_NETWORKS = ["127.0.0.0/8"]  # the loopback media server
    user = get_user_model().objects.create_user("api-user")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token(user)}")
    return client


@pytest.fixture
def s3(s3_bucket):
    return s3_bucket


def _s3_env(endpoint: str, bucket: str) -> dict[str, str]:
    return {**LIMITS, **r2_env(endpoint=endpoint, bucket=bucket)}


def _keys(s3) -> list[str]:
    client, name = s3
    return sorted(item["Key"] for item in client.list_objects_v2(Bucket=name).get("Contents", []))


def _wait_status(api: APIClient, scene_id: str, status: str, timeout: float = 90) -> dict:
    wait_until(lambda: api.get(f"/api/v1/scenes/{scene_id}").json()["status"] == status, timeout=timeout,
               interval=0.2, what=f"scene {scene_id} to be {status}")
    return api.get(f"/api/v1/scenes/{scene_id}").json()


def test_stored_url_is_followed_from_queued_to_completed_and_downloads_the_same_bytes(
        api, start_worker, media_server: MediaServer, tmp_path: Path, settings):
    start_worker(concurrency=10, env=LIMITS)
    settings.MEDIA_ROOT = tmp_path / "worker-data" / "media"  # the worker's local folder, served by the app
    url = media_server.url("throttled.mp4?rate=2000000")

    started = time.monotonic()
    stored = api.post("/api/v1/media/store", {"url": url}, format="json")
    answered_in = time.monotonic() - started
    scene_id = stored.json()["id"]
    statuses, progress = [stored.json()["status"]], set()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        body = api.get(stored["Location"]).json()
        if body["status"] != statuses[-1]:
            statuses.append(body["status"])
        if body["status"] == "processing" and body["progress"] is not None:
            progress.add(body["progress"])
        if body["status"] in {"completed", "failed"}:
            break
        time.sleep(0.1)

    assert stored.status_code == 202
    assert answered_in < 1.0, f"the API waited {answered_in:.2f}s"
    assert statuses == ["queued", "processing", "completed"]
    assert len(progress - {0, 100}) >= 1
    media = api.get(body["media_url"])
    assert media.status_code == 200
    assert b"".join(media.streaming_content) == media_server.files.large.read_bytes()
    assert Scene.objects.get(pk=scene_id).size_bytes == media_server.files.large.stat().st_size


def test_deleting_a_scene_and_a_project_leaves_no_object(api, start_worker, s3, s3_endpoint: str,
                                                        media_server: MediaServer):
    _, bucket = s3
    start_worker(concurrency=10, env=_s3_env(s3_endpoint, bucket))
    project = api.post("/api/v1/projects/", {"name": "To delete"}, format="json").json()
    alone = api.post("/api/v1/media/store", {"url": media_server.url("video.mp4")}, format="json").json()
    in_project = [api.post("/api/v1/media/store", {"url": media_server.url(p), "project": project["id"]},
                           format="json").json() for p in ("video.mp4", "audio.m4a")]
    for scene in [alone, *in_project]:
        _wait_status(api, scene["id"], "completed")
    assert len(_keys(s3)) == 5  # two media with thumbnails, one audio without

    deleted_scene = api.delete(f"/api/v1/scenes/{alone['id']}")
    deleted_project = api.delete(f"/api/v1/projects/{project['id']}")

    assert (deleted_scene.status_code, deleted_project.status_code) == (204, 204)
    wait_until(lambda: _keys(s3) == [], timeout=30, what="every object to be deleted")
    assert api.get(f"/api/v1/scenes/{in_project[0]['id']}").status_code == 404


def test_object_deletion_is_retried_when_the_store_fails(api, start_worker, s3, s3_endpoint: str,
                                                        media_server: MediaServer):
    _, bucket = s3
    with FaultProxy(s3_endpoint) as proxy:
        start_worker(concurrency=10, env=_s3_env(proxy.url, bucket))
        scene = api.post("/api/v1/media/store", {"url": media_server.url("video.mp4")}, format="json").json()
        _wait_status(api, scene["id"], "completed")
        # Every try of the first delete call fails, botocore's retries included: the task must retry.
        proxy.fail(500, times=3, when=lambda method, path: method == "POST" and "delete" in path)

        assert api.delete(f"/api/v1/scenes/{scene['id']}").status_code == 204
        wait_until(lambda: _keys(s3) == [], timeout=60, what="the objects to be deleted after the failures")

    assert [status for _, _, status in proxy.injected] == [500, 500, 500]


def test_deleting_while_processing_leaves_no_object(api, start_worker, s3, s3_endpoint: str,
                                                    media_server: MediaServer):
    _, bucket = s3
    start_worker(concurrency=10, env=_s3_env(s3_endpoint, bucket))
    scene = api.post("/api/v1/media/store", {"url": media_server.url("throttled.mp4?rate=3000000")},
                     format="json").json()
    _wait_status(api, scene["id"], "processing")

    assert api.delete(f"/api/v1/scenes/{scene['id']}").status_code == 204
    time.sleep(6)  # the download (≈2.3 s) and upload finish for a scene that no longer exists

    assert _keys(s3) == []
