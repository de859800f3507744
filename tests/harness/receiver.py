"""A webhook receiver on loopback that checks every request with the Standard Webhooks reference code.

The check is the ``standardwebhooks`` package's own ``Webhook.verify`` (the spec's reference implementation):
it recomputes HMAC-SHA256 over ``id.timestamp.body`` with the endpoint's secret and refuses stale timestamps.
Answers are scripted: ``answers=[500, 500, 500]`` makes the first three requests fail, later ones get 200.
"""

from __future__ import annotations

import json
import socketserver
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    answered: int

    @property
    def event(self) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.body)
        return decoded


@dataclass
class _State:
    secrets: list[str] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State

    def server_bind(self) -> None:
        # Not HTTPServer.server_bind: its getfqdn() would ask DNS about the address.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self.state.lock:
            self.state.connections += 1
        return True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_POST(self) -> None:
        state = self.server.state
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = {key.lower(): value for key, value in self.headers.items()}
        verified = False
        for secret in state.secrets:
            try:
                Webhook(secret).verify(body, headers)
                verified = True
                break
            except WebhookVerificationError:
                continue
        with state.lock:
            status = state.answers.pop(0) if state.answers else 200
            state.received.append(Received(at=time.monotonic(), path=self.path, headers=headers, body=body,
                                           verified=verified, answered=status))
        payload = b'{"ok": true}' if status < 300 else b"receiver says no"
        self.send_response(status)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class Receiver:
    """``with Receiver("127.0.0.1") as receiver:`` — ``receiver.url``, ``receiver.received``."""

    def __init__(self, host: str = "127.0.0.1", *, answers: list[int] | None = None) -> None:
        self._server = _Server((host, 0), _Handler)
        self._server.state = _State(answers=list(answers or []))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/hooks"

    @property
    def received(self) -> list[Received]:
        with self._server.state.lock:
            return list(self._server.state.received)

    @property
    def connections(self) -> int:
        return self._server.state.connections

    def trust(self, *secrets: str) -> None:
        """The secrets the receiver verifies with (the endpoint's, as registered)."""
        self._server.state.secrets = list(secrets)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
