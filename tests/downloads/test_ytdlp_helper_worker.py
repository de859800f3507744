"""The yt-dlp helper in a real gevent worker: started once, used by every job, started again after it died."""

from __future__ import annotations

import os
import signal

import pytest
from django.contrib.auth import get_user_model

from tests.harness import scene_states
from tests.harness.media import MediaServer
from tests.harness.processes import wait_until, ytdlp_helpers

LIMITS = {"MEDIA_MAX_FILESIZE": "10M", "MEDIA_SOCKET_TIMEOUT": "5", "MEDIA_DOWNLOAD_TIMEOUT": "120"}


@pytest.fixture
def owner(transactional_db):
    return get_user_model().objects.create_user("helper-owner")


def test_every_job_forks_from_one_helper_which_is_started_again_after_it_died(owner, start_worker,
                                                                               media_server: MediaServer):
    worker = start_worker(concurrency=4, env=LIMITS)
    first = [scene_states.ingest(owner, media_server.url(f"video.mp4?n={n}")) for n in range(2)]
    (helper,) = ytdlp_helpers(worker.process.pid)
    os.kill(helper, signal.SIGKILL)

    after = scene_states.ingest(owner, media_server.url("video.mp4?n=after"))

    assert [scene.status for scene in [*first, after]] == ["completed"] * 3
    assert worker.log().count("started (start 1)") == 1
    assert "stopped; 0 running jobs are killed" in worker.log()
    assert "started (start 2)" in worker.log()
    assert ytdlp_helpers(worker.process.pid) not in ([], [helper])


def test_the_helper_is_started_with_the_worker_before_any_job(start_worker):
    # The first job would otherwise wait for it to import yt-dlp and FFmpeg's libraries (about 0.5 s).
    worker = start_worker(concurrency=4, env=LIMITS)

    # The helper is in /proc as soon as it is forked, a moment before the worker logs that it started it.
    wait_until(lambda: "started (start 1)" in worker.log(), timeout=30, what="the yt-dlp helper's start line")
    assert len(ytdlp_helpers(worker.process.pid)) == 1


def test_with_the_helper_off_jobs_run_as_plain_subprocesses(owner, start_worker, media_server: MediaServer):
    worker = start_worker(concurrency=4, env={**LIMITS, "MEDIA_YTDLP_HELPER": "0"})

    scene = scene_states.ingest(owner, media_server.url("video.mp4"))

    assert scene.status == "completed"
    assert ytdlp_helpers(worker.process.pid) == []
    assert "yt-dlp helper" not in worker.log()
