"""``ping_worker``: run the async hello_world task on a worker and report its pool, concurrency and versions."""

from __future__ import annotations

import time
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeoutError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from kombu.exceptions import OperationalError as BrokerError

from downloads.tasks import hello_world, worker_info
from mediastore.celery import app as celery_app


class Command(BaseCommand):
    help = "Check that a worker answers and runs async tasks; print its pool, concurrency and versions."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for each answer")

    def handle(self, *args: Any, **options: Any) -> None:
        timeout: float = options["timeout"]
        # A broadcast is not queued: a worker that has just said "ready" but not yet subscribed its
        # remote-control channel misses it. Ask again until the timeout rather than answer "no worker".
        deadline = time.monotonic() + timeout
        stats: dict[str, Any] = {}
        while not stats and time.monotonic() < deadline:
            try:
                stats = celery_app.control.inspect(timeout=min(timeout, 5.0)).stats() or {}
            except BrokerError as exc:
                raise CommandError(f"ping_worker: the broker is not reachable: {exc}") from exc
        if not stats:
            raise CommandError("ping_worker: no worker answered; is `celery -A mediastore worker` running?")
        for name, worker in sorted(stats.items()):
            pool = worker.get("pool", {})
            self.stdout.write(
                f"worker {name}: pool {pool.get('implementation', '?')}, concurrency {pool.get('max-concurrency', '?')}"
            )
        started = time.monotonic()
        try:
            greeting = hello_world.delay().get(timeout=timeout)
            info = worker_info.delay().get(timeout=timeout)
        except CeleryTimeoutError as exc:
            raise CommandError(f"ping_worker: no answer from the worker within {timeout:g}s") from exc
        elapsed = time.monotonic() - started
        versions = ", ".join(f"{name} {number}" for name, number in info["versions"].items())
        self.stdout.write(f"versions: {versions}")
        self.stdout.write(f"ping_worker: OK, async task answered {greeting!r} in {elapsed:.2f}s")
