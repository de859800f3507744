"""What `make run` starts: redis, web and the gevent worker together, stopped by one Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.harness.processes import ServiceProcess, free_port, port_open, wait_until
from tests.harness.services import ALLOWED_INTERNET, REPO_ROOT


@pytest.fixture
def stack(tmp_path: Path):
    web_port, redis_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "R2_", "CELERY_"))}
    env.update({
        "DATA_DIR": str(tmp_path), "WEB_PORT": str(web_port), "PYTHONUNBUFFERED": "1",
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0", "CELERY_WORKER_CONCURRENCY": "10",
    })
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO_ROOT, env=env, check=True, timeout=120)
    process = ServiceProcess([sys.executable, "-m", "mediastore.runstack"], log_path=tmp_path / "stack.log",
                             env=env, cwd=REPO_ROOT)
    try:
        yield process, web_port, redis_port
    finally:
        process.stop(grace=30)


def _get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_stack_serves_web_and_runs_the_gevent_worker_until_ctrl_c(stack):
    process, web_port, redis_port = stack
    wait_until(lambda: port_open(web_port) and process.log().count(" ready.") == 2, timeout=60, interval=0.2,
               what="web and both workers to start")

    assert _get(web_port, "/healthz") == 200
    assert _get(web_port, "/admin/") == 200  # after the redirect to the sign-in page
    assert _get(web_port, "/static/scenes/app.js") == 200  # WhiteNoise serves under ASGI too
    assert _get(web_port, "/api/v1/scenes/events") == 401  # the async view: under WSGI it would be 503
    log = process.log()
    assert "(gevent)" in log
    assert "webhooks@" in log  # the webhooks worker, on its own queue
    assert re.search(rf"Connected to redis://\S*127\.0\.0\.1:{redis_port}/0", log)  # Celery masks credentials

    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    process.process.wait(timeout=30)

    assert not port_open(web_port)
    assert not port_open(redis_port)
    assert "runstack: redis-server stopped" in process.log()
    assert "Warm shutdown" in process.log()


def _manage(env: dict[str, str], code: str) -> str:
    """Run Django code against the stack's own database, as an operator's shell would."""
    done = subprocess.run([sys.executable, "manage.py", "shell", "--no-imports", "-c", code], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


def _status(env: dict[str, str], scene_id: str) -> str:
    return _manage(env, f"from scenes.models import Scene; print(Scene.objects.get(pk='{scene_id}').status)")


def test_ctrl_c_while_a_job_runs_hands_it_back_and_the_next_start_completes_it(tmp_path: Path, media_server):
    web_port, redis_port = free_port(), free_port()
    job_tmp = tmp_path / "tmp"
    job_tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "R2_", "CELERY_", "MEDIA_"))}
    env.update({
        "DATA_DIR": str(tmp_path / "data"), "WEB_PORT": str(web_port), "PYTHONUNBUFFERED": "1", "TMPDIR": str(job_tmp),
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0", "CELERY_WORKER_CONCURRENCY": "4",
        "MEDIA_SHUTDOWN_GRACE": "2", "MEDIA_ALLOWED_NETWORKS": ALLOWED_INTERNET,  # the media server
    })
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO_ROOT, env=env, check=True, timeout=120)

    def start() -> ServiceProcess:
        process = ServiceProcess([sys.executable, "-m", "mediastore.runstack"], log_path=tmp_path / "stack.log",
                                 env=env, cwd=REPO_ROOT)
        # Each start has two workers (downloads, webhooks), each saying " ready." once.
        wait_until(lambda: port_open(web_port) and process.log().count(" ready.") >= 2 * runs, timeout=60,
                   interval=0.2, what="web and workers to start")
        return process

    runs = 1
    stack = start()
    try:
        # Given a download that takes about 20 s (throttled source) and is running now
        url = media_server.url("throttled.mp4?rate=250000")
        scene_id = _manage(env, "from django.contrib.auth.models import User; from scenes import services; "
                                "u, _ = User.objects.get_or_create(username='ops'); "
                                f"print(services.scene_store(owner=u, source_url='{url}').pk)")
        wait_until(lambda: _status(env, scene_id) == "processing" and any(job_tmp.iterdir()), timeout=60,
                   interval=0.5, what="the job to start")

        # When the operator presses Ctrl-C
        os.killpg(stack.pid, signal.SIGINT)
        stack.process.wait(timeout=60)
    finally:
        stack.stop(grace=30)

    # Then nothing was SIGKILLed, the job was handed back and its temp folder removed
    log = stack.log()
    assert "handed back to the queue" in log
    assert "SIGKILL" not in log
    assert "killing" not in log.lower()
    assert _status(env, scene_id) == "queued"
    assert list(job_tmp.iterdir()) == []

    # And the next start completes it without anyone acting
    runs = 2
    stack = start()
    try:
        wait_until(lambda: _status(env, scene_id) == "completed", timeout=120, interval=1, what="the scene to complete")
    finally:
        os.killpg(stack.pid, signal.SIGINT)
        stack.process.wait(timeout=60)
        stack.stop(grace=30)
