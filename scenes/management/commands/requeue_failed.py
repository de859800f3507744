"""``requeue_failed``: queue failed scenes again, narrowed by age, error code and project."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from scenes import selectors, services
from scenes.management.commands._requeue import apply_each, duration


class Command(BaseCommand):
    help = "Queue failed scenes again. Prints one summary line; exits 1 if any could not be queued."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--since", type=duration, default=None, help="only scenes that failed within, e.g. 24h")
        parser.add_argument("--error-code", default=None, help="only scenes with this error code, e.g. timeout")
        parser.add_argument("--project", default=None, help="only scenes of this project id")
        parser.add_argument("--limit", type=int, default=None, help="at most this many scenes")
        parser.add_argument("--dry-run", action="store_true", help="say what would be queued; change nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        scenes = selectors.scenes_failed(since=options["since"], error_code=options["error_code"],
                                         project_id=options["project"], limit=options["limit"])
        if options["dry_run"]:
            for scene in scenes:
                self.stdout.write(f"would queue {scene.pk} ({scene.error_code}: {scene.source_url})")
            self.stdout.write(f"requeue_failed: {len(scenes)} failed scene(s) would be queued (dry run)")
            return
        queued, conflicts = apply_each(scenes, lambda scene: services.scene_requeue_failed(scene=scene))
        self.stdout.write(f"requeue_failed: queued {queued}, skipped {conflicts} that changed meanwhile")
        if conflicts:
            raise CommandError(f"requeue_failed: {conflicts} scene(s) were not failed any more")
