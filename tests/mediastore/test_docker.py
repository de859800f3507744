"""The container files: compose validated by docker-compose itself (no Docker engine runs here)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

import yaml

from tests.harness.services import REPO_ROOT

COMPOSE = REPO_ROOT / "docker" / "compose.yaml"
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
PROMETHEUS = REPO_ROOT / "docker" / "prometheus.yml"
DASHBOARD = REPO_ROOT / "docker" / "grafana" / "mediastore.json"


def _compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker-compose", "-f", str(COMPOSE), *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT, env={**os.environ, **(env or {})})


def _scrape_jobs() -> dict[str, Any]:
    return {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}


def test_compose_file_is_valid():
    result = _compose("config", "--quiet")

    assert result.returncode == 0, result.stderr


def test_compose_runs_the_whole_stack():
    services = set(_compose("config", "--services").stdout.split())

    assert {"mongo", "redis", "minio", "web", "worker", "webhooks", "flower", "prometheus"} <= services


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


def test_image_serves_the_web_with_the_metrics_hooks():
    cmd = next(line for line in DOCKERFILE.read_text().splitlines() if line.startswith("CMD "))
    argv = json.loads(cmd[len("CMD "):])

    assert argv[0] == "gunicorn"
    assert argv[argv.index("-c") + 1] == "mediastore/gunicorn_conf.py"
    assert (REPO_ROOT / "mediastore" / "gunicorn_conf.py").is_file()  # the image's WORKDIR is the repository


def test_prometheus_scrapes_the_web_by_a_host_django_allows():
    config = yaml.safe_load(_compose("config").stdout)
    targets = _scrape_jobs()["mediastore-web"]["static_configs"][0]["targets"]
    allowed = config["services"]["web"]["environment"]["DJANGO_ALLOWED_HOSTS"].split(",")

    assert targets == ["web:8000"]
    assert "web" in allowed


def test_prometheus_scrapes_every_worker_on_the_port_it_serves():
    worker = yaml.safe_load(_compose("config").stdout)["services"]["worker"]["environment"]
    discovery = _scrape_jobs()["mediastore-worker"]["dns_sd_configs"][0]

    assert discovery["names"] == ["worker", "webhooks"]
    assert discovery["port"] == int(worker["MEDIA_WORKER_METRICS_PORT"])
    assert worker["MEDIA_WORKER_METRICS_HOST"] == "0.0.0.0"  # noqa: S104  # the compose network, not published


def test_prometheus_sends_the_token_web_and_worker_check():
    services = yaml.safe_load(_compose("config", env={"METRICS_TOKEN": "token-from-the-environment"}).stdout)[
        "services"]
    command = " ".join(services["prometheus"]["command"])
    files = {job["authorization"]["credentials_file"] for job in _scrape_jobs().values()}

    assert {services[name]["environment"]["METRICS_TOKEN"] for name in ("web", "worker", "prometheus")} == {
        "token-from-the-environment"}
    assert len(files) == 1
    assert f"\"$$METRICS_TOKEN\" > {files.pop()}" in command


def _dashboard_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", []))
    return {re.sub(r"_(bucket|count|sum)$", "", name) for name in re.findall(r"mediastore_[a-z_]+", exprs)}


def _defined_metrics() -> set[str]:
    return set(re.findall(r"\"(mediastore_[a-z_]+)\"", (REPO_ROOT / "mediastore" / "metrics.py").read_text()))


def test_dashboard_has_a_panel_for_every_metric():
    assert _defined_metrics() - _dashboard_metrics() == set()


def test_dashboard_shows_only_metrics_that_exist():
    assert _dashboard_metrics() - _defined_metrics() == set()
