from __future__ import annotations

from django.apps import AppConfig


class ScenesConfig(AppConfig):
    name = "scenes"
    verbose_name = "Scenes"
