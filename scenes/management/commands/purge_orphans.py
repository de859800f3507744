"""``purge_orphans``: delete stored objects under ``scenes/`` whose scene no longer exists, and abort the
multipart uploads under ``scenes/`` whose scene is not being processed (a worker killed mid-upload)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from downloads import bridge, storage
from downloads.exceptions import StorageError
from scenes import services
from scenes.models import Scene


class Command(BaseCommand):
    help = "Delete objects in the store whose scene no longer exists. Exits 1 if the store failed."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="list the orphans; delete nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        store = storage.get_storage()
        try:
            keys = bridge.run(store.keys("scenes/"))
        except StorageError as error:
            raise CommandError(f"purge_orphans: could not list the store: {error.message}") from error
        by_scene = storage.by_scene(keys, key=str)
        existing = set(Scene.objects.filter(pk__in=list(by_scene)).values_list("pk", flat=True))
        orphans = {scene_id: found for scene_id, found in by_scene.items() if scene_id not in existing}
        count = sum(len(found) for found in orphans.values())
        if options["dry_run"]:
            for found in orphans.values():
                for key in found:
                    self.stdout.write(f"would delete {key}")
            self.stdout.write(f"purge_orphans: {count} orphaned object(s) of {len(orphans)} scene(s) (dry run)")
            return
        try:
            for scene_id in orphans:
                bridge.run(store.delete_prefix(storage.scene_prefix(scene_id)))
            aborted = services.uploads_sweep()
        except StorageError as error:
            raise CommandError(f"purge_orphans: the store failed: {error.message}") from error
        self.stdout.write(f"purge_orphans: deleted {count} orphaned object(s) of {len(orphans)} scene(s), "
                          f"aborted {aborted} open upload(s)")
