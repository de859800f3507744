"""Run by ``bench_api_instructions`` under callgrind: the Django ASGI app called in process as uvicorn calls it,
GET /api/v1/me and POST /api/v1/media/store in turn, with a callgrind dump after each block of requests.

Argument: how many requests per block. Needs the benchmark's environment (``DATA_DIR`` with a migrated
database, ``DJANGO_SETTINGS_MODULE``); starts its own redis-server for the publish.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROUNDS = 4
WARM = 20
ENDPOINTS = {"me": ("GET", "/api/v1/me", None),
             "store": ("POST", "/api/v1/media/store", {"url": "http://93.184.216.34/video.mp4"})}


def _dump(label: str) -> None:
    # Each dump holds the instructions since the one before: a block of requests of one kind.
    subprocess.run(["callgrind_control", f"--dump={label}", str(os.getpid())], check=True, capture_output=True)


async def _call(application: Any, token: str, method: str, path: str, body: dict[str, str] | None) -> int:
    raw = json.dumps(body).encode() if body is not None else b""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Token {token}".encode()),
                         (b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
             "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 8000)}
    sent = False
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.sleep(3600)  # the client never disconnects
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await application(scope, receive, send)
    return status[0]


def main(per_block: int) -> None:
    from tests.harness.services import redis_server

    with tempfile.TemporaryDirectory(prefix="api-instructions-") as folder, \
            redis_server(Path(folder) / "redis") as broker_url:
        os.environ["CELERY_BROKER_URL"] = broker_url
        import django

        django.setup()
        from django.contrib.auth import get_user_model

        from mediastore.asgi import application
        from mediastore.warmup import warm_web_process
        from tests.harness.tokens import api_token

        warm_web_process()
        user, _ = get_user_model().objects.get_or_create(username="bench-api-instructions")
        token = api_token(user)
        loop = asyncio.new_event_loop()

        def block(name: str, count: int) -> None:
            for _ in range(count):
                status = loop.run_until_complete(_call(application, token, *ENDPOINTS[name]))
                if status >= 400:
                    raise SystemExit(f"{name}: HTTP {status}")

        for name in ENDPOINTS:
            block(name, WARM)
        _dump("warm")
        for round_ in range(ROUNDS):
            for name in ENDPOINTS:
                block(name, per_block)
                _dump(f"{name}-{round_}")


if __name__ == "__main__":
    main(int(sys.argv[1]))
