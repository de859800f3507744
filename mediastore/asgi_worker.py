"""The web server's worker class: ``gunicorn mediastore.asgi:application -k mediastore.asgi_worker.UvicornWorker``.

gunicorn keeps what it does well (worker processes, restarts, signals, access log) and each worker serves the
ASGI app with uvicorn, so the live stream's async view holds hundreds of clients while the sync DRF views
and pages run in threads as before.

Two changes to uvicorn-worker's class:

- **Open live streams end at shutdown.** uvicorn waits for every response to finish before it stops, and a
  Server-Sent Events stream never does: a restart (Ctrl-C in ``make run``, a deploy) would wait out the whole
  graceful timeout. The stream ends first with an ``event: shutdown``; its client reconnects (to a process
  that stays) and resumes with ``Last-Event-ID``. Other requests get the graceful timeout as before, and
  uvicorn cancels what still runs one second before gunicorn would kill the worker.
- **No lifespan protocol**: Django does not speak it, and uvicorn logged that at every start.

This module imports no Django at load: gunicorn's master process imports the worker class.
"""

from __future__ import annotations

import sys
from typing import Any

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker as _UvicornWorker


class _Server(Server):
    async def shutdown(self, sockets: Any = None) -> None:
        from scenes import live_hub

        live_hub.end_all(live_hub.SHUTDOWN)
        await super().shutdown(sockets=sockets)


class UvicornWorker(_UvicornWorker):  # type: ignore[misc]  # untyped base
    CONFIG_KWARGS = {"loop": "auto", "http": "auto", "lifespan": "off"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.timeout_graceful_shutdown = max(1, int(self.cfg.graceful_timeout) - 1)

    async def _serve(self) -> None:
        # uvicorn-worker 0.4.0's _serve with our Server.
        self.config.app = self.wsgi
        server = _Server(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
