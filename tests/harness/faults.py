"""An HTTP proxy in front of the S3 server that answers chosen requests with an error.

``FaultProxy(upstream).fail(status, times, when)`` makes the next ``times`` requests for which
``when(method, path)`` is true get ``status`` with an S3-style XML error; every other request is
forwarded unchanged (moto does not check signatures, so the Host may differ).
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
_S3_CODES = {403: "AccessDenied", 500: "InternalError", 503: "SlowDown"}


@dataclass
class _Rule:
    status: int  # 0: no error, only the delay
    remaining: int
    when: Callable[[str, str], bool]
    delay: float = 0.0


def is_upload_part(method: str, path: str) -> bool:
    return method == "PUT" and "partNumber=" in path and "uploadId=" in path


class _Handler(BaseHTTPRequestHandler):
    server: _ProxyServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def _relay(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append((self.command, self.path))
        rule = self.server.take_rule(self.command, self.path)
        if rule is not None and rule.delay:
            time.sleep(rule.delay)
        if rule is not None and rule.status:
            self.server.injected.append((self.command, self.path, rule.status))
            payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{_S3_CODES.get(rule.status, "Error")}'
                       f"</Code><Message>injected by the test</Message></Error>").encode()
            self.send_response(rule.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        upstream = http.client.HTTPConnection(self.server.upstream_host, self.server.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP | {"expect"}}
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in _HOP_BY_HOP | {"content-length"}:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            upstream.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay  # noqa: N815 - http.server's naming


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.rules: list[_Rule] = []
        self.seen: list[tuple[str, str]] = []
        self.injected: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-answer (a worker killed on purpose) is not an error worth a traceback.
        pass

    def take_rule(self, method: str, path: str) -> _Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.remaining > 0 and rule.when(method, path):
                    rule.remaining -= 1
                    return rule
        return None


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self._server = _ProxyServer(upstream)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def injected(self) -> list[tuple[str, str, int]]:
        return self._server.injected

    def fail(self, status: int, *, times: int, when: Callable[[str, str], bool]) -> None:
        self._server.rules.append(_Rule(status=status, remaining=times, when=when))

    def slow(self, seconds: float, *, times: int, when: Callable[[str, str], bool]) -> None:
        """Hold the next ``times`` matching requests for ``seconds`` before forwarding them."""
        self._server.rules.append(_Rule(status=0, remaining=times, when=when, delay=seconds))

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
