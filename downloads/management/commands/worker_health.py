"""``worker_health``: is this host's worker (or every worker) still taking work? For container healthchecks.

Exit 0 when the worker reports and is not stalled; exit 1 with the reason otherwise (see
``mediastore.liveness``: a worker is stalled when tasks are queued, it has free slots, and it has received
nothing for ``MEDIA_WORKER_STALL_AFTER``; it is gone when it stopped reporting).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from mediastore import liveness


class Command(BaseCommand):
    help = "Exit 1 when the worker on this host (or, with --all, any worker) is stalled or gone."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--hostname", default=None,
                            help="the worker's node name (default celery@<this host's name>)")
        parser.add_argument("--all", action="store_true", help="judge every worker that reports")

    def handle(self, *args: Any, **options: Any) -> None:
        hostname = None if options["all"] else (options["hostname"] or liveness.default_hostname())
        try:
            found = liveness.workers_health(hostname=hostname)
        except Exception as exc:  # the broker does not answer: not healthy either
            raise CommandError(f"worker_health: the broker is not reachable: {type(exc).__name__}") from exc
        if found is None:
            self.stdout.write("worker_health: liveness needs the Redis broker; not checked")
            return
        queued, verdicts = found
        bad = [v for v in verdicts if not v.healthy]
        for verdict in verdicts:
            self.stdout.write(f"{verdict.hostname}: {'ok' if verdict.healthy else 'FAIL'}: {verdict.reason}")
        if bad or not verdicts:
            raise CommandError(f"worker_health: {len(bad) or 'no'} worker(s) unhealthy, {queued} task(s) queued")
        self.stdout.write(f"worker_health: {len(verdicts)} worker(s) taking work, {queued} task(s) queued")
