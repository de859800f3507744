"""What `make run` starts: redis, web and the gevent worker together, stopped by one Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.harness.processes import ServiceProcess, free_port, port_open, wait_until
from tests.harness.services import REPO_ROOT


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
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return int(response.status)


def test_stack_serves_web_and_runs_the_gevent_worker_until_ctrl_c(stack):
    process, web_port, redis_port = stack
    wait_until(lambda: port_open(web_port) and " ready." in process.log(), timeout=60, interval=0.2,
               what="web and worker to start")

    assert _get(web_port, "/healthz") == 200
    assert _get(web_port, "/admin/") == 200  # after the redirect to the sign-in page
    log = process.log()
    assert "(gevent)" in log
    assert re.search(rf"Connected to redis://\S*127\.0\.0\.1:{redis_port}/0", log)  # Celery masks credentials

    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    process.process.wait(timeout=30)

    assert not port_open(web_port)
    assert not port_open(redis_port)
    assert "runstack: redis-server stopped" in process.log()
    assert "Warm shutdown" in process.log()
