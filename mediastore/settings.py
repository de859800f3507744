"""mediastore settings: read from the environment only (see README's configuration table).

A bad value stops start-up with ``ImproperlyConfigured`` naming the variable.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured

from mediastore.databases import database_config
from mediastore.env import (
    env_bool,
    env_duration,
    env_durations,
    env_int,
    env_list,
    env_optional_str,
    env_path,
    env_size,
    env_str,
    env_url,
)

# Lets the generic classes of django-stubs (ModelAdmin[Scene], QuerySet[Scene]) be subscripted at runtime.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = env_path("DATA_DIR", str(BASE_DIR / "var"))
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DJANGO_DEBUG", False)


def _secret_key() -> str:
    """``DJANGO_SECRET_KEY``, else one generated once and kept in ``$DATA_DIR/secret_key``.

    A self-hosted install then starts with no configuration and still never runs on a known key; web and
    worker starting together race on O_EXCL, and the loser reads the winner's key.
    """
    configured = env_optional_str("DJANGO_SECRET_KEY")
    if configured is not None:
        return configured
    path = DATA_DIR / "secret_key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text().strip()
        if not key:
            raise ImproperlyConfigured(
                f"DJANGO_SECRET_KEY: unset and {path} is empty; delete it or set the variable"
            ) from None
        return key
    key = secrets.token_urlsafe(50)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

# --- Database -------------------------------------------------------------------------------------------
_DB = database_config(
    env_optional_str("DATABASE_URL"),
    data_dir=DATA_DIR,
    database_name=env_optional_str("DATABASE_NAME"),
)
DATABASES = {"default": _DB.default}
DATABASE_IS_MONGODB = _DB.is_mongodb
DEFAULT_AUTO_FIELD = _DB.default_auto_field
MIGRATION_MODULES = _DB.migration_modules

INSTALLED_APPS = _DB.installed_apps(
    [
        "django.contrib.admin",
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django.contrib.messages",
        "django.contrib.staticfiles",
        "rest_framework",
        "drf_spectacular",
        "drf_spectacular_sidecar",
        "django_celery_results",
        "django_htmx",
        "scenes",
        "downloads",
    ]
)

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "mediastore.urls"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "scene-page"
LOGOUT_REDIRECT_URL = "login"
WSGI_APPLICATION = "mediastore.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env_path("STATIC_ROOT", str(DATA_DIR / "static"))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns on every start until collectstatic has run
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from app folders when collectstatic has not run (tests, a first `make run`).
WHITENOISE_USE_FINDERS = True

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "scenes.tokens.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["scenes.parsers.BoundedJSONParser", "rest_framework.parsers.FormParser",
                               "rest_framework.parsers.MultiPartParser"],
    "EXCEPTION_HANDLER": "scenes.api.error_envelope_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "mediastore API",
    "DESCRIPTION": "Store a media URL, follow its ingestion, retry, delete. Errors: {error: {code, message, fields}}.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The docs page works on a closed network: its assets are served by the app, not a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # An empty stage is "" in the enum itself, not a separate BlankEnum a generated client must juggle.
    "ENUM_ADD_EXPLICIT_BLANK_NULL_CHOICE": False,
    "ENUM_NAME_OVERRIDES": {"ErrorCodeEnum": "downloads.exceptions.ERROR_CODE_CHOICES"},
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "mediastore.schema.operations"],
}

# --- Celery ---------------------------------------------------------------------------------------------
CELERY_BROKER_URL: str = env_url(
    "CELERY_BROKER_URL", "redis://127.0.0.1:6379/0", schemes=("redis", "rediss", "sentinel", "memory")
)
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", "django-db")
CELERY_WORKER_CONCURRENCY = env_int("CELERY_WORKER_CONCURRENCY", 100, minimum=1)

# A message not acknowledged within the visibility timeout is handed to another worker: that is how a
# killed worker's task comes back (acks_late). The hard time limit must end a task before that, or a task
# still running would be delivered twice.
CELERY_BROKER_VISIBILITY_TIMEOUT = env_duration("CELERY_BROKER_VISIBILITY_TIMEOUT", 2 * 3600)
CELERY_TASK_TIME_LIMIT = env_duration("CELERY_TASK_TIME_LIMIT", CELERY_BROKER_VISIBILITY_TIMEOUT - 600)
CELERY_TASK_SOFT_TIME_LIMIT = env_duration("CELERY_TASK_SOFT_TIME_LIMIT", CELERY_TASK_TIME_LIMIT - 60)
if not CELERY_TASK_SOFT_TIME_LIMIT < CELERY_TASK_TIME_LIMIT < CELERY_BROKER_VISIBILITY_TIMEOUT:
    raise ImproperlyConfigured(
        "CELERY_TASK_SOFT_TIME_LIMIT < CELERY_TASK_TIME_LIMIT < CELERY_BROKER_VISIBILITY_TIMEOUT must hold, got "
        f"{CELERY_TASK_SOFT_TIME_LIMIT} / {CELERY_TASK_TIME_LIMIT} / {CELERY_BROKER_VISIBILITY_TIMEOUT} s"
    )

# --- Object storage -------------------------------------------------------------------------------------
R2_BUCKET = env_optional_str("R2_BUCKET")
R2_ENDPOINT_URL = env_url("R2_ENDPOINT_URL", None, schemes=("http", "https"))
R2_ACCESS_KEY_ID = env_optional_str("R2_ACCESS_KEY_ID")
R2_SECRET_ACCESS_KEY = env_optional_str("R2_SECRET_ACCESS_KEY")
R2_REGION = env_str("R2_REGION", "auto")
R2_PUBLIC_BASE_URL = env_url("R2_PUBLIC_BASE_URL", None, schemes=("http", "https"))
# Where browsers reach the store, when that is not where the app does (compose: the app uses http://minio:9000,
# a browser on the host http://localhost:9000). Presigned links are signed for this address.
R2_PRESIGN_ENDPOINT_URL = env_url("R2_PRESIGN_ENDPOINT_URL", None, schemes=("http", "https"))
# Declared when a multipart upload starts, so the store combines the parts' checksums instead of reading the
# whole object again at completion. R2 takes CRC32 as a composite checksum; `off` is for a store that refuses it.
R2_CHECKSUM_ALGORITHM = env_str("R2_CHECKSUM_ALGORITHM", "CRC32").upper()
if R2_CHECKSUM_ALGORITHM in {"OFF", "NONE"}:
    R2_CHECKSUM_ALGORITHM = ""
if R2_CHECKSUM_ALGORITHM not in {"", "CRC32"}:
    raise ImproperlyConfigured(f"R2_CHECKSUM_ALGORITHM: CRC32 or off, got {R2_CHECKSUM_ALGORITHM!r}")
if (R2_ACCESS_KEY_ID is None) != (R2_SECRET_ACCESS_KEY is None):
    raise ImproperlyConfigured("R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY: set both or neither")
if R2_BUCKET is None and any((R2_ENDPOINT_URL, R2_ACCESS_KEY_ID, R2_PUBLIC_BASE_URL)):
    raise ImproperlyConfigured("R2_BUCKET: required when any other R2_* variable is set")
# Where objects go when R2_BUCKET is unset (the embedded default).
MEDIA_ROOT = DATA_DIR / "media"

# --- Media pipeline -------------------------------------------------------------------------------------
MEDIA_MAX_FILESIZE = env_size("MEDIA_MAX_FILESIZE", 2 * 1024**3)
MEDIA_MAX_DURATION = env_duration("MEDIA_MAX_DURATION", 4 * 3600)
MEDIA_DOWNLOAD_TIMEOUT = env_duration("MEDIA_DOWNLOAD_TIMEOUT", 3600)
# A source that sends less than MEDIA_MIN_THROUGHPUT bytes per second, measured over MEDIA_THROUGHPUT_WINDOW
# seconds, fails as a timeout and is not retried: a drip would hold a worker slot for the whole download
# timeout otherwise. 0 turns the check off.
MEDIA_MIN_THROUGHPUT = env_size("MEDIA_MIN_THROUGHPUT", 16 * 1024)
MEDIA_THROUGHPUT_WINDOW = env_duration("MEDIA_THROUGHPUT_WINDOW", 60)
# Resources one job may use: address space of yt-dlp, ffmpeg and ffprobe; a page or manifest read by yt-dlp;
# width x height of a video (refused after probing, before the thumbnail decodes a frame).
MEDIA_CHILD_MEMORY = env_size("MEDIA_CHILD_MEMORY", 1024**3)
MEDIA_MAX_MANIFEST = env_size("MEDIA_MAX_MANIFEST", 16 * 1024**2)
MEDIA_MAX_PIXELS = env_int("MEDIA_MAX_PIXELS", 4096 * 2304, minimum=1)
# Scenes one person may have queued or processing at once; more is a 429 at store and retry.
MEDIA_MAX_ACTIVE_PER_OWNER = env_int("MEDIA_MAX_ACTIVE_PER_OWNER", 20, minimum=1)
# Seconds without a byte from the source before yt-dlp gives up on a connection (a stalled server).
MEDIA_SOCKET_TIMEOUT = env_duration("MEDIA_SOCKET_TIMEOUT", 30)
# --use-extractors: the sites we support plus generic; fewer extractors halve yt-dlp's start-up.
# html5 is what reads a page's <video src>; generic alone answered "Unsupported URL" for it.
# Each job's yt-dlp is forked from a helper process that imported yt-dlp once (downloads.ytdlp_forkserver):
# importing it was most of a small clip's CPU. Off: a plain subprocess per job, as before.
MEDIA_YTDLP_HELPER = env_bool("MEDIA_YTDLP_HELPER", True)
MEDIA_YTDLP_EXTRACTORS = env_list("MEDIA_YTDLP_EXTRACTORS", ["reddit", "youtube", "generic", "html5"])
MEDIA_MAX_ATTEMPTS = env_int("MEDIA_MAX_ATTEMPTS", 3, minimum=1)
MEDIA_RETRY_BACKOFF = env_duration("MEDIA_RETRY_BACKOFF", 30)
# A processing scene whose heartbeat is older than this may be taken over by a redelivered task.
MEDIA_STALE_AFTER = env_duration("MEDIA_STALE_AFTER", 300)
# Every worker sweeps this often (and once at start): stale processing scenes are queued again or failed as
# worker_lost, and scenes queued for longer than MEDIA_RESEND_AFTER are sent again (a lost enqueue).
MEDIA_SWEEP_INTERVAL = env_duration("MEDIA_SWEEP_INTERVAL", 60)
MEDIA_RESEND_AFTER = env_duration("MEDIA_RESEND_AFTER", 600)
# On warm shutdown running jobs get this long to finish; then they are cancelled and handed back (queued).
MEDIA_SHUTDOWN_GRACE = env_duration("MEDIA_SHUTDOWN_GRACE", 10)
# A worker that has taken nothing for this long while the queue is not empty and it has free slots is
# reported as stalled by /readyz, check_pipeline and the container healthcheck.
MEDIA_WORKER_STALL_AFTER = env_duration("MEDIA_WORKER_STALL_AFTER", 120)
# Full paths: yt-dlp's --ffmpeg-location takes a path, and with a bare name it silently skipped merging.
FFMPEG_PATH = env_str("FFMPEG_PATH", shutil.which("ffmpeg") or "ffmpeg")
FFPROBE_PATH = env_str("FFPROBE_PATH", shutil.which("ffprobe") or "ffprobe")


def _bundled_deno() -> str:
    try:
        from deno import find_deno_bin  # type: ignore[import-untyped]  # the pinned "deno" package
    except ImportError:
        return shutil.which("deno") or ""
    return str(find_deno_bin())


# The JavaScript runtime yt-dlp solves YouTube's challenges with (with the pinned yt-dlp-ejs scripts); since
# yt-dlp 2025.11 YouTube loses formats without one. A path to deno, node or bun; "none" turns it off.
MEDIA_JS_RUNTIME = env_str("MEDIA_JS_RUNTIME", _bundled_deno() or "none")

if MEDIA_DOWNLOAD_TIMEOUT >= CELERY_TASK_SOFT_TIME_LIMIT:
    raise ImproperlyConfigured(
        f"MEDIA_DOWNLOAD_TIMEOUT ({MEDIA_DOWNLOAD_TIMEOUT:g}s) must be below CELERY_TASK_SOFT_TIME_LIMIT "
        f"({CELERY_TASK_SOFT_TIME_LIMIT:g}s), so a slow download fails with 'timeout' before the task is cut off"
    )

# Each job's temporary folder is made in TMPDIR: one that is missing or not writable would be silently
# replaced by /tmp (Python's tempfile), so it stops start-up instead.
_TMPDIR = os.environ.get("TMPDIR")
if _TMPDIR and not (os.path.isdir(_TMPDIR) and os.access(_TMPDIR, os.W_OK | os.X_OK)):
    raise ImproperlyConfigured(f"TMPDIR: {_TMPDIR!r} is not a writable folder")

# --- Cache (throttle counters) ----------------------------------------------------------------------------
# Per process by default; set CACHE_URL=redis://… so every web process counts against the same limit.
CACHE_URL = env_url("CACHE_URL", None, schemes=("redis", "rediss"))
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}
    if CACHE_URL
    else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
}

# --- Submissions ----------------------------------------------------------------------------------------
# CIDRs a submitted URL may resolve to although they are not global (tests: the loopback media server).
MEDIA_ALLOWED_NETWORKS = env_list("MEDIA_ALLOWED_NETWORKS", [])
for _network in MEDIA_ALLOWED_NETWORKS:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError:
        raise ImproperlyConfigured(f"MEDIA_ALLOWED_NETWORKS: {_network!r} is not a CIDR such as 10.0.0.0/8") from None
MEDIA_ALLOWED_NETWORKS = [str(ipaddress.ip_network(n, strict=False)) for n in MEDIA_ALLOWED_NETWORKS]
# When set, only these domains (and their subdomains) may be submitted.
MEDIA_ALLOWED_HOSTS = env_list("MEDIA_ALLOWED_HOSTS", [])
MEDIA_STORE_RATE = env_str("MEDIA_STORE_RATE", "60/min")
# Where the worker reaches the web (compose: http://web:8000). Set, `check_pipeline --e2e` has the web serve
# its sample and that check's job alone may fetch from exactly this host and port (``scenes.check_sample``);
# unset, the check serves the sample from the loopback of the process that runs it.
PIPELINE_CHECK_SAMPLE_ORIGIN = env_url("PIPELINE_CHECK_SAMPLE_ORIGIN", None, schemes=("http", "https"))
if PIPELINE_CHECK_SAMPLE_ORIGIN:
    _origin = urlsplit(PIPELINE_CHECK_SAMPLE_ORIGIN)
    if _origin.path not in ("", "/") or _origin.query or _origin.fragment or "@" in _origin.netloc:
        raise ImproperlyConfigured(f"PIPELINE_CHECK_SAMPLE_ORIGIN: expected scheme://host[:port] only, got "
                                   f"{PIPELINE_CHECK_SAMPLE_ORIGIN!r}")
    PIPELINE_CHECK_SAMPLE_ORIGIN = f"{_origin.scheme}://{_origin.netloc}"

# --- Live messages (cancels, the live stream) -----------------------------------------------------------
# Redis for messages that are not tasks; the broker's by default.
REDIS_URL = env_url("REDIS_URL", CELERY_BROKER_URL, schemes=("redis", "rediss"))
# The live stream (GET /api/v1/scenes/events) keeps about this many events for clients that resume, and
# sends a comment this often on a quiet stream so that proxies keep it open.
LIVE_STREAM_MAXLEN = env_int("LIVE_STREAM_MAXLEN", 10_000, minimum=100)
LIVE_HEARTBEAT = env_duration("LIVE_HEARTBEAT", 15)

# --- Webhooks -------------------------------------------------------------------------------------------
# Seconds between a failed delivery and its next attempt; after the last one the delivery fails and its
# endpoint is marked failing. Each delay gets ±20 % jitter. The default: 8 attempts over about 27 hours.
WEBHOOK_RETRY_DELAYS = env_durations("WEBHOOK_RETRY_DELAYS", ["5s", "5m", "30m", "2h", "5h", "10h", "10h"])
# One attempt's whole budget (connect, send, answer); a slow receiver costs a delivery slot, never a job.
WEBHOOK_TIMEOUT = env_duration("WEBHOOK_TIMEOUT", 10)
# After a secret is rotated, deliveries are signed with the old one too for this long.
WEBHOOK_ROTATION_OVERLAP = env_duration("WEBHOOK_ROTATION_OVERLAP", 24 * 3600)

# --- Metrics --------------------------------------------------------------------------------------------
# Scrapers send it as "Authorization: Bearer <token>". Unset: the web's /metrics answers 404 (metrics are
# off) and the worker opens no metrics port. A short token is refused: it would protect nothing.
METRICS_TOKEN = env_optional_str("METRICS_TOKEN")
METRICS_TOKEN_MIN_LENGTH = 16
if METRICS_TOKEN is not None and len(METRICS_TOKEN) < METRICS_TOKEN_MIN_LENGTH:
    raise ImproperlyConfigured(f"METRICS_TOKEN: at least {METRICS_TOKEN_MIN_LENGTH} characters "
                               "(e.g. `openssl rand -hex 32`)")
# Each worker process serves its own metrics on this port (0: none). Loopback by default; a container sets
# 0.0.0.0 so that Prometheus on the compose network can reach it.
MEDIA_WORKER_METRICS_PORT = env_int("MEDIA_WORKER_METRICS_PORT", 0, minimum=0)
if MEDIA_WORKER_METRICS_PORT > 65535:
    raise ImproperlyConfigured(f"MEDIA_WORKER_METRICS_PORT: at most 65535, got {MEDIA_WORKER_METRICS_PORT}")
MEDIA_WORKER_METRICS_HOST = env_str("MEDIA_WORKER_METRICS_HOST", "127.0.0.1")

# --- Logging --------------------------------------------------------------------------------------------
LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(f"LOG_LEVEL: expected DEBUG, INFO, WARNING, ERROR or CRITICAL, got {LOG_LEVEL!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
}

# --- Celery, fixed policy -------------------------------------------------------------------------------
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_RESULT_EXTENDED = True
# One result backend per process, not one per thread (Celery's default). Under ASGI every request's sync part
# runs in a thread of its own (Django's ThreadSensitiveContext), so each store request built a new backend
# on its publish (0.2-0.3 ms of CPU); the django-db backend keeps no per-thread state of its own (the ORM's
# connections are per thread anyway).
CELERY_RESULT_BACKEND_THREAD_SAFE = True
CELERY_TASK_TRACK_STARTED = True
# Ack after the task ran, so a worker that dies mid-task leaves the message to be delivered again; the
# tasks are idempotent for exactly this reason.
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
# Webhook deliveries have a queue of their own, consumed by a worker of their own (`make run`, compose): a
# flood of events to a slow receiver then takes no slot a download needs. One worker may take both queues
# (`-Q celery,webhooks`), as the tests' workers do.
WEBHOOK_QUEUE = "webhooks"
CELERY_TASK_ROUTES = {"scenes.deliver_webhook": {"queue": WEBHOOK_QUEUE}}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_BROKER_VISIBILITY_TIMEOUT,
    # kombu's Redis pool defaults to 10 connections and raises instead of waiting when it runs out: with
    # -P gevent -c 100, 59-67 of 100 acks failed with MaxConnectionsError. mediastore.celery raises this
    # to the worker's real -c at start-up.
    "max_connections": CELERY_WORKER_CONCURRENCY + 20,
    # Without an event loop (the gevent pool) kombu restores unacked messages only when a poll comes back
    # empty. The gevent worker polls with a 2 s timeout, and BRPOP's default 1 s timeout answers first
    # (an empty reply is still a readable socket), so no poll was ever empty and a killed worker's task was
    # never put back. polling_interval is the BRPOP timeout: above 2 s, an idle poll is empty every 2 s.
    # A BRPOP that is still waiting returns a new message at once, so this adds no latency.
    "polling_interval": 5,
    # ...and scan on every empty poll, not every tenth, so a lost task returns within a poll or two of its
    # visibility timeout.
    "unacked_restore_throttle": 1,
    # A publish that finds the broker down fails at once instead of retrying the connection for 6 s (kombu's
    # default: a store request answered 202 only after 6 s). Nothing is lost: the scene or delivery is in the
    # database and the sweeper sends it again. A worker's consumer reconnects with Celery's own retries
    # (CELERY_BROKER_CONNECTION_RETRY*), which pass their own limits.
    "max_retries": 0,
    "socket_connect_timeout": 5,
    "socket_timeout": 30,
}
