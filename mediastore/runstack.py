"""``make run``: redis (when the broker is ours to start), the web server, the gevent worker and the webhooks
worker, in the foreground. One Ctrl-C stops them all; if one exits, the others are stopped too (honcho).

Redis runs outside honcho, in its own session: honcho signals every process at once, and a broker that
went first left the worker's warm shutdown failing with ConnectionError. It is stopped after the others.

Settings come from the environment as for any other process; ``WEB_HOST``/``WEB_PORT`` choose where the
web server listens (default 127.0.0.1:8000).
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import django
import honcho.manager
from honcho.manager import Manager
from honcho.printer import Printer

_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _redis_command(broker_url: str, data_dir: str) -> list[str] | None:
    """The redis-server to start, or None when the broker is elsewhere or already running."""
    parts = urlsplit(broker_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if parts.scheme != "redis" or host not in _LOCAL_HOSTS:
        print(f"runstack: broker {host}:{port} is not local; not starting redis-server", flush=True)
        return None
    if _answers(host, port):
        print(f"runstack: something already listens on {host}:{port}; using it as the broker", flush=True)
        return None
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("runstack: redis-server is not installed; run `make run` (it installs it) or set CELERY_BROKER_URL")
    redis_dir = os.path.join(data_dir, "redis")
    os.makedirs(redis_dir, exist_ok=True)
    # AOF and noeviction: queued tasks survive a restart and are never dropped to make room.
    return [binary, "--bind", host, "--port", str(port), "--dir", redis_dir, "--appendonly", "yes",
            "--maxmemory-policy", "noeviction", "--save", "", "--logfile", os.path.join(redis_dir, "redis.log")]


@contextmanager
def _redis(argv: list[str] | None, broker_url: str) -> Iterator[None]:
    if argv is None:
        yield
        return
    parts = urlsplit(broker_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    # A session of its own: the terminal's Ctrl-C reaches web and worker, not the broker they still need.
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not _answers(host, port):
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"runstack: redis-server did not start; see {argv[argv.index('--logfile') + 1]}")
            time.sleep(0.1)
        print(f"runstack: redis-server on {host}:{port} (pid {process.pid})", flush=True)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        print("runstack: redis-server stopped", flush=True)


def web_command(*, bin_dir: str, bind: str, workers: int, access_log: bool = True) -> list[str]:
    """gunicorn serving the ASGI app through uvicorn workers (see ``mediastore.asgi_worker``): the live stream
    is an async view; the DRF views and pages run in threads as under WSGI."""
    return [os.path.join(bin_dir, "gunicorn"), "mediastore.asgi:application",
            "-k", "mediastore.asgi_worker.UvicornWorker", "--bind", bind, "--workers", str(workers),
            # Prometheus multiprocess mode for the workers' metrics (see mediastore/gunicorn_conf.py).
            "-c", os.path.join(os.path.dirname(os.path.abspath(__file__)), "gunicorn_conf.py"),
            *(["--access-logfile", "-"] if access_log else [])]


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mediastore.settings")
    django.setup()
    from django.conf import settings

    web_host = os.environ.get("WEB_HOST", "127.0.0.1")
    web_port = os.environ.get("WEB_PORT", "8000")
    bin_dir = os.path.dirname(sys.executable)
    commands: dict[str, list[str]] = {}
    commands["web"] = web_command(bin_dir=bin_dir, bind=f"{web_host}:{web_port}", workers=2)
    celery_worker = [os.path.join(bin_dir, "celery"), "-A", "mediastore", "worker", "-P", "gevent"]
    commands["worker"] = [*celery_worker, "-c", str(settings.CELERY_WORKER_CONCURRENCY), "-Q", "celery",
                          "--loglevel", "INFO"]
    # Webhook deliveries on a worker of their own: a slow receiver takes no download's slot.
    commands["webhooks"] = [*celery_worker, "-c", "50", "-Q", settings.WEBHOOK_QUEUE, "-n", "webhooks@%h",
                            "--loglevel", "INFO"]
    print(f"runstack: web on http://{web_host}:{web_port}/ (admin at /admin/); Ctrl-C stops everything",
          flush=True)

    # honcho SIGKILLs whatever still runs 5 s after Ctrl-C; the worker's warm shutdown needs its grace
    # period (running jobs finish or are handed back) plus a broker poll, so it gets that much more.
    honcho.manager.KILL_WAIT = int(settings.MEDIA_SHUTDOWN_GRACE) + 20
    manager = Manager(Printer(sys.stdout))
    for name, argv in commands.items():
        # honcho runs a shell command line; every argument is quoted, nothing untrusted goes in.
        manager.add_process(name, shlex.join(argv), env=dict(os.environ))
    with _redis(_redis_command(settings.CELERY_BROKER_URL, str(settings.DATA_DIR)), settings.CELERY_BROKER_URL):
        manager.loop()
    sys.exit(manager.returncode)


if __name__ == "__main__":
    main()
