"""Live push, the writing side: every announced scene change is added to one Redis stream, which each web
process reads for its Server-Sent Events (``scenes.live_hub``, ``scenes.live_api``).

- **One stream**, ``STREAM``, trimmed to about ``LIVE_STREAM_MAXLEN`` entries. One entry per announcement,
  with one field, ``event``: the JSON of ``{id, transition, status, owner_id, project_id, scene}`` (``scene``
  as the API shows it). The entry's id is the event id clients resume from.
- **Never in a transition's way.** A publish gets short socket timeouts and no retries; a failure is logged
  and publishing is skipped for ``COOLDOWN`` seconds (``Breaker``), so a Redis outage costs one short
  timeout per cooldown, not one per transition. What is skipped is lost to live clients only: the database
  stays the truth, and the status page falls back to polling while its stream is down.
- **Web, admin, commands** (the sync ``lifecycle.announce``): XADD at once with a sync client.
- **The gevent worker**: the receiver hands the entry to the bridge's asyncio loop and returns; one task on
  that loop adds the entries in order with ``redis.asyncio`` (a client that lives with the loop,
  ``bridge.shared``). A transition of a run, or of the sweeper, never waits for Redis.

The receiver is a sync function although the worker's side is async: Django runs an async receiver of a
sync ``send_robust`` through ``async_to_sync``, which makes a throwaway event loop for every web transition
and fails inside gevent greenlets (the sweeper's sync transitions: "asyncio.run() cannot be called from a
running event loop", 19 of 20 concurrent calls in a trial). A sync receiver is called directly by
``announce`` and through ``sync_to_async`` by ``aannounce``; ``lifecycle`` stays as it is.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from django.conf import settings
from django.dispatch import receiver

from downloads import bridge
from scenes.lifecycle import Announcement, transitioned

logger = logging.getLogger(__name__)

STREAM = "mediastore:scene-events"
FIELD = "event"
TIMEOUT = 0.5  # seconds for one publish (connect, send, answer): loopback or LAN Redis answers in < 1 ms
COOLDOWN = 5.0  # seconds without publishing after a failure
WORKER_QUEUE = 10_000  # entries the worker may hold while Redis is slow; beyond, they are dropped (logged)


def entry(announcement: Announcement) -> dict[str, str]:
    """The stream entry of one announcement."""
    return {FIELD: json.dumps({
        "id": announcement.scene_id, "transition": announcement.transition, "status": announcement.status,
        "owner_id": announcement.owner_id, "project_id": announcement.project_id, "scene": announcement.scene,
    }, separators=(",", ":"), default=str)}


class Breaker:
    """Closed until a publish fails; then open (publishes are skipped) for ``cooldown`` seconds."""

    def __init__(self, *, cooldown: float = COOLDOWN, clock: Callable[[], float] = time.monotonic) -> None:
        self._cooldown = cooldown
        self._clock = clock
        self._open_until = 0.0
        self.skipped = 0

    def allows(self) -> bool:
        if self._clock() < self._open_until:
            self.skipped += 1
            return False
        return True

    def failed(self, error: BaseException) -> None:
        # Races between threads only make two failures log twice; nothing needs a lock here.
        self._open_until = self._clock() + self._cooldown
        logger.warning("live push: Redis did not take an event (%s); events are not published for %.0f s "
                       "(%d skipped before this)", error or type(error).__name__, self._cooldown, self.skipped)
        self.skipped = 0


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError)


# --- The sync side (web, admin, commands) -----------------------------------------------------------------


class SyncPublisher:
    """XADD now, with a sync client shared by the process's threads (redis-py's pool is thread-safe)."""

    def __init__(self, url: str) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.client = redis.Redis.from_url(url, socket_connect_timeout=TIMEOUT, socket_timeout=TIMEOUT,
                                           retry=Retry(NoBackoff(), 0), max_connections=32)
        self.breaker = Breaker()

    def publish(self, fields: dict[str, str]) -> None:
        if not self.breaker.allows():
            return
        try:
            self.client.xadd(STREAM, fields, maxlen=settings.LIVE_STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]
        except _redis_errors() as exc:
            self.breaker.failed(exc)

    def position(self) -> str | None:
        """The id of the newest event ("0-0" for an empty stream); None when Redis cannot say."""
        if not self.breaker.allows():
            return None
        try:
            newest = self.client.xrevrange(STREAM, count=1)
        except _redis_errors() as exc:
            self.breaker.failed(exc)
            return None
        if not newest:
            return "0-0"
        entry_id = newest[0][0]
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


_sync_publishers: dict[str, SyncPublisher] = {}
_sync_lock = threading.Lock()


def sync_publisher() -> SyncPublisher:
    """This process's publisher for ``REDIS_URL`` (one per URL: tests point it elsewhere)."""
    url = settings.REDIS_URL
    with _sync_lock:
        if url not in _sync_publishers:
            _sync_publishers[url] = SyncPublisher(url)
        return _sync_publishers[url]


# --- The worker's side: a queue on the bridge's loop, drained by one task -----------------------------------


class LoopPublisher:
    """Entries handed over from any greenlet or thread, added to the stream in order by one task on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, url: str) -> None:
        self._loop = loop
        self._url = url
        self._queue: asyncio.Queue[dict[str, str]] | None = None  # made on the loop
        self._task: asyncio.Task[None] | None = None
        self.breaker = Breaker()
        self.dropped = 0

    def submit(self, fields: dict[str, str]) -> None:
        """Thread-safe and non-blocking; call_soon_threadsafe keeps the callers' order."""
        self._loop.call_soon_threadsafe(self._put, fields)

    def _put(self, fields: dict[str, str]) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue(WORKER_QUEUE)
            self._task = self._loop.create_task(self._drain(self._queue), name="live push")
        try:
            self._queue.put_nowait(fields)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped in {1, 100, 10_000} or self.dropped % 100_000 == 0:
                logger.warning("live push: %d events dropped, Redis does not keep up", self.dropped)

    async def _drain(self, queue: asyncio.Queue[dict[str, str]]) -> None:
        # The client is a shared one of the loop: it is closed with the loop's other clients, after the
        # entries still queued then were added (see _client).
        while True:
            fields = await queue.get()
            client = await bridge.shared(f"live-push:{self._url}", lambda: _client(self._url, queue, self))
            await self._add(client, fields)

    async def _add(self, client: Any, fields: dict[str, str]) -> None:
        if not self.breaker.allows():
            return
        try:
            await client.xadd(STREAM, fields, maxlen=settings.LIVE_STREAM_MAXLEN, approximate=True)
        except _redis_errors() as exc:
            self.breaker.failed(exc)


@asynccontextmanager
async def _client(url: str, queue: asyncio.Queue[dict[str, str]], publisher: LoopPublisher) -> AsyncIterator[Any]:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    client = aioredis.Redis.from_url(url, socket_connect_timeout=TIMEOUT, socket_timeout=TIMEOUT,
                                     retry=Retry(NoBackoff(), 0))
    try:
        yield client
    finally:
        if publisher._task is not None:
            publisher._task.cancel()
        # The worker is stopping: what its last transitions announced (jobs handed back) still goes out.
        with suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                while not queue.empty():
                    await publisher._add(client, queue.get_nowait())
        await client.aclose()


_loop_publisher: LoopPublisher | None = None


def _worker_publisher() -> LoopPublisher | None:
    """The gevent worker's publisher, once its bridge loop runs; None elsewhere."""
    global _loop_publisher
    loop = bridge.bridge.loop
    if loop is None or not bridge.gevent_is_active():
        return None
    if _loop_publisher is None or _loop_publisher._loop is not loop:
        _loop_publisher = LoopPublisher(loop, settings.REDIS_URL)
    return _loop_publisher


def publish(announcement: Announcement) -> None:
    """Add the announcement to the stream (or hand it to the worker's loop to add); never raises."""
    fields = entry(announcement)
    worker = _worker_publisher()
    if worker is not None:
        worker.submit(fields)
    else:
        sync_publisher().publish(fields)


def stream_position() -> str | None:
    """The newest event id now: a page rendered now resumes its stream from there, so the changes between
    the render and the stream's start are not missed. None when Redis is unavailable."""
    return sync_publisher().position()


@receiver(transitioned, dispatch_uid="scenes.live.publish")
def _publish(*, announcement: Announcement, **_: Any) -> None:
    publish(announcement)
