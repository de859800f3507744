"""``requeue_stuck``: queue again the scenes a dead worker or a lost enqueue left behind.

Run it periodically, e.g. from cron: ``*/5 * * * * cd /srv/mediastore && .venv/bin/python manage.py
requeue_stuck --older-than 30m``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from scenes import selectors, services
from scenes.management.commands._requeue import apply_each, duration


class Command(BaseCommand):
    help = ("Queue again scenes processing with a heartbeat older than --older-than (their worker died) and "
            "scenes queued for longer than that (their enqueue was lost).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", type=duration, default=dt.timedelta(minutes=30),
                            help="how old a heartbeat or a queued scene must be (default 30m)")
        parser.add_argument("--dry-run", action="store_true", help="say what would be queued; change nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        stuck = selectors.scenes_stuck(older_than=options["older_than"])
        if options["dry_run"]:
            for scene in stuck:
                self.stdout.write(f"would queue {scene.pk} ({scene.status}, last heard of {scene.updated_at:%c})")
            self.stdout.write(f"requeue_stuck: {len(stuck)} stuck scene(s) would be queued (dry run)")
            return
        # A scene that moved meanwhile had a live worker after all.
        queued, moved = apply_each(stuck, lambda scene: services.scene_requeue_stuck(scene=scene))
        self.stdout.write(f"requeue_stuck: queued {queued}, skipped {moved} that moved meanwhile")
