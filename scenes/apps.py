from __future__ import annotations

from django.apps import AppConfig


class ScenesConfig(AppConfig):
    name = "scenes"
    verbose_name = "Scenes"

    def ready(self) -> None:
        # Connect the post_delete receivers: the lifecycle announces every deleted scene, and the services
        # send its stored objects after it, whichever way the row disappeared. The live push listens to
        # every announced change.
        from scenes import lifecycle, live, services  # noqa: F401
