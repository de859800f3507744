"""200 open live streams on ONE web process (gunicorn, one uvicorn worker) against the polling page they
replace, measured in the same run on the same process.

- Live: 200 EventSource-like clients (one person's 200 tabs: every change goes to all 200) stay connected;
  the web worker's RSS and CPU with them idle, then while changes are published at ``RATE``/s through
  ``scenes.live.publish`` (what a transition does after its commit). Latency: from the publish to the
  message's arrival at each client, p50 and p99 over every delivery.
- Anchor, polling: the same 200 clients each ask for their processing row once a second
  (``GET /scenes/<id>/row``, as every unfinished row did before); the worker's CPU and the rate it kept up.
  A poll sees a change on average half an interval after it happened, plus the poll's own response time:
  that is the polling "latency" next to the stream's.

Clients are raw asyncio connections in this process, on the same 2 cores as the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import Result, cpu_seconds, scratch_dir

CLIENTS = 200
RATE = 10  # changes per second while measuring the live side
SECONDS = 10.0
POLL_INTERVAL = 1.0


def _cpu_seconds(pid: int) -> float:
    used = cpu_seconds(pid)
    return used.user + used.system


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


async def _request(port: int, path: str, cookie: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: sessionid={cookie}\r\n"
                 "Accept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


class _Streams:
    """CLIENTS open streams; each records when every benchmark event reached it."""

    def __init__(self, port: int, cookie: str) -> None:
        self.port, self.cookie = port, cookie
        self.ready = 0
        self.arrivals: list[tuple[int, float]] = []  # (sequence, perf_counter)
        self.failures = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def _client(self) -> None:
        reader, writer = await _request(self.port, "/api/v1/scenes/events", self.cookie)
        self._writers.append(writer)
        status = await reader.readline()
        if b" 200 " not in status:
            self.failures += 1
            return
        async for raw in reader:  # chunked framing lines are skipped: they never start with "data: "
            if raw.startswith(b"data: {\"last_event_id\""):
                self.ready += 1
            elif raw.startswith(b"data: "):
                now = time.perf_counter()
                self.arrivals.append((json.loads(raw[6:])["scene"]["bench_seq"], now))

    async def open(self) -> list[asyncio.Task[None]]:
        tasks = []
        for _ in range(CLIENTS):
            tasks.append(asyncio.create_task(self._client()))
            await asyncio.sleep(0.005)  # a page load's worth of spread, not one burst
        await _wait_for(lambda: self.ready + self.failures >= CLIENTS, seconds=60)
        if self.ready != CLIENTS:
            raise RuntimeError(f"{self.ready} of {CLIENTS} streams ready, {self.failures} refused")
        return tasks

    def close(self, tasks: list[asyncio.Task[None]]) -> None:
        for writer in self._writers:
            writer.close()
        for task in tasks:
            task.cancel()


def _publish(announcements: list[object], published: dict[int, float]) -> None:
    from scenes import live

    for seq, announcement in enumerate(announcements):
        due = time.perf_counter()
        published[seq] = due
        live.publish(announcement)  # type: ignore[arg-type]
        time.sleep(max(0.0, 1 / RATE - (time.perf_counter() - due)))


async def _poll(port: int, cookie: str, paths: list[str], seconds: float) -> list[float]:
    """Each client asks for its row every POLL_INTERVAL on a kept-alive connection; the response times."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def client(path: str, offset: float) -> None:
        await asyncio.sleep(offset)
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: sessionid={cookie}\r\nHX-Request: true\r\n\r\n"
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while (started := time.perf_counter()) < stop:
                if connection is None:  # a sync worker closes every connection after its answer
                    connection = await asyncio.open_connection("127.0.0.1", port)
                reader, writer = connection
                writer.write(request.encode())
                await writer.drain()
                length, close = 0, False
                while (line := await reader.readline()) not in {b"\r\n", b""}:
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                    close = close or line.lower().startswith(b"connection: close")
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if close:
                    writer.close()
                    connection = None
                await asyncio.sleep(max(0.0, POLL_INTERVAL - (time.perf_counter() - started)))
        finally:
            if connection is not None:
                connection[1].close()

    await asyncio.gather(*(client(path, i * POLL_INTERVAL / len(paths)) for i, path in enumerate(paths)))
    return latencies


async def _wait_for(condition: Callable[[], bool], *, seconds: float) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000


def run(*, database_url: str) -> list[Result]:
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    from scenes import services
    from scenes.models import Scene
    from tests.harness.services import WebServer, redis_server, worker_environment

    user, _ = get_user_model().objects.get_or_create(username="bench-sse")
    scenes = []
    for index in range(CLIENTS):
        scene = services.scene_create(owner=user, source_url=f"http://93.184.216.34/{index}.mp4")
        Scene.objects.filter(pk=scene.pk).update(status=Scene.Status.PROCESSING, stage=Scene.Stage.DOWNLOADING,
                                                 progress=42)
        scenes.append(Scene.objects.get(pk=scene.pk))
    client = Client()
    client.force_login(user)
    cookie = client.cookies["sessionid"].value

    with scratch_dir("sse") as tmp, redis_server(Path(tmp) / "redis") as redis_url:
        settings.REDIS_URL = redis_url  # this process publishes like a web or worker process would
        # The same key as this process: the session it made must be valid there.
        env = worker_environment(broker_url=redis_url, database_url=database_url, data_dir=Path(tmp) / "data",
                                 extra={"DJANGO_SECRET_KEY": settings.SECRET_KEY})
        web = WebServer(env=env, log_path=Path(tmp) / "web.log")
        try:
            web.wait_ready()
            [pid] = web.worker_pids()
            figures = asyncio.run(_measure(web.port, pid, cookie, scenes))
        finally:
            web.stop()
        figures.update(_wsgi_polling(env, Path(tmp), cookie, scenes))
    return _results(**figures)


def _wsgi_polling(env: dict[str, str], tmp: Path, cookie: str, scenes: list[object]) -> dict[str, float]:
    """The polling page on one sync WSGI worker, the server before this change (access log on, as it was)."""
    import sys

    from tests.harness.processes import ServiceProcess, free_port, port_open, wait_until
    from tests.harness.services import REPO_ROOT

    port = free_port()
    server = ServiceProcess([str(Path(sys.executable).with_name("gunicorn")), "mediastore.wsgi:application",
                             "--bind", f"127.0.0.1:{port}", "--workers", "1", "--access-logfile", "-"],
                            log_path=tmp / "wsgi.log", env=env, cwd=REPO_ROOT)
    try:
        wait_until(lambda: port_open(port) and "Booting worker" in server.log(), timeout=30, what="gunicorn (WSGI)")
        [pid] = [int(p) for p in Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()]
        paths = [f"/scenes/{scene.pk}/row" for scene in scenes]  # type: ignore[attr-defined]
        asyncio.run(_poll(port, cookie, paths[:1], 1.0))  # warm-up
        cpu_before = _cpu_seconds(pid)
        latencies = asyncio.run(_poll(port, cookie, paths, SECONDS))
        cpu = (_cpu_seconds(pid) - cpu_before) / SECONDS
    finally:
        server.stop()
    return {"wsgi_poll_cpu": cpu, "wsgi_poll_rate": len(latencies) / SECONDS, "wsgi_poll_p50": _pct(latencies, 50)}


async def _measure(port: int, pid: int, cookie: str, scenes: list[object]) -> dict[str, float]:
    from scenes.lifecycle import snapshot

    # Warm the worker (imports, first queries) before anything is measured.
    await _poll(port, cookie, [f"/scenes/{scenes[0].pk}/row"], 1.0)  # type: ignore[attr-defined]
    idle_rss = _rss_mib(pid)
    idle_threads = _threads(pid)

    streams = _Streams(port, cookie)
    tasks = await streams.open()
    await asyncio.sleep(2)
    open_rss, open_threads = _rss_mib(pid), _threads(pid)
    cpu_before = _cpu_seconds(pid)
    await asyncio.sleep(SECONDS)
    idle_cpu = (_cpu_seconds(pid) - cpu_before) / SECONDS

    count = int(RATE * SECONDS)
    announcements = [dataclasses.replace(a, scene={**a.scene, "bench_seq": seq})
                     for seq, a in enumerate(snapshot(scenes[i % len(scenes)], "progress") for i in range(count))]  # type: ignore[arg-type]
    published: dict[int, float] = {}
    cpu_before = _cpu_seconds(pid)
    started = time.perf_counter()
    await asyncio.to_thread(_publish, announcements, published)
    await _wait_for(lambda: len(streams.arrivals) >= count * CLIENTS, seconds=10)
    busy_seconds = time.perf_counter() - started
    busy_cpu = (_cpu_seconds(pid) - cpu_before) / busy_seconds
    busy_rss = _rss_mib(pid)
    latencies = [arrived - published[seq] for seq, arrived in streams.arrivals]
    delivered = len(latencies)
    streams.close(tasks)
    await asyncio.sleep(1)

    paths = [f"/scenes/{scene.pk}/row" for scene in scenes]  # type: ignore[attr-defined]
    cpu_before = _cpu_seconds(pid)
    poll_latencies = await _poll(port, cookie, paths, SECONDS)
    poll_cpu = (_cpu_seconds(pid) - cpu_before) / SECONDS
    return {
        "idle_rss": idle_rss, "open_rss": open_rss, "busy_rss": busy_rss, "poll_rss": _rss_mib(pid),
        "idle_threads": idle_threads, "open_threads": open_threads,
        "idle_cpu": idle_cpu, "busy_cpu": busy_cpu, "poll_cpu": poll_cpu,
        "p50": _pct(latencies, 50), "p99": _pct(latencies, 99), "delivered": delivered, "expected": count * CLIENTS,
        "poll_rate": len(poll_latencies) / SECONDS, "poll_p50": _pct(poll_latencies, 50),
        "poll_p99": _pct(poll_latencies, 99),
    }


def _results(*, idle_rss: float, open_rss: float, busy_rss: float, poll_rss: float, idle_threads: float,
             open_threads: float, idle_cpu: float, busy_cpu: float, poll_cpu: float, p50: float, p99: float,
             delivered: float, expected: float, poll_rate: float, poll_p50: float, poll_p99: float,
             wsgi_poll_cpu: float, wsgi_poll_rate: float, wsgi_poll_p50: float) -> list[Result]:
    wanted = CLIENTS / POLL_INTERVAL
    return [
        Result("sse", f"polling {CLIENTS} rows 1/s on one uvicorn worker, req/s", poll_rate,
               "the same on one sync WSGI worker (the server before), req/s", wsgi_poll_rate, "req/s",
               f"CPU {poll_cpu * 100:.0f} % vs {wsgi_poll_cpu * 100:.0f} % of a core; response p50 {poll_p50:.0f} "
               f"vs {wsgi_poll_p50:.0f} ms: the fallback's cost of the server change"),
        Result("sse", f"web CPU, {CLIENTS} streams + {RATE} changes/s, % of a core", busy_cpu * 100,
               f"polling {CLIENTS} rows 1/s, % of a core", poll_cpu * 100, "%",
               f"one uvicorn worker; {delivered:.0f}/{expected:.0f} deliveries; polling kept {poll_rate:.0f} of "
               f"{wanted:.0f} req/s"),
        Result("sse", f"web CPU, {CLIENTS} idle streams, % of a core", idle_cpu * 100,
               f"polling {CLIENTS} rows 1/s, % of a core", poll_cpu * 100, "%", "heartbeats only"),
        Result("sse", f"web requests/s, {CLIENTS} live pages", 0.0, f"{CLIENTS} polling pages, req/s", poll_rate,
               "req/s", "a live page makes one request (its stream), plus one row fetch per status change"),
        Result("sse", f"web RSS with {CLIENTS} open streams, MiB", open_rss, "web RSS, no clients, MiB", idle_rss,
               "MiB", f"{(open_rss - idle_rss) * 1024 / CLIENTS:.0f} KiB per stream; threads {idle_threads:.0f} -> "
                      f"{open_threads:.0f}; RSS after publishing {busy_rss:.1f}, after polling {poll_rss:.1f}"),
        Result("sse", "change -> client p50, ms", p50, "polling: half an interval + p50 response, ms",
               POLL_INTERVAL * 500 + poll_p50, "ms", f"poll response p50 {poll_p50:.1f} ms"),
        Result("sse", "change -> client p99, ms", p99, "polling: a whole interval + p99 response, ms",
               POLL_INTERVAL * 1000 + poll_p99, "ms", f"poll response p99 {poll_p99:.1f} ms"),
    ]
