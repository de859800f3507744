"""A small Server-Sent Events client for tests: one message (or comment) at a time, each read with a timeout."""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Message:
    id: str | None = None
    event: str | None = None
    data: str = ""
    comments: list[str] = field(default_factory=list)
    retry: int | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.data)


class EventStream:
    def __init__(self, url: str, *, headers: dict[str, str] | None = None, timeout: float = 10) -> None:
        parts = urlsplit(url)
        self._connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self._connection.request("GET", path, headers={"Accept": "text/event-stream", **(headers or {})})
        self.response = self._connection.getresponse()

    @property
    def status(self) -> int:
        return int(self.response.status)

    def next(self, timeout: float = 10) -> Message | None:
        """The next message or comment block; None when the server ended the stream."""
        assert self._connection.sock is not None
        self._connection.sock.settimeout(timeout)
        message = Message()
        seen_any = False
        while True:
            raw = self.response.readline()
            if not raw:
                return message if seen_any else None
            line = raw.decode().rstrip("\r\n")
            if not line:
                if seen_any:
                    return message
                continue
            seen_any = True
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                message.comments.append(value)
            elif name == "id":
                message.id = value
            elif name == "event":
                message.event = value
            elif name == "data":
                message.data = f"{message.data}\n{value}" if message.data else value
            elif name == "retry":
                message.retry = int(value)

    def until(self, event: str, timeout: float = 15) -> tuple[Message, list[Message]]:
        """Read until a message of type ``event``; returns it and the messages before it."""
        deadline = time.monotonic() + timeout
        before: list[Message] = []
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.next(timeout=remaining)
            if message is None:
                raise AssertionError(f"the stream ended before {event!r}; got {before}")
            if message.event == event:
                return message, before
            before.append(message)
        raise TimeoutError(f"no {event!r} within {timeout}s; got {before}")

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
