"""Live push, the reading side: one Redis reader per web process fans the stream out to its clients.

``Hub`` (one per event loop, i.e. per uvicorn worker process) runs one task that blocks on ``XREAD`` after
the last entry it has seen, turns each entry into an ``Event`` (its SSE frame is built once, for every
client) and offers it to each ``Subscriber`` whose ``Scope`` admits it (whose owner, project and scene
match). So 200 open streams cost one blocked Redis connection, plus one short-command connection for
resumes, not 200. Any web process serves any client: every process reads the whole stream.

- **Resume.** A subscriber starts at the hub's position (the last entry it distributed). A client that
  resumes after an older id gets what lies between from ``XRANGE`` first (``replay``), then the live events,
  which all come after that position: nothing is missed or sent twice.
- **Slow clients.** Each subscriber buffers at most ``CLIENT_BUFFER`` events. One that falls that far
  behind is dropped from the hub and its stream ends with a ``lagged`` event; the browser reconnects with
  its ``Last-Event-ID`` and catches up from the stream, so nothing is lost while memory stays bounded.
- **Redis lost.** The reader stops, and every stream ends with ``unavailable``; reconnects get a 503 until
  Redis answers again (the status page polls meanwhile).
- The reader stops some seconds after its last subscriber has gone (``LINGER`` plus one ``XREAD``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import weakref
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from scenes.live import FIELD, STREAM

logger = logging.getLogger(__name__)

BLOCK_MS = 10_000  # one XREAD waits this long at most
LINGER = 5.0  # seconds a reader with no subscribers goes on (plus its last XREAD), for the next client
READ_COUNT = 500
REPLAY_PAGE = 500
CLIENT_BUFFER = 256  # events a subscriber may be behind before it is dropped
COMMAND_TIMEOUT = 2.0

PROGRESS = "progress"


def stream_key(entry_id: str) -> tuple[int, int] | None:
    """``"1700000000000-3"`` → (1700000000000, 3); None when it is no stream id."""
    millis, _, sequence = entry_id.partition("-")
    if not millis.isdigit() or (sequence and not sequence.isdigit()) or len(entry_id) > 41:
        return None
    return int(millis), int(sequence or 0)


@dataclass(frozen=True)
class Event:
    id: str
    scene_id: str
    owner_id: int | None
    project_id: str | None
    frame: bytes  # the whole SSE message

    @property
    def key(self) -> tuple[int, int]:
        return stream_key(self.id) or (0, 0)


def frame(*, event: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    lines = [f"id: {event_id}"] if event_id is not None else []
    lines += [f"event: {event}", "data: " + json.dumps(data, separators=(",", ":"))]
    return ("\n".join(lines) + "\n\n").encode()


def event_from_entry(entry_id: bytes | str, fields: dict[Any, Any]) -> Event | None:
    """An entry as clients get it: ``event: progress`` for progress writes, ``event: scene`` for every other
    change; ``data`` is ``{"transition", "scene"}``. None for an entry that is not ours."""
    event_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    raw = fields.get(FIELD.encode(), fields.get(FIELD))
    try:
        payload = json.loads(raw or b"")
        scene_id, transition, scene = str(payload["id"]), str(payload["transition"]), payload["scene"]
    except (TypeError, ValueError, KeyError):
        logger.warning("live push: stream entry %s is not an event; skipped", event_id)
        return None
    kind = PROGRESS if transition == PROGRESS else "scene"
    return Event(id=event_id, scene_id=scene_id, owner_id=payload.get("owner_id"),
                 project_id=payload.get("project_id"),
                 frame=frame(event=kind, event_id=event_id, data={"transition": transition, "scene": scene}))


@dataclass(frozen=True)
class Scope:
    """Which events a client sees: an owner's (None: everyone's, for staff who may view every scene),
    optionally of one project or one scene."""

    owner_id: int | None
    project_id: str | None = None
    scene_id: str | None = None

    def admits(self, event: Event) -> bool:
        return ((self.owner_id is None or event.owner_id == self.owner_id)
                and (self.project_id is None or event.project_id == self.project_id)
                and (self.scene_id is None or event.scene_id == self.scene_id))


LAGGED = "lagged"
UNAVAILABLE = "unavailable"
SHUTDOWN = "shutdown"


class Subscriber:
    """One client's buffer. ``offer`` is called by the hub's reader, ``next`` by the client's stream."""

    def __init__(self, scope: Scope, *, capacity: int = CLIENT_BUFFER) -> None:
        self.scope = scope
        self._capacity = capacity
        self._events: collections.deque[Event] = collections.deque()
        self._wake = asyncio.Event()
        self.ended: str | None = None

    def offer(self, event: Event) -> bool:
        """False when the subscriber is full: it has fallen too far behind."""
        if not self.scope.admits(event):
            return True
        if len(self._events) >= self._capacity:
            return False
        self._events.append(event)
        self._wake.set()
        return True

    def end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
        self._wake.set()

    async def next(self) -> list[Event]:
        """The events waiting, once there are any; an empty list once ended."""
        if not self._events and self.ended is None:
            await self._wake.wait()
        self._wake.clear()
        if self.ended is not None:
            return []  # a lagged subscriber resumes from the stream; what it still holds is not sent
        events = list(self._events)
        self._events.clear()
        return events


class RedisUnavailable(Exception):
    pass


class Hub:
    """The process's one reader and its subscribers (use ``hub()``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._subscribers: set[Subscriber] = set()
        self._position: str | None = None
        self._reader: asyncio.Task[None] | None = None
        self._running = False  # False from the moment the reader decides to stop
        self._commands: Any = None

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _command_client(self) -> Any:
        if self._commands is None:
            import redis.asyncio as aioredis

            self._commands = aioredis.Redis.from_url(self.url, socket_connect_timeout=COMMAND_TIMEOUT,
                                                     socket_timeout=COMMAND_TIMEOUT, max_connections=8)
        return self._commands

    async def start(self) -> None:
        """Make sure the reader runs (``RedisUnavailable`` when Redis does not answer)."""
        if self._running:
            return
        from redis.exceptions import RedisError

        try:
            newest = await self._command_client().xrevrange(STREAM, count=1)
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(str(exc) or type(exc).__name__) from exc
        if self._running:
            return  # another client started it meanwhile
        self._running = True
        self._position = _decoded(newest[0][0]) if newest else "0-0"
        self._reader = asyncio.get_running_loop().create_task(self._read(self._position), name="live hub")

    def subscribe(self, scope: Scope) -> tuple[Subscriber, str]:
        """A new subscriber and the position it starts after; call after ``start``."""
        if not self._running or self._position is None:
            raise RedisUnavailable("the stream reader is not running")
        subscriber = Subscriber(scope)
        self._subscribers.add(subscriber)
        return subscriber, self._position

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def end_all(self, reason: str) -> None:
        for subscriber in list(self._subscribers):
            subscriber.end(reason)
        self._subscribers.clear()

    async def aclose(self) -> None:
        """End every stream, stop the reader and close the clients (tests; a server's loop just ends)."""
        self.end_all(SHUTDOWN)
        if self._reader is not None:
            self._reader.cancel()
            with suppress(asyncio.CancelledError):
                await self._reader
        if self._commands is not None:
            await self._commands.aclose()
            self._commands = None

    async def _read(self, position: str) -> None:
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        # A connection of its own: XREAD BLOCK holds it while it waits.
        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=COMMAND_TIMEOUT,
                                         socket_timeout=BLOCK_MS / 1000 + 5, single_connection_client=True)
        loop = asyncio.get_running_loop()
        idle_since: float | None = None
        try:
            while True:
                # With nobody listening for a while, stop; decided without awaiting, so no subscriber can
                # join a reader that is about to stop.
                if self._subscribers:
                    idle_since = None
                elif idle_since is None:
                    idle_since = loop.time()
                elif loop.time() - idle_since >= LINGER:
                    self._running = False
                    break
                response: Any = await client.xread({STREAM: position}, count=READ_COUNT, block=BLOCK_MS)
                for _stream, entries in response or []:
                    for entry_id, fields in entries:
                        position = self._position = _decoded(entry_id)
                        event = event_from_entry(entry_id, fields)
                        if event is not None:
                            self._distribute(event)
        except (RedisError, OSError) as exc:
            logger.warning("live push: the stream reader lost Redis (%s); %d streams end", exc, self.subscribers)
            self.end_all(UNAVAILABLE)
        finally:
            self._running = False
            await client.aclose()

    def _distribute(self, event: Event) -> None:
        for subscriber in list(self._subscribers):
            if not subscriber.offer(event):
                self._subscribers.discard(subscriber)
                subscriber.end(LAGGED)

    async def replay(self, scope: Scope, *, after: str, until: str) -> AsyncIterator[Event]:
        """The events after ``after`` up to ``until`` (inclusive) that ``scope`` admits, oldest first."""
        start = f"({after}"
        while True:
            entries = await self._command_client().xrange(STREAM, min=start, max=until, count=REPLAY_PAGE)
            for entry_id, fields in entries:
                event = event_from_entry(entry_id, fields)
                if event is not None and scope.admits(event):
                    yield event
            if len(entries) < REPLAY_PAGE:
                return
            start = f"({_decoded(entries[-1][0])}"

    async def lost_after(self, after: str) -> bool:
        """Whether events after ``after`` were trimmed from the stream before this client could get them."""
        from redis.exceptions import ResponseError

        try:
            info = await self._command_client().xinfo_stream(STREAM)
        except ResponseError:  # no such key: nothing was ever trimmed
            return False
        # Trimming takes the oldest entries: something was trimmed (more added than kept) and the oldest kept
        # entry comes after the client's. (When the client had seen exactly the last trimmed entry this says
        # lost although nothing was: the client reloads what it shows once, which is harmless.)
        trimmed = int(info.get("entries-added") or 0) > int(info.get("length") or 0)
        first = info.get("recorded-first-entry-id") or (info.get("first-entry") or [b"0-0"])[0]
        oldest_kept = stream_key(_decoded(first)) or (0, 0)
        return trimmed and (stream_key(after) or (0, 0)) < oldest_kept


def _decoded(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def hub() -> Hub:
    """The running loop's hub for ``REDIS_URL`` (uvicorn runs one loop per worker process)."""
    loop = asyncio.get_running_loop()
    current = _hubs.get(loop)
    if current is None or current.url != settings.REDIS_URL:
        if current is not None:
            current.end_all(SHUTDOWN)
        current = _hubs[loop] = Hub(settings.REDIS_URL)
    return current


def end_all(reason: str = SHUTDOWN) -> None:
    """End every stream this process serves (server shutdown: clients reconnect to a process that stays)."""
    for current in list(_hubs.values()):
        current.end_all(reason)
