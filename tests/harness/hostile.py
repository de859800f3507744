"""An attacker's web on loopback: a hostile site on the allowed address, canaries on internal ones, fake DNS.

- ``127.0.0.1`` is the test "internet" (``ALLOWED_INTERNET`` in the worker's policy). ``HostileSite`` serves
  there whatever a test registers: redirects, pages, manifests that point elsewhere.
- Every other loopback address is internal to the worker. A ``Canary`` there serves real media (so reaching
  it would make the job succeed) and counts every connection it accepts, HTTP or not.
- ``fake_dns`` writes a ``sitecustomize`` that answers chosen ``*.test`` names from a JSON file, read at
  every lookup, in every process that has it on ``PYTHONPATH`` (the worker and the yt-dlp it starts). Each
  name has a list of answers: lookup *n* in a process gets answer *n* (the last one repeats), which is
  how DNS rebinding looks from inside one process.
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

Response = tuple[int, dict[str, str], bytes]


class _LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # Not HTTPServer.server_bind: its getfqdn() would ask DNS about the address.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a refused or killed client hanging up is expected here


class _Handler(SimpleHTTPRequestHandler):
    """Serves ``root``; records each request in ``log``. Subclassed per server with both set."""

    root: str
    log: list[str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, directory=self.root, **kwargs)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        self.log.append(f"{self.command} {self.path}")


class _Running:
    def __init__(self, server: _LoopbackServer) -> None:
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


class Canary:
    """An internal server: serves ``root`` (real media) and counts connections and requests."""

    def __init__(self, address: str, root: Path, port: int = 0) -> None:
        canary = self
        self.connections = 0
        self.requests: list[str] = []

        class Handler(_Handler):
            pass

        Handler.root, Handler.log = str(root), self.requests

        class Server(_LoopbackServer):
            def process_request(self, request: Any, client_address: Any) -> None:
                canary.connections += 1
                super().process_request(request, client_address)

        self._running = _Running(Server((address, port), Handler))
        self.address = address
        self.port = int(self._running.server.server_address[1])

    @property
    def hits(self) -> int:
        return self.connections

    def url(self, path: str, *, host: str | None = None) -> str:
        return f"http://{host or self.address}:{self.port}/{path.lstrip('/')}"

    def stop(self) -> None:
        self._running.stop()


class HostileSite:
    """The allowed host: ``route(path, response)`` decides what each path answers; other paths serve
    ``root``."""

    def __init__(self, root: Path, address: str = "127.0.0.1", port: int = 0) -> None:
        site = self
        self.routes: dict[str, Callable[[], Response]] = {}
        self.drips: dict[str, tuple[int, float]] = {}
        self.stopping = threading.Event()
        self.requests: list[str] = []

        class Handler(_Handler):
            def do_GET(self) -> None:
                if (drip := site.drips.get(urlsplit(self.path).path)) is not None:
                    self._drip(*drip)
                    return
                answer = site.routes.get(urlsplit(self.path).path)
                if answer is None:
                    super().do_GET()
                    return
                status, headers, body = answer()
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_HEAD(self) -> None:
                self.do_GET()

            def _drip(self, length: int, interval: float) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(length))
                self.end_headers()
                for _ in range(length):
                    if site.stopping.wait(interval):
                        return
                    self.wfile.write(b"\0")
                    self.wfile.flush()

        Handler.root, Handler.log = str(root), self.requests
        self._running = _Running(_LoopbackServer((address, port), Handler))
        self.address = address
        self.port = int(self._running.server.server_address[1])

    def url(self, path: str, *, host: str | None = None) -> str:
        return f"http://{host or self.address}:{self.port}/{path.lstrip('/')}"

    def route(self, path: str, body: bytes | str, *, status: int = 200, content_type: str = "text/html",
              headers: dict[str, str] | None = None) -> str:
        data = body.encode() if isinstance(body, str) else body
        self.routes[path] = lambda: (status, {"Content-Type": content_type, **(headers or {})}, data)
        return self.url(path)

    def drip(self, path: str, *, length: int, interval: float) -> str:
        """A source that sends one byte every ``interval`` seconds: fast enough for no socket timeout."""
        self.drips[path] = (length, interval)
        return self.url(path)

    def redirect(self, path: str, to: str, *, status: int = 302) -> str:
        self.routes[path] = lambda: (status, {"Location": to}, b"")
        return self.url(path)

    def stop(self) -> None:
        self.stopping.set()
        self._running.stop()


_SITECUSTOMIZE = '''
"""Test-only fake DNS (tests/harness/hostile.py): *.test names answered from a JSON file."""
import json, os, socket, _socket

_PATH = os.environ["MEDIASTORE_FAKE_DNS"]
_real = _socket.getaddrinfo
_seen = {}


def _fake(host, port, family=0, type=0, proto=0, flags=0):
    name = host.decode() if isinstance(host, bytes) else host
    if isinstance(name, str) and name.endswith(".test"):
        with open(_PATH) as f:
            answers = json.load(f).get(name)
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        n = _seen[name] = _seen.get(name, -1) + 1
        address = answers[min(n, len(answers) - 1)]
        return _real(address, port, family, type, proto, flags)
    return _real(host, port, family, type, proto, flags)


_socket.getaddrinfo = _fake
socket.getaddrinfo = _fake
'''


class FakeDns:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.file = folder / "dns.json"
        self.set({})
        (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE)

    def set(self, answers: dict[str, list[str]]) -> None:
        self.file.write_text(json.dumps(answers))

    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.folder), "MEDIASTORE_FAKE_DNS": str(self.file)}


@contextmanager
def fake_dns(folder: Path) -> Iterator[FakeDns]:
    folder.mkdir(parents=True, exist_ok=True)
    yield FakeDns(folder)
