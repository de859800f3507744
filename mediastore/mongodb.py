"""Code that exists only for MongoDB; everything else is shared with SQLite.

The app configs, used only on MongoDB where an integer ``AutoField`` cannot exist, give Django's contrib
apps and django-celery-results ``ObjectIdAutoField`` primary keys. Their migrations live in
``mediastore/mongo_migrations`` (see ``mediastore.databases``). After upgrading Django or
django-celery-results, regenerate them (no server needed)::

    DATABASE_URL=mongodb://127.0.0.1:1/x python manage.py makemigrations \
        admin auth contenttypes django_celery_results
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

from django.contrib.admin.apps import AdminConfig
from django.contrib.auth.apps import AuthConfig
from django.contrib.contenttypes.apps import ContentTypesConfig
from django.db import OperationalError
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.migrations.loader import MigrationLoader
from django_celery_results.apps import CeleryResultConfig
from pymongo.errors import ConnectionFailure

OBJECT_ID_AUTO_FIELD = "django_mongodb_backend.fields.ObjectIdAutoField"


class MongoAdminConfig(AdminConfig):
    default_auto_field = OBJECT_ID_AUTO_FIELD


class MongoAuthConfig(AuthConfig):
    default_auto_field = OBJECT_ID_AUTO_FIELD


class MongoContentTypesConfig(ContentTypesConfig):
    default_auto_field = OBJECT_ID_AUTO_FIELD


class MongoCeleryResultsConfig(CeleryResultConfig):
    default_auto_field = OBJECT_ID_AUTO_FIELD


@contextmanager
def unreachable_database_tolerated() -> Iterator[None]:
    """Let ``makemigrations`` run with MongoDB settings and no server.

    Django checks the applied-migration history against the database and downgrades an unreachable
    database to a warning, but only for ``OperationalError``; pymongo raises ``ServerSelectionTimeoutError``
    and ``makemigrations`` crashed. Translated here, Django's own warning path takes over.
    """
    original = MigrationLoader.check_consistent_history

    def check_consistent_history(loader: MigrationLoader, connection: BaseDatabaseWrapper) -> None:
        try:
            original(loader, connection)
        except ConnectionFailure as exc:
            raise OperationalError(f"MongoDB is not reachable: {exc}") from exc

    with mock.patch.object(MigrationLoader, "check_consistent_history", check_consistent_history):
        yield
