"""POST /api/v1/media/store under 32 concurrent clients vs a trivial authenticated DRF view (GET /api/v1/me),
on gunicorn with real Redis and SQLite, on the same server in one run.

Both endpoints are warmed first (a process's first request of a kind pays for imports and connections, which
is not the steady state being compared), then measured in alternating rounds (trivial, store, trivial, …), so
that a drift of the machine (the other engineers' work on the same 2 cores, the SQLite file growing) falls on
both alike. p50/p99 and throughput are over all rounds of an endpoint; the note holds each round's raw figures.
Each round's clients open new keep-alive connections, and how they fall on the 4 workers is chance (a uvicorn
worker accepts every connection waiting when it wakes): 17/8/4/3 in one round, 10/9/7/6 in the next. A busy
worker's clients wait longer, on both endpoints alike, so each round also reports the split.
The gunicorn workers' CPU per request (user + system, from /proc) is reported too: it is what the throughput
follows on these 2 shared cores, and moves less from round to round than the throughput does.
Acceptance (issue 16): store p99 <= 1.5x and throughput >= 0.7x the trivial view's.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests

from benchmarks.common import Result, cpu_seconds, gunicorn_server, scratch_dir
from tests.harness.processes import descendants_of, open_fds

CLIENTS = 32
WARM_SECONDS = 2.0
ROUND_SECONDS = 4.0
ROUNDS = 3
PUBLIC_URL = "http://93.184.216.34/video.mp4"  # a literal global address: validation needs no DNS


@dataclass
class _Endpoint:
    method: str
    path: str
    body: dict[str, str] | None
    latencies: list[float] = field(default_factory=list)
    rounds: list[tuple[int, float, float]] = field(default_factory=list)  # (requests, p50 ms, p99 ms)
    splits: list[list[int]] = field(default_factory=list)  # the round's connections per worker, busiest first
    cpu: list[tuple[float, float]] = field(default_factory=list)  # the server's (user, system) ms per request
    failures: Counter[int] = field(default_factory=Counter)

    @property
    def seconds(self) -> float:
        return ROUND_SECONDS * len(self.rounds)


def _load(endpoint: _Endpoint, base: str, token: str, seconds: float) -> tuple[list[float], Counter[int]]:
    latencies: list[float] = []
    failures: Counter[int] = Counter()
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Token {token}"
        mine: list[float] = []
        failed: Counter[int] = Counter()
        while time.monotonic() < stop:
            started = time.perf_counter()
            response = session.request(endpoint.method, base + endpoint.path, json=endpoint.body, timeout=30)
            mine.append(time.perf_counter() - started)
            if response.status_code >= 400:
                failed[response.status_code] += 1
        session.close()
        with lock:
            latencies.extend(mine)
            failures.update(failed)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, failures


def _server_cpu(master: int) -> tuple[float, float]:
    """User and system CPU seconds of gunicorn's workers so far (the master serves no request)."""
    user = system = 0.0
    for pid in descendants_of(master):
        try:
            used = cpu_seconds(pid)
        except OSError:  # a worker that exited meanwhile
            continue
        user, system = user + used.user, system + used.system
    return user, system


def _connections_per_worker(master: int, port: int) -> list[int]:
    """How many established connections to ``port`` each gunicorn worker holds now, busiest first."""
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 01: ESTABLISHED
                established.add(f"socket:[{fields[9]}]")
    counts = []
    for pid in descendants_of(master):
        try:
            counts.append(sum(target in established for target in open_fds(pid)))
        except OSError:  # a worker that exited meanwhile
            counts.append(0)
    return sorted(counts, reverse=True)


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000


def run(*, database_url: str) -> list[Result]:
    from django.contrib.auth import get_user_model

    from tests.harness.tokens import api_token

    user, _ = get_user_model().objects.get_or_create(username="bench-api")
    token = api_token(user)
    trivial = _Endpoint("GET", "/me", None)
    store = _Endpoint("POST", "/media/store", {"url": PUBLIC_URL})
    with scratch_dir("api-store") as tmp, gunicorn_server(database_url=database_url, workdir=Path(tmp)) as server:
        base = f"http://127.0.0.1:{server.port}/api/v1"
        warm_failures: Counter[str] = Counter()
        for endpoint in (trivial, store):
            # Not timed, but a failure here is still a failure: a fresh process's first requests are where a
            # race in lazy set-up shows (a 500 from the metrics' first registration did).
            _, failures = _load(endpoint, base, token, WARM_SECONDS)
            warm_failures.update({f"{endpoint.path} {code}": n for code, n in failures.items()})
        for _ in range(ROUNDS):
            for endpoint in (trivial, store):
                before = _server_cpu(server.pid)
                midway: list[list[int]] = []  # the split once every client has connected
                timer = threading.Timer(ROUND_SECONDS / 2, lambda found=midway: found.append(
                    _connections_per_worker(server.pid, server.port)))
                timer.start()
                latencies, failures = _load(endpoint, base, token, ROUND_SECONDS)
                timer.join()
                endpoint.splits += midway
                after = _server_cpu(server.pid)
                endpoint.latencies += latencies
                endpoint.failures.update(failures)
                endpoint.rounds.append((len(latencies), _p(latencies, 50), _p(latencies, 99)))
                endpoint.cpu.append(((after[0] - before[0]) / len(latencies) * 1000,
                                     (after[1] - before[1]) / len(latencies) * 1000))
        log = (Path(tmp) / "gunicorn.log").read_text(errors="replace")
    if store.failures or trivial.failures or warm_failures:
        # Shown, not raised: the figures of a run with a few failures still say something; the note says how many.
        print(f"bench_api_store: failed requests by status, store {dict(store.failures)}, "
              f"trivial {dict(trivial.failures)}, warm-up {dict(warm_failures)}; server log tail:\n{log[-3000:]}",
              file=sys.stderr)

    def raw(endpoint: _Endpoint) -> str:
        return "; ".join(f"{n / ROUND_SECONDS:.0f}/s p50 {p50:.1f} p99 {p99:.1f} conns {'/'.join(map(str, split))}"
                         for (n, p50, p99), split in zip(endpoint.rounds, endpoint.splits, strict=True))

    print(f"bench_api_store rounds (req/s, ms): store: {raw(store)} | GET /me: {raw(trivial)}", file=sys.stderr)

    def cpu(endpoint: _Endpoint) -> float:
        return statistics.median(user + system for user, system in endpoint.cpu)

    def raw_cpu(endpoint: _Endpoint) -> str:
        return "; ".join(f"{user:.2f} + {system:.2f}" for user, system in endpoint.cpu)

    note = (f"{CLIENTS} clients, warmed {WARM_SECONDS:g}s each, then {ROUNDS} interleaved rounds x {ROUND_SECONDS:g}s "
            "each; gunicorn -w 4 (uvicorn), SQLite + Redis; client on the same 2 cores")
    return [
        Result("api_store", "store p50 latency, ms", _p(store.latencies, 50), "GET /me p50 latency, ms",
               _p(trivial.latencies, 50), "ms", f"{note}; rounds, store: {raw(store)}"),
        Result("api_store", "store p99 latency, ms", _p(store.latencies, 99), "GET /me p99 latency, ms",
               _p(trivial.latencies, 99), "ms", f"accept: ratio <= 1.5; rounds, GET /me: {raw(trivial)}"),
        Result("api_store", "store throughput, req/s", len(store.latencies) / store.seconds,
               "GET /me throughput, req/s", len(trivial.latencies) / trivial.seconds, "req/s",
               f"accept: ratio >= 0.7; {len(store.latencies)} stores, {len(trivial.latencies)} trivial requests; "
               f"failed: store {dict(store.failures)}, trivial {dict(trivial.failures)}, "
               f"warm-up {dict(warm_failures)}"),
        # What the throughput follows, with less of the machine's noise: the workers' CPU per answer.
        Result("api_store", "store server CPU, ms per request", cpu(store), "GET /me server CPU, ms per request",
               cpu(trivial), "ms", f"median of the rounds; lower is better; each round, user + system ms: "
               f"store {raw_cpu(store)} | GET /me {raw_cpu(trivial)}"),
    ]
