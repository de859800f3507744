"""Bounded resources per job and limits that judge real bytes, on the real worker with real yt-dlp and ffmpeg."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from scenes.models import Scene
from tests.harness import scene_states
from tests.harness.media import MediaFiles
from tests.harness.services import r2_env

LIMITS = {"MEDIA_MAX_FILESIZE": "10M", "MEDIA_SOCKET_TIMEOUT": "3", "MEDIA_RETRY_BACKOFF": "0.2",
          "MEDIA_MAX_ATTEMPTS": "2", "MEDIA_DOWNLOAD_TIMEOUT": "60"}


@pytest.fixture
def owner(transactional_db):
    return get_user_model().objects.create_user("limits-owner")


@pytest.fixture
def worker(start_worker, s3_bucket, s3_endpoint: str, tmp_path: Path):
    _, name = s3_bucket

    def start(**overrides: str):
        return start_worker(concurrency=4, env={**LIMITS, **r2_env(endpoint=s3_endpoint, bucket=name),
                                                "TMPDIR": str(tmp_path), **overrides})

    return start


def test_a_drip_source_fails_as_a_timeout_within_the_throughput_window_and_is_not_retried(worker, owner, site):
    worker(MEDIA_MIN_THROUGHPUT="4K", MEDIA_THROUGHPUT_WINDOW="4")
    url = site.drip("/drip.mp4", length=500_000, interval=0.5)

    started = time.monotonic()
    scene = scene_states.ingest(owner, url)

    assert (scene.status, scene.error_code, scene.attempts) == (Scene.Status.FAILED, "timeout", 1)
    assert "bytes per second" in scene.error_message
    assert time.monotonic() - started < 4 + 10  # the window and the job's start-up, not the download timeout


def test_a_video_over_the_pixel_cap_fails_with_its_own_code(worker, owner, media_server):
    worker(MEDIA_MAX_PIXELS=str(320 * 240 - 1))  # the test video is 320x240

    scene = scene_states.ingest(owner, media_server.url("video.mp4"))

    assert (scene.status, scene.error_code) == (Scene.Status.FAILED, "too_many_pixels")
    assert "320x240" in scene.error_message


def test_a_title_longer_than_a_pipe_line_is_cut_not_fatal(worker, owner, site):
    worker()
    url = site.route("/long-title.html", f"<html><head><title>{'T' * 200_000}</title></head><body>"
                                         '<video src="/video.mp4"></video></body></html>')

    scene = scene_states.ingest(owner, url)

    assert scene.status == Scene.Status.COMPLETED
    assert 0 < len(scene.title) <= 500


def test_a_dash_source_whose_estimate_is_over_the_size_limit_but_real_bytes_are_under_completes(
        worker, owner, site, media_files: MediaFiles):
    worker()  # 10M limit; the estimate below is ~37 MB (bandwidth x duration), the real bytes ~200 KB
    manifest = (media_files.root / "dash" / "manifest.mpd").read_text()
    inflated = manifest.replace('bandwidth="', 'bandwidth="99')
    inflated = inflated.replace("<Period", "<BaseURL>/dash/</BaseURL><Period", 1)
    url = site.route("/inflated.mpd", inflated, content_type="application/dash+xml")

    scene = scene_states.ingest(owner, url)

    assert scene.status == Scene.Status.COMPLETED, scene.error_message
    assert scene.size_bytes < 10 * 1024 * 1024


def test_a_file_of_one_repeated_block_is_not_media(worker, owner, site):
    worker()
    url = site.route("/repeated.mp4", os.urandom(32) * 6400, content_type="video/mp4")

    scene = scene_states.ingest(owner, url)

    assert (scene.status, scene.error_code) == (Scene.Status.FAILED, "invalid_media")


def test_a_manifest_over_its_size_limit_is_refused_before_it_is_parsed(worker, owner, site):
    worker(MEDIA_MAX_MANIFEST="1M")
    body = "#EXTM3U\n#EXT-X-TARGETDURATION:1\n" + "#EXTINF:1,\nmissing.ts\n" * 100_000 + "#EXT-X-ENDLIST\n"
    url = site.route("/huge.m3u8", body, content_type="application/vnd.apple.mpegurl")

    scene = scene_states.ingest(owner, url)

    assert (scene.status, scene.error_code) == (Scene.Status.FAILED, "too_large")
