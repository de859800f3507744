"""The image's commands, run as the image runs them, without Docker: the code as `COPY . .` leaves it (root's,
what .dockerignore keeps out left out), a fresh virtualenv from requirements/prod.txt, and the app's user
(uid 10001, not root) running migrate, the web (the Dockerfile's CMD) and both workers (compose's commands)
with DATA_DIR as its only writable place."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.harness.processes import ServiceProcess, free_port, wait_until
from tests.harness.services import REPO_ROOT

APP_UID = 10001
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
COMPOSE = REPO_ROOT / "docker" / "compose.yaml"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching to the app's uid needs root")


def _as_app_user(argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={APP_UID}", f"--regid={APP_UID}", "--clear-groups", "--", *argv]


def _image_tree(target: Path) -> None:
    """What `COPY . .` puts in /app: the tracked files, minus what .dockerignore names."""
    ignored = {line.strip().rstrip("/") for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if name.split("/")[0] in ignored or not (REPO_ROOT / name).is_file():
            continue
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target / name)


def _compose_command(service: str) -> list[str]:
    return list(yaml.safe_load(COMPOSE.read_text())["services"][service]["command"])


@pytest.fixture
def image_root() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are root's alone (0700), and the app's user must reach the code.
    root = Path(tempfile.mkdtemp(prefix="image-commands-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_images_commands_run_from_a_fresh_venv_as_a_non_root_user(image_root: Path, broker_url: str):
    tmp_path = image_root
    app, venv, data = tmp_path / "app", tmp_path / "venv", tmp_path / "data"
    app.mkdir()
    _image_tree(app)
    # A system-wide Python, as the image's: this venv's own may live where only root can read (pyenv in /root).
    python = shutil.which("python3.11", path="/usr/local/bin:/usr/bin")
    if python is None:
        pytest.skip("no system-wide python3.11 for the app's user to run")
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "-r",
                    str(app / "requirements" / "prod.txt")], check=True, timeout=900, capture_output=True)
    data.mkdir()
    os.chown(data, APP_UID, APP_UID)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(data), "DATA_DIR": str(data),
           "STATIC_ROOT": str(app / "static"), "CELERY_BROKER_URL": broker_url, "PYTHONDONTWRITEBYTECODE": "1",
           "DJANGO_SETTINGS_MODULE": "mediastore.settings", "TMPDIR": str(data)}
    # The build step, as root: the static files are part of the image.
    subprocess.run([str(venv / "bin" / "python"), "manage.py", "collectstatic", "--noinput", "-v0"], cwd=app,
                   env={**env, "DJANGO_SECRET_KEY": "collectstatic-only", "DATA_DIR": str(tmp_path / "build")},
                   check=True, timeout=120)

    cannot_write = subprocess.run(_as_app_user(["touch", str(app / "mediastore" / "planted.py")]),
                                  capture_output=True, timeout=30)
    migrated = subprocess.run(_as_app_user(["python", "manage.py", "migrate", "--noinput", "-v0"]), cwd=app,
                              env=env, capture_output=True, text=True, timeout=300)
    assert cannot_write.returncode != 0  # the code is root's: the app's user cannot change it
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    # `make run` installs these same requirements (requirements/prod.txt) on a fresh machine; its runner's
    # imports (honcho) must be among them, not only among the test harness's.
    runner = subprocess.run([str(venv / "bin" / "python"), "-c", "import mediastore.runstack"], cwd=app, env=env,
                            capture_output=True, text=True, timeout=120)
    assert runner.returncode == 0, runner.stderr[-3000:]

    port = free_port()
    cmd = next(line for line in DOCKERFILE.read_text().splitlines() if line.startswith("CMD "))
    web_argv = [arg.replace("0.0.0.0:8000", f"127.0.0.1:{port}") for arg in json.loads(cmd.removeprefix("CMD "))]
    processes = [
        ServiceProcess(_as_app_user(web_argv), log_path=tmp_path / "web.log", env=env, cwd=app),
        ServiceProcess(_as_app_user(_compose_command("worker")), log_path=tmp_path / "worker.log", env=env, cwd=app),
        ServiceProcess(_as_app_user(_compose_command("webhooks")), log_path=tmp_path / "webhooks.log", env=env,
                       cwd=app),
    ]
    try:
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                    return answer.status == 200
            except OSError:
                return False

        wait_until(healthy, timeout=90, interval=0.5, what="the image's web command to serve /healthz")
        for process in processes[1:]:
            wait_until(lambda process=process: " ready." in process.log(), timeout=90, interval=0.5,
                       what="a worker command to be ready")
        wait_until(lambda: "yt-dlp helper" in processes[1].log(), timeout=60, interval=0.5,
                   what="the ingest worker to start its yt-dlp helper")
        owners = {path.stat().st_uid for path in data.rglob("*")}
    finally:
        for process in processes:
            process.stop(grace=30)

    assert owners == {APP_UID}  # everything the app wrote is under DATA_DIR, as its own user
    assert "yt-dlp helper" not in processes[2].log()  # the webhooks worker takes no ingest job: no helper
    assert "Permission denied" not in "".join(process.log() for process in processes)
