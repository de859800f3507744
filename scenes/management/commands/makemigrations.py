"""Django's ``makemigrations``, able to run with MongoDB settings when no MongoDB server is reachable.

CI and developers check migrations for both backends on machines without MongoDB; see
``mediastore.mongodb.unreachable_database_tolerated``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.commands.makemigrations import Command as DjangoMakemigrationsCommand


class Command(DjangoMakemigrationsCommand):
    def handle(self, *app_labels: Any, **options: Any) -> None:
        if not settings.DATABASE_IS_MONGODB:
            super().handle(*app_labels, **options)
            return
        from mediastore.mongodb import unreachable_database_tolerated

        with unreachable_database_tolerated():
            super().handle(*app_labels, **options)
