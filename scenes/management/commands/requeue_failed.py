"""``requeue_failed``: queue failed scenes again, narrowed by age, error code and project."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from downloads.exceptions import PERMANENT_CODES
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
        parser.add_argument("--include-permanent", action="store_true",
                            help=f"also failures that would happen again ({', '.join(sorted(PERMANENT_CODES))}); "
                                 "an explicit --error-code includes its own code anyway")

    def handle(self, *args: Any, **options: Any) -> None:
        skip = frozenset() if options["include_permanent"] or options["error_code"] else PERMANENT_CODES
        scenes = selectors.scenes_failed(since=options["since"], error_code=options["error_code"],
                                         project_id=options["project"], limit=options["limit"], exclude_codes=skip)
        if skip:
            permanent = selectors.scenes_failed(since=options["since"], project_id=options["project"],
                                                only_codes=skip)
            if permanent:
                self.stdout.write(f"requeue_failed: skipping {len(permanent)} permanent failure(s) "
                                  "(--include-permanent to queue them too)")
        if options["dry_run"]:
            for scene in scenes:
                self.stdout.write(f"would queue {scene.pk} ({scene.error_code}: {scene.source_url})")
            self.stdout.write(f"requeue_failed: {len(scenes)} failed scene(s) would be queued (dry run)")
            return
        queued, conflicts = apply_each(scenes, lambda scene: services.scene_requeue_failed(scene=scene))
        self.stdout.write(f"requeue_failed: queued {queued}, skipped {conflicts} that changed meanwhile")
        if conflicts:
            raise CommandError(f"requeue_failed: {conflicts} scene(s) were not failed any more")
