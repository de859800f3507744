"""Configuration comes from the environment; a bad value stops start-up naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from mediastore.databases import MONGODB_SERVER_SELECTION_TIMEOUT_MS, SQLITE_WAL_SIZE_LIMIT, database_config
from mediastore.env import parse_duration, parse_size
from tests.harness.services import REPO_ROOT


def _start(env: dict[str, str], data_dir: Path, code: str = "") -> subprocess.CompletedProcess[str]:
    """Import the settings in a fresh process, as start-up does."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_", "CELERY_", "R2_"))}
    clean.update({"DATA_DIR": str(data_dir), "DJANGO_SETTINGS_MODULE": "mediastore.settings", **env})
    script = f"import django; django.setup(); from django.conf import settings; {code}"
    return subprocess.run([sys.executable, "-c", script], env=clean, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60)


def test_unset_database_url_means_sqlite_in_data_dir(tmp_path: Path):
    config = database_config(None, data_dir=tmp_path, database_name=None)

    assert config.default["ENGINE"] == "django.db.backends.sqlite3"
    assert config.default["NAME"] == str(tmp_path / "db.sqlite3")
    assert not config.is_mongodb


def test_sqlite_connections_are_not_kept_across_requests(tmp_path: Path):
    # The web's uvicorn workers give each request a new thread: a persistent connection is never reused.
    assert database_config(None, data_dir=tmp_path, database_name=None).default["CONN_MAX_AGE"] == 0


def test_sqlite_connections_bound_the_wal_they_keep(tmp_path: Path):
    done = _start({}, tmp_path, "from django.db import connection; "
                                "print(connection.cursor().execute('PRAGMA journal_size_limit').fetchone()[0])")

    assert done.stdout.split() == [str(SQLITE_WAL_SIZE_LIMIT)], done.stderr


def test_sqlite_url_names_the_file(tmp_path: Path):
    config = database_config(f"sqlite:///{tmp_path}/other.db", data_dir=tmp_path, database_name=None)

    assert config.default["NAME"] == str(tmp_path / "other.db")


def test_mongodb_url_takes_database_from_path(tmp_path: Path):
    config = database_config("mongodb://db.example:27017/media", data_dir=tmp_path, database_name="ignored")

    assert config.is_mongodb
    assert config.default["ENGINE"] == "django_mongodb_backend"
    assert config.default["NAME"] == "media"
    assert config.default["OPTIONS"]["serverSelectionTimeoutMS"] == MONGODB_SERVER_SELECTION_TIMEOUT_MS
    assert config.default_auto_field == "django_mongodb_backend.fields.ObjectIdAutoField"


def test_mongodb_srv_url_without_path_takes_database_name(tmp_path: Path):
    config = database_config("mongodb+srv://cluster.example/", data_dir=tmp_path, database_name="media")

    assert config.default["NAME"] == "media"
    assert config.default["HOST"] == "mongodb+srv://cluster.example/"


def test_mongodb_swaps_only_the_contrib_app_configs(tmp_path: Path):
    config = database_config("mongodb://h/db", data_dir=tmp_path, database_name=None)

    apps = config.installed_apps(["django.contrib.auth", "django.contrib.sessions", "scenes"])

    assert apps == ["mediastore.mongodb.MongoAuthConfig", "django.contrib.sessions", "scenes"]
    assert "scenes" not in config.migration_modules


def test_mongodb_url_without_any_database_name_is_refused(tmp_path: Path):
    with pytest.raises(ImproperlyConfigured, match="DATABASE_NAME"):
        database_config("mongodb://h:27017", data_dir=tmp_path, database_name=None)


def test_mongodb_error_does_not_print_the_password(tmp_path: Path):
    with pytest.raises(ImproperlyConfigured) as error:
        database_config("mongodb://user:hunter2@/db", data_dir=tmp_path, database_name=None)

    assert "hunter2" not in str(error.value)


@pytest.mark.parametrize(("text", "size"), [("2G", 2 * 1024**3), ("500M", 500 * 1024**2), ("10MiB", 10 * 1024**2),
                                            ("1024", 1024), ("3k", 3072)])
def test_sizes_accept_suffixes(text: str, size: int):
    assert parse_size(text) == size


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("4h", 14400),
                                               ("1.5h", 5400), ("500ms", 0.5)])
def test_durations_accept_units(text: str, seconds: float):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DATABASE_URL": "postgres://localhost/x"}, "DATABASE_URL"),
        ({"DATABASE_URL": "mongodb://localhost"}, "DATABASE_URL"),
        ({"DJANGO_DEBUG": "maybe"}, "DJANGO_DEBUG"),
        ({"CELERY_BROKER_URL": "http://localhost:6379"}, "CELERY_BROKER_URL"),
        ({"CELERY_WORKER_CONCURRENCY": "lots"}, "CELERY_WORKER_CONCURRENCY"),
        ({"CELERY_TASK_TIME_LIMIT": "forever"}, "CELERY_TASK_TIME_LIMIT"),
        ({"CELERY_BROKER_VISIBILITY_TIMEOUT": "60", "CELERY_TASK_TIME_LIMIT": "120"},
         "CELERY_BROKER_VISIBILITY_TIMEOUT"),
        ({"R2_ENDPOINT_URL": "https://r2.example"}, "R2_BUCKET"),
        ({"R2_BUCKET": "b", "R2_ACCESS_KEY_ID": "id"}, "R2_SECRET_ACCESS_KEY"),
        ({"R2_BUCKET": "b", "R2_ENDPOINT_URL": "ftp://r2.example"}, "R2_ENDPOINT_URL"),
        ({"R2_BUCKET": "b", "R2_CHECKSUM_ALGORITHM": "MD5"}, "R2_CHECKSUM_ALGORITHM"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"TMPDIR": "/nonexistent/mediastore-tmp"}, "TMPDIR"),
        ({"MEDIA_SWEEP_INTERVAL": "often"}, "MEDIA_SWEEP_INTERVAL"),
        ({"METRICS_TOKEN": "short"}, "METRICS_TOKEN"),
        ({"MEDIA_WORKER_METRICS_PORT": "70000"}, "MEDIA_WORKER_METRICS_PORT"),
        ({"MEDIA_WORKER_METRICS_PORT": "metrics"}, "MEDIA_WORKER_METRICS_PORT"),
        ({"PIPELINE_CHECK_SAMPLE_ORIGIN": "web:8000"}, "PIPELINE_CHECK_SAMPLE_ORIGIN"),
        ({"PIPELINE_CHECK_SAMPLE_ORIGIN": "http://web:8000/check"}, "PIPELINE_CHECK_SAMPLE_ORIGIN"),
    ],
)
def test_bad_value_stops_start_up_naming_the_variable(tmp_path: Path, env: dict[str, str], named: str):
    started = _start(env, tmp_path)

    assert started.returncode != 0
    assert "ImproperlyConfigured" in started.stderr
    assert named in started.stderr.splitlines()[-1]


def test_generated_secret_key_is_kept_across_starts(tmp_path: Path):
    first = _start({}, tmp_path, "print(settings.SECRET_KEY)")
    second = _start({}, tmp_path, "print(settings.SECRET_KEY)")

    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert len(first.stdout.strip()) >= 50
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_configured_secret_key_wins(tmp_path: Path):
    started = _start({"DJANGO_SECRET_KEY": "from-the-environment"}, tmp_path, "print(settings.SECRET_KEY)")

    assert started.stdout.strip() == "from-the-environment"
    assert not (tmp_path / "secret_key").exists()


@pytest.mark.parametrize(("value", "algorithm"), [(None, "CRC32"), ("crc32", "CRC32"), ("off", ""), ("none", "")])
def test_checksum_algorithm_is_crc32_unless_turned_off(tmp_path: Path, value: str | None, algorithm: str):
    started = _start({} if value is None else {"R2_CHECKSUM_ALGORITHM": value}, tmp_path,
                     "print(repr(settings.R2_CHECKSUM_ALGORITHM))")

    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == repr(algorithm)
