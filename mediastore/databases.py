"""``DATABASE_URL`` → Django's ``DATABASES`` entry and the app wiring that differs per backend.

SQLite is the embedded default (tests, ``make run``); MongoDB is production. Both run the same models and
the same migrations for our own apps. Only Django's contrib apps and django-celery-results need other
migrations on MongoDB (their implicit integer ``AutoField`` becomes ``ObjectIdAutoField``), so this module
swaps in their MongoDB app configs and migration modules and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

MONGODB_SCHEMES = ("mongodb", "mongodb+srv")

# Bytes of WAL SQLite keeps after a checkpoint; the usual size is about 4 MB (1000 pages between checkpoints).
SQLITE_WAL_SIZE_LIMIT = 64 * 1024 * 1024

# A dead MongoDB must fail a request or a start-up in seconds, not after pymongo's 30 s default.
MONGODB_SERVER_SELECTION_TIMEOUT_MS = 5000
MONGODB_CONNECT_TIMEOUT_MS = 5000

_CONTRIB_APPS = {
    "django.contrib.admin": "mediastore.mongodb.MongoAdminConfig",
    "django.contrib.auth": "mediastore.mongodb.MongoAuthConfig",
    "django.contrib.contenttypes": "mediastore.mongodb.MongoContentTypesConfig",
    "django_celery_results": "mediastore.mongodb.MongoCeleryResultsConfig",
}
_MONGO_MIGRATION_MODULES = {
    "admin": "mediastore.mongo_migrations.admin",
    "auth": "mediastore.mongo_migrations.auth",
    "contenttypes": "mediastore.mongo_migrations.contenttypes",
    "django_celery_results": "mediastore.mongo_migrations.django_celery_results",
}


@dataclass(frozen=True)
class DatabaseConfig:
    default: dict[str, Any]
    is_mongodb: bool
    migration_modules: dict[str, str] = field(default_factory=dict)
    default_auto_field: str = "django.db.models.BigAutoField"

    def installed_apps(self, apps: list[str]) -> list[str]:
        if not self.is_mongodb:
            return list(apps)
        return [_CONTRIB_APPS.get(app, app) for app in apps]


def database_config(url: str | None, *, data_dir: Path, database_name: str | None) -> DatabaseConfig:
    """Read ``DATABASE_URL``; ``database_name`` is ``DATABASE_NAME`` (used when the URL has no path)."""
    if url is None:
        return _sqlite(data_dir / "db.sqlite3", data_dir=data_dir)
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        return _sqlite_from_url(url, data_dir=data_dir)
    if scheme in MONGODB_SCHEMES:
        return _mongodb(url, database_name=database_name)
    raise ImproperlyConfigured(
        f"DATABASE_URL: unsupported scheme {scheme!r}; use sqlite:///<path>, mongodb:// or mongodb+srv://"
    )


def _sqlite_from_url(url: str, *, data_dir: Path) -> DatabaseConfig:
    # sqlite:///relative/path and sqlite:////absolute/path, as dj-database-url reads them.
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ImproperlyConfigured(f"DATABASE_URL: expected sqlite:///<path to file>, got {url!r}")
    return _sqlite(Path(unquote(url[len(prefix) :])).expanduser().resolve(), data_dir=data_dir)


def _sqlite(path: Path, *, data_dir: Path) -> DatabaseConfig:
    return DatabaseConfig(
        default={
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(path),
            "OPTIONS": {
                # The worker and the web process write the same file: WAL lets readers run beside a
                # writer, IMMEDIATE takes the write lock up front so two writers queue on the timeout
                # instead of failing with "database is locked" halfway through a transaction. The WAL is
                # never deleted while a web process runs (``mediastore.sqlite_wal``): the size limit makes
                # SQLite cut it back after a checkpoint, once a long reader has let it grow.
                "init_command": ("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
                                 f"PRAGMA journal_size_limit={SQLITE_WAL_SIZE_LIMIT};"),
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
            },
            # Tests need a file, not Django's in-memory default: the Celery worker under test is another
            # process and must see the same rows.
            "TEST": {"NAME": str(data_dir / "test-db.sqlite3")},
            # Not persistent, although a request then opens the file again (about 0.5 ms): under the uvicorn
            # workers each request's sync part runs in a thread of its own (Django's ThreadSensitiveContext)
            # and Django's connections are per thread, so a kept connection would never serve a second
            # request and would only pile up until its thread's garbage is collected.
            "CONN_MAX_AGE": 0,
        },
        is_mongodb=False,
    )


def _mongodb(url: str, *, database_name: str | None) -> DatabaseConfig:
    parts = urlsplit(url)
    if not parts.hostname:
        raise ImproperlyConfigured(f"DATABASE_URL: MongoDB URL has no host: {_redact(url)!r}")
    name = unquote(parts.path.lstrip("/")) or database_name
    if not name:
        raise ImproperlyConfigured(
            "DATABASE_URL: MongoDB URL names no database; add it to the path (mongodb://host/mediastore) "
            "or set DATABASE_NAME"
        )
    return DatabaseConfig(
        default={
            "ENGINE": "django_mongodb_backend",
            "HOST": url,
            "NAME": name,
            "OPTIONS": {
                "serverSelectionTimeoutMS": MONGODB_SERVER_SELECTION_TIMEOUT_MS,
                "connectTimeoutMS": MONGODB_CONNECT_TIMEOUT_MS,
            },
        },
        is_mongodb=True,
        migration_modules=dict(_MONGO_MIGRATION_MODULES),
        default_auto_field="django_mongodb_backend.fields.ObjectIdAutoField",
    )


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)
