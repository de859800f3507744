"""The container files: compose validated by docker-compose itself (no Docker engine runs here)."""

from __future__ import annotations

import subprocess

import yaml

from tests.harness.services import REPO_ROOT

COMPOSE = REPO_ROOT / "docker" / "compose.yaml"
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker-compose", "-f", str(COMPOSE), *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT)


def test_compose_file_is_valid():
    result = _compose("config", "--quiet")

    assert result.returncode == 0, result.stderr


def test_compose_runs_the_whole_stack():
    services = set(_compose("config", "--services").stdout.split())

    assert {"mongo", "redis", "minio", "web", "worker", "flower"} <= services


def test_compose_worker_uses_the_gevent_pool_against_mongodb_and_minio():
    config = yaml.safe_load(_compose("config").stdout)
    worker = config["services"]["worker"]

    assert worker["command"][:7] == ["celery", "-A", "mediastore", "worker", "-P", "gevent", "-c"]
    assert worker["environment"]["DATABASE_URL"].startswith("mongodb://mongo:")
    assert worker["environment"]["R2_ENDPOINT_URL"] == "http://minio:9000"


def test_compose_redis_keeps_tasks():
    command = yaml.safe_load(_compose("config").stdout)["services"]["redis"]["command"]

    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_mongodb_is_version_7_or_newer():
    image = yaml.safe_load(_compose("config").stdout)["services"]["mongo"]["image"]

    assert int(image.split(":")[1].split(".")[0]) >= 7


def test_image_runs_as_a_non_root_user_with_ffmpeg():
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]

    assert users
    assert users[-1] not in {"root", "0"}
    assert any("ffmpeg" in line for line in lines if "apt-get install" in line)
    assert "requirements/prod.txt" in DOCKERFILE.read_text()


def test_image_serves_the_asgi_app_through_uvicorn_workers():
    command = yaml.safe_load(_compose("config").stdout)["services"]["web"].get("command")
    cmd = next(line for line in DOCKERFILE.read_text().splitlines() if line.startswith("CMD "))
    argv = command or yaml.safe_load(cmd.removeprefix("CMD "))

    assert argv[:2] == ["gunicorn", "mediastore.asgi:application"]
    assert argv[argv.index("-k") + 1] == "mediastore.asgi_worker.UvicornWorker"
