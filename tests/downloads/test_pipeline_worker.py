"""The whole pipeline on the real gevent worker: real yt-dlp, ffmpeg, Redis, S3 server and media server."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from downloads.tasks import download_media_task
from scenes import services
from scenes.models import Scene
from tests.harness import scene_states
from tests.harness.faults import FaultProxy, is_upload_part
from tests.harness.media import MediaServer
from tests.harness.processes import open_fds
from tests.harness.services import r2_env

LIMITS = {
    "MEDIA_MAX_FILESIZE": "10M",
    "MEDIA_SOCKET_TIMEOUT": "2",
    "MEDIA_RETRY_BACKOFF": "0.2",
    "MEDIA_MAX_ATTEMPTS": "2",
    "MEDIA_DOWNLOAD_TIMEOUT": "120",
}


@pytest.fixture
def bucket(s3_bucket):
    return s3_bucket


@pytest.fixture
def job_tmp(tmp_path: Path) -> Path:
    folder = tmp_path / "worker-tmp"
    folder.mkdir()
    return folder


@pytest.fixture
def s3_worker(start_worker, bucket, s3_endpoint: str, job_tmp: Path):
    _, name = bucket

    def start(**overrides: str):
        env = {**LIMITS, **r2_env(endpoint=s3_endpoint, bucket=name), "TMPDIR": str(job_tmp), **overrides}
        return start_worker(concurrency=10, env=env)

    return start


@pytest.fixture
def owner(transactional_db):
    return get_user_model().objects.create_user("pipeline-owner")


def _keys(bucket) -> list[str]:
    client, name = bucket
    return sorted(item["Key"] for item in client.list_objects_v2(Bucket=name).get("Contents", []))


def _open_uploads(bucket) -> list[str]:
    client, name = bucket
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=name).get("Uploads", [])]


def _assert_clean(bucket, job_tmp: Path) -> None:
    """After every ingest: the job's temp folder is gone and no multipart upload is left open."""
    assert list(job_tmp.iterdir()) == []
    assert _open_uploads(bucket) == []


def _streams(bucket, key: str, tmp_path: Path) -> list[str]:
    client, name = bucket
    target = tmp_path / Path(key).name
    client.download_file(name, key, str(target))
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type", "-of", "json",
                            str(target)], capture_output=True, text=True, check=True, timeout=60)
    return sorted(stream["codec_type"] for stream in json.loads(probe.stdout)["streams"])


@pytest.mark.parametrize("path", ["video.mp4", "hls/index.m3u8", "dash/manifest.mpd", "video-page.html",
                                  "og-page.html"])
def test_media_is_stored_with_metadata_and_thumbnail(s3_worker, owner, bucket, media_server: MediaServer,
                                                    job_tmp: Path, tmp_path: Path, path: str):
    s3_worker()

    scene = scene_states.ingest(owner, media_server.url(path))

    assert (scene.status, scene.error_code, scene.error_message) == (Scene.Status.COMPLETED, "", "")
    assert scene.storage_key == f"scenes/{scene.pk}/media.mp4"
    assert scene.thumbnail_key == f"scenes/{scene.pk}/thumb.jpg"
    assert _keys(bucket) == sorted([scene.storage_key, scene.thumbnail_key])
    assert (scene.width, scene.height, scene.video_codec, scene.audio_codec) == (320, 240, "h264", "aac")
    assert 2.5 < scene.duration < 3.5
    assert scene.content_type == "video/mp4"
    assert scene.progress == 100
    assert scene.attempts == 1
    assert _streams(bucket, scene.storage_key, tmp_path) == ["audio", "video"]
    _assert_clean(bucket, job_tmp)


@pytest.mark.parametrize("helper", ["1", "0"], ids=["ytdlp-helper", "ytdlp-plain"])
def test_finished_jobs_leave_no_open_fds_in_the_worker(s3_worker, owner, media_server: MediaServer, helper: str):
    # Closes on the loop thread and the native pool went to hubs that never run (gevent defers them): each job
    # left its subprocesses' pidfds and its folder's directory fds open, until the worker ran out of fds. And
    # each pool thread that resolved a source's name got a gevent hub of its own (an epoll fd and an eventfd).
    worker = s3_worker(MEDIA_YTDLP_HELPER=helper)
    for _ in range(2):  # clients, pools and the helper are made on the first jobs
        assert scene_states.ingest(owner, media_server.url("video.mp4")).status == Scene.Status.COMPLETED
    before = open_fds(worker.process.process.pid)

    for _ in range(6):
        assert scene_states.ingest(owner, media_server.url("video.mp4")).status == Scene.Status.COMPLETED

    after = open_fds(worker.process.process.pid)
    grown = Counter(after) - Counter(before)
    # One more database connection may open at any time (a greenlet has its own, and the worker's periodic ones
    # run on their own schedule; one did, once, in a full run): the file, its WAL and its index. One per job would
    # be a leak.
    database = str(connection.settings_dict["NAME"])
    connections = Counter({target: n for target, n in grown.items() if target.startswith(database)})
    assert [target for target in after if target.endswith("(deleted)")] == []
    assert grown - connections == Counter()
    assert all(n <= 1 for n in connections.values()), connections


def test_audio_only_is_stored_without_thumbnail(s3_worker, owner, bucket, media_server: MediaServer, job_tmp: Path):
    s3_worker()

    scene = scene_states.ingest(owner, media_server.url("audio.m4a"))

    assert scene.status == Scene.Status.COMPLETED
    assert scene.thumbnail_key == ""
    assert (scene.video_codec, scene.audio_codec, scene.content_type) == ("", "aac", "audio/mp4")
    assert _keys(bucket) == [scene.storage_key]
    _assert_clean(bucket, job_tmp)


@pytest.mark.parametrize(("path", "code"), [("missing.mp4", "not_found"), ("no-media.html", "unsupported_url")])
def test_permanent_source_errors_fail_with_their_code(s3_worker, owner, bucket, media_server: MediaServer,
                                                     job_tmp: Path, path: str, code: str):
    s3_worker()

    scene = scene_states.ingest(owner, media_server.url(path))

    assert (scene.status, scene.error_code, scene.attempts) == (Scene.Status.FAILED, code, 1)
    assert media_server.url(path).split("/")[-1].split(".")[0] in scene.error_detail
    assert _keys(bucket) == []
    _assert_clean(bucket, job_tmp)


@pytest.mark.parametrize("path", ["large.mp4", "large-chunked.mp4"])
def test_oversize_media_fails_too_large_and_stores_nothing(s3_worker, owner, bucket, media_server: MediaServer,
                                                          job_tmp: Path, path: str):
    s3_worker(MEDIA_MAX_FILESIZE="2M")

    scene = scene_states.ingest(owner, media_server.url(path))

    assert (scene.status, scene.error_code) == (Scene.Status.FAILED, "too_large")
    assert "2097152" in scene.error_message
    assert _keys(bucket) == []
    _assert_clean(bucket, job_tmp)


def test_stalling_source_is_retried_then_fails(s3_worker, owner, bucket, media_server: MediaServer, job_tmp: Path):
    s3_worker()

    scene = scene_states.ingest(owner, media_server.url("stall.mp4"), timeout=120)

    assert scene.status == Scene.Status.FAILED
    assert scene.error_code in {"timeout", "network_error"}
    assert scene.attempts == 2  # MEDIA_MAX_ATTEMPTS
    assert _keys(bucket) == []
    _assert_clean(bucket, job_tmp)


def test_throttled_download_reports_progress(s3_worker, owner, bucket, media_server: MediaServer, job_tmp: Path):
    s3_worker()
    scene = services.scene_create(owner=owner, source_url=media_server.url("throttled.mp4?rate=1500000"))

    download_media_task.delay(scene.pk)
    seen: set[int] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        current = Scene.objects.get(pk=scene.pk)
        if current.status == Scene.Status.PROCESSING and current.stage == Scene.Stage.DOWNLOADING \
                and current.progress is not None:
            seen.add(current.progress)
        if current.is_terminal:
            break
        time.sleep(0.1)

    assert current.status == Scene.Status.COMPLETED
    assert len(seen - {0, 100}) >= 2, f"progress values seen while downloading: {sorted(seen)}"
    _assert_clean(bucket, job_tmp)


def test_running_the_task_twice_stores_one_copy(s3_worker, owner, bucket, media_server: MediaServer, job_tmp: Path):
    s3_worker()
    scene = scene_states.ingest(owner, media_server.url("video.mp4"))
    first_completed_at = scene.completed_at

    outcome = download_media_task.delay(scene.pk).get(timeout=60)

    scene.refresh_from_db()
    assert outcome == "already_completed"
    assert scene.completed_at == first_completed_at
    assert _keys(bucket) == sorted([scene.storage_key, scene.thumbnail_key])
    _assert_clean(bucket, job_tmp)


def test_concurrent_deliveries_complete_once(s3_worker, owner, bucket, media_server: MediaServer, job_tmp: Path):
    s3_worker()
    scene = services.scene_create(owner=owner, source_url=media_server.url("video.mp4"))

    outcomes = sorted(r.get(timeout=90) for r in [download_media_task.delay(scene.pk) for _ in range(2)])

    scene.refresh_from_db()
    assert outcomes == ["busy", "completed"]
    assert scene.attempts == 1
    assert _keys(bucket) == sorted([scene.storage_key, scene.thumbnail_key])
    _assert_clean(bucket, job_tmp)


@pytest.mark.parametrize("path", ["video.mp4", "hls/index.m3u8", "dash/manifest.mpd", "video-page.html",
                                  "og-page.html", "audio.m4a"])
def test_local_folder_storage_stores_media(start_worker, owner, media_server: MediaServer, tmp_path: Path,
                                           job_tmp: Path, path: str):
    start_worker(env={**LIMITS, "TMPDIR": str(job_tmp)})

    scene = scene_states.ingest(owner, media_server.url(path))

    media_root = tmp_path / "worker-data" / "media"
    assert scene.status == Scene.Status.COMPLETED
    stored = sorted(str(p.relative_to(media_root)) for p in media_root.rglob("*") if p.is_file())
    assert stored == sorted(key for key in [scene.storage_key, scene.thumbnail_key] if key)
    assert bool(scene.thumbnail_key) == (path != "audio.m4a")
    assert (media_root / scene.storage_key).stat().st_size == scene.size_bytes
    assert list(job_tmp.iterdir()) == []


@pytest.fixture
def fault_proxy(s3_endpoint: str):
    with FaultProxy(s3_endpoint) as proxy:
        yield proxy


def test_s3_answering_503_twice_then_200_completes(s3_worker, owner, bucket, fault_proxy, media_server: MediaServer,
                                                   job_tmp: Path):
    fault_proxy.fail(503, times=2, when=is_upload_part)
    s3_worker(R2_ENDPOINT_URL=fault_proxy.url)

    scene = scene_states.ingest(owner, media_server.url("video.mp4"))

    assert scene.status == Scene.Status.COMPLETED
    assert [status for _, _, status in fault_proxy.injected] == [503, 503]
    assert _keys(bucket) == sorted([scene.storage_key, scene.thumbnail_key])
    _assert_clean(bucket, job_tmp)


def test_s3_refusing_with_403_fails_storage_error_without_retry(s3_worker, owner, bucket, fault_proxy,
                                                               media_server: MediaServer, job_tmp: Path):
    fault_proxy.fail(403, times=100, when=is_upload_part)
    s3_worker(R2_ENDPOINT_URL=fault_proxy.url)

    scene = scene_states.ingest(owner, media_server.url("video.mp4"))

    assert (scene.status, scene.error_code, scene.attempts) == (Scene.Status.FAILED, "storage_error", 1)
    assert "AccessDenied" in scene.error_detail
    assert len(fault_proxy.injected) == 1  # a 4xx is not retried, by botocore or by us
    assert _keys(bucket) == []
    _assert_clean(bucket, job_tmp)  # the multipart upload was aborted


def test_file_without_media_streams_fails_invalid_media(s3_worker, owner, bucket, media_server: MediaServer,
                                                       job_tmp: Path):
    s3_worker()

    scene = scene_states.ingest(owner, media_server.url("not-media.mp4"))

    assert (scene.status, scene.error_code) == (Scene.Status.FAILED, "invalid_media")
    assert _keys(bucket) == []
    _assert_clean(bucket, job_tmp)


def test_processing_scene_with_stale_heartbeat_is_taken_over(s3_worker, owner, bucket, media_server: MediaServer,
                                                            job_tmp: Path):
    s3_worker(MEDIA_STALE_AFTER="60")
    scene = services.scene_create(owner=owner, source_url=media_server.url("video.mp4"))
    # As a worker killed mid-download leaves it: processing, attempt 1, heartbeat ten minutes old.
    Scene.objects.filter(pk=scene.pk).update(status=Scene.Status.PROCESSING, attempts=1,
                                             updated_at=timezone.now() - dt.timedelta(minutes=10))

    outcome = download_media_task.delay(scene.pk).get(timeout=90)

    scene.refresh_from_db()
    assert outcome == "completed"
    assert (scene.status, scene.attempts) == (Scene.Status.COMPLETED, 2)
    _assert_clean(bucket, job_tmp)


def test_processing_scene_with_fresh_heartbeat_is_left_alone(s3_worker, owner, media_server: MediaServer):
    s3_worker(MEDIA_STALE_AFTER="60")
    scene = services.scene_create(owner=owner, source_url=media_server.url("video.mp4"))
    Scene.objects.filter(pk=scene.pk).update(status=Scene.Status.PROCESSING, attempts=1, updated_at=timezone.now())

    outcome = download_media_task.delay(scene.pk).get(timeout=90)

    scene.refresh_from_db()
    assert outcome == "busy"
    assert (scene.status, scene.attempts) == (Scene.Status.PROCESSING, 1)
