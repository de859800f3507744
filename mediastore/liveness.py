"""Is every worker still taking work? Each worker reports to the broker; /readyz, ``check_pipeline`` and the
container healthcheck read the reports.

A worker writes ``mediastore:worker:<hostname>`` (JSON, expiring after ``REPORT_TTL``) every
``REPORT_INTERVAL`` seconds: when it last received a task, how many it runs and how many it may run. It is
*stalled* when the queue has not been empty for ``MEDIA_WORKER_STALL_AFTER`` seconds, it has free slots, and
it has received nothing in that time; it is *gone* when its report expired (a frozen process reports
nothing). Only the Redis broker is supported; with another broker the checks say so and pass.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings

KEY_PREFIX = "mediastore:worker:"
REPORT_INTERVAL = 10.0
REPORT_TTL = 60
# kombu's Redis transport keeps one list per priority step of a queue: "celery", "celery\x06\x163", …
_PRIORITY_SEPARATOR = "\x06\x16"


def _redis() -> Any | None:
    return broker_redis(timeout=5)


def broker_redis(*, timeout: float) -> Any | None:
    """A client of the broker's Redis whose every call gives up after ``timeout`` s; None for another broker."""
    from mediastore.celery import app

    url = str(app.conf.broker_url)
    if not url.startswith(("redis://", "rediss://")):
        return None
    import redis

    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def default_hostname() -> str:
    return f"celery@{socket.gethostname()}"


class Reporter:
    """Kept by the worker process: ``received()`` on every task it receives, ``report()`` periodically."""

    def __init__(self, *, hostname: str, concurrency: int, queues: tuple[str, ...] = ("celery",)) -> None:
        self.hostname = hostname
        self.concurrency = concurrency
        self.queues = queues  # the ones it consumes: a webhooks worker is not stalled by a downloads backlog
        self.started = time.time()
        self.last_received: float | None = None
        self.last_full: float | None = None  # the last time every slot was busy: nothing could be taken
        # Since when the worker has seen tasks waiting. A queue that filled a moment ago is no sign of a stall
        # in a worker that was idle for an hour because there was nothing to do.
        self.queued_since: float | None = None
        self._client = _redis()

    def received(self) -> None:
        self.last_received = time.time()

    def report(self, *, active: int) -> None:
        if active >= self.concurrency:
            self.last_full = time.time()
        if self._client is None:
            return
        now = time.time()
        try:
            waiting = sum(queue_length(self._client, queue) for queue in self.queues)
        except Exception:
            # The broker is away: how long tasks have waited is unknown, so counting starts again when it
            # is back (else a worker that took nothing because nothing could be taken would read as stalled).
            self.queued_since = None
            raise
        self.queued_since = (self.queued_since or now) if waiting else None
        state = {"hostname": self.hostname, "pid": os.getpid(), "at": now, "started": self.started,
                 "last_received": self.last_received, "last_full": self.last_full, "active": active,
                 "concurrency": self.concurrency, "queued_since": self.queued_since}
        self._client.set(KEY_PREFIX + self.hostname, json.dumps(state), ex=REPORT_TTL)

    def forget(self) -> None:
        """At a clean stop: a worker that left on purpose is not reported as gone."""
        if self._client is not None:
            self._client.delete(KEY_PREFIX + self.hostname)
            self._client.close()


@dataclass(frozen=True)
class WorkerHealth:
    hostname: str
    healthy: bool
    reason: str


def _queue_keys(queue: str) -> list[str]:
    return [queue] + [f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in (3, 6, 9)]


def queue_length(client: Any, queue: str = "celery") -> int:
    return sum(int(client.llen(key)) for key in _queue_keys(queue))


def broker_task_ids(queue: str = "celery") -> set[str] | None:
    """The ids of the tasks the broker holds: waiting in the queue, or delivered and not yet acknowledged
    (running, or held by a worker until their countdown). None when the broker is not Redis."""
    client = _redis()
    if client is None:
        return None
    try:
        payloads: list[Any] = []
        for key in _queue_keys(queue):
            payloads += [json.loads(raw) for raw in client.lrange(key, 0, -1)]
        # kombu keeps unacknowledged messages in the "unacked" hash as [message, exchange, routing key].
        payloads += [json.loads(raw)[0] for raw in client.hvals("unacked")]
        return {str(p.get("headers", {}).get("id")) for p in payloads if isinstance(p, dict)}
    finally:
        client.close()


def _judge(state: dict[str, Any], *, queued: int, now: float) -> WorkerHealth:
    stall_after = settings.MEDIA_WORKER_STALL_AFTER
    hostname = state["hostname"]
    if now - state["at"] > REPORT_INTERVAL * 2.5:
        return WorkerHealth(hostname, False, f"has not reported for {now - state['at']:.0f} s")
    # A worker whose slots were all busy could take nothing: it counts as having taken work then. Idle time
    # is measured when the report was written, so the last report of a worker that died is not mistaken for
    # a stall while it ages; it becomes "has not reported" instead.
    last = max(state["last_received"] or 0, state.get("last_full") or 0, state["started"])
    idle = state["at"] - last
    waited = state["at"] - (state.get("queued_since") or state["at"])
    if queued and state["active"] < state["concurrency"] and min(idle, waited) > stall_after:
        free = state["concurrency"] - state["active"]
        return WorkerHealth(hostname, False, f"stalled: {queued} task(s) queued and {free} free slot(s), but "
                                             f"nothing received for {idle:.0f} s")
    return WorkerHealth(hostname, True, f"{state['active']}/{state['concurrency']} busy, last task {idle:.0f} s ago")


def workers_health(*, hostname: str | None = None) -> tuple[int, list[WorkerHealth]] | None:
    """(tasks queued, one verdict per reporting worker), or None when the broker is not Redis."""
    client = _redis()
    if client is None:
        return None
    try:
        queued = queue_length(client)
        keys = [KEY_PREFIX + hostname] if hostname else list(client.scan_iter(match=KEY_PREFIX + "*", count=100))
        now = time.time()
        verdicts = []
        for key in keys:
            raw = client.get(key)
            if raw is None:
                if hostname:
                    verdicts.append(WorkerHealth(hostname, False, "no report: the worker is gone or frozen"))
                continue
            verdicts.append(_judge(json.loads(raw), queued=queued, now=now))
        return queued, verdicts
    finally:
        client.close()


def check_workers() -> str:
    """For /readyz and check_pipeline: raises when a worker is stalled or gone, or tasks wait with no worker."""
    found = workers_health()
    if found is None:
        return "worker liveness needs the Redis broker; not checked"
    queued, verdicts = found
    bad = [f"{v.hostname} {v.reason}" for v in verdicts if not v.healthy]
    if bad:
        raise RuntimeError("; ".join(bad))
    if queued and not verdicts:
        raise RuntimeError(f"{queued} task(s) queued and no worker reporting")
    return f"{len(verdicts)} worker(s) taking work, {queued} task(s) queued"
