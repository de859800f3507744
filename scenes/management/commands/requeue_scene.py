"""``requeue_scene ID [ID …]``: queue scenes again, whatever they last did, unless a worker has them now."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from scenes import services
from scenes.lifecycle import SceneStateConflict
from scenes.models import Scene


class Command(BaseCommand):
    help = "Queue the given scenes again (not those processing right now). Exits 1 if any was not queued."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("ids", nargs="+", metavar="ID", help="scene ids")
        parser.add_argument("--dry-run", action="store_true", help="say what would happen; change nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        found = {scene.pk: scene for scene in Scene.objects.filter(pk__in=options["ids"])}
        queued, refused = 0, []
        for scene_id in options["ids"]:
            scene = found.get(scene_id)
            if scene is None:
                refused.append(f"{scene_id}: no such scene")
            elif scene.status == Scene.Status.PROCESSING:
                refused.append(f"{scene_id}: processing right now")
            elif options["dry_run"]:
                queued += 1
            else:
                try:
                    services.scene_requeue_any(scene=scene)
                    queued += 1
                except SceneStateConflict:
                    refused.append(f"{scene_id}: started processing meanwhile")
        for reason in refused:
            self.stderr.write(f"not queued {reason}")
        verb = "would queue" if options["dry_run"] else "queued"
        self.stdout.write(f"requeue_scene: {verb} {queued}, refused {len(refused)}")
        if refused:
            raise CommandError(f"requeue_scene: {len(refused)} scene(s) not queued")
