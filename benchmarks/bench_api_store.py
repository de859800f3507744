"""POST /api/v1/media/store under 32 concurrent clients vs a trivial authenticated DRF view (GET /api/v1/me),
on gunicorn with real Redis and SQLite, in one run. p50/p99 latency and throughput for each."""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import requests

from benchmarks.common import Result, gunicorn_server, scratch_dir

CLIENTS = 32
SECONDS = 8.0
PUBLIC_URL = "http://93.184.216.34/video.mp4"  # a literal global address: validation needs no DNS


def _load(method: str, url: str, token: str, body: dict[str, str] | None) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.monotonic() + SECONDS

    def client() -> None:
        nonlocal errors
        session = requests.Session()
        session.headers["Authorization"] = f"Token {token}"
        mine: list[float] = []
        failed = 0
        while time.monotonic() < stop:
            started = time.perf_counter()
            response = session.request(method, url, json=body, timeout=30)
            mine.append(time.perf_counter() - started)
            failed += response.status_code >= 400
        session.close()
        with lock:
            latencies.extend(mine)
            errors += failed

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000


def run(*, database_url: str) -> list[Result]:
    from django.contrib.auth import get_user_model

    from tests.harness.tokens import api_token

    user, _ = get_user_model().objects.get_or_create(username="bench-api")
    token = api_token(user)
    with scratch_dir("api-store") as tmp, gunicorn_server(database_url=database_url, workdir=Path(tmp)) as port:
        base = f"http://127.0.0.1:{port}/api/v1"
        _load("GET", f"{base}/me", token, None)  # warm-up
        trivial, trivial_errors = _load("GET", f"{base}/me", token, None)
        store, store_errors = _load("POST", f"{base}/media/store", token, {"url": PUBLIC_URL})
    if store_errors or trivial_errors:
        raise RuntimeError(f"{store_errors} store and {trivial_errors} trivial requests failed")
    note = f"{CLIENTS} clients x {SECONDS:g}s, gunicorn -w 4, SQLite + Redis; client on the same 2 cores"
    return [
        Result("api_store", "store p50 latency, ms", _p(store, 50), "GET /me p50 latency, ms", _p(trivial, 50),
               "ms", note),
        Result("api_store", "store p99 latency, ms", _p(store, 99), "GET /me p99 latency, ms", _p(trivial, 99),
               "ms", ""),
        Result("api_store", "store throughput, req/s", len(store) / SECONDS, "GET /me throughput, req/s",
               len(trivial) / SECONDS, "req/s", f"{len(store)} stored scenes, {len(trivial)} trivial requests"),
    ]
