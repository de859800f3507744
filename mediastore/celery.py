"""The Celery app. Configuration comes from Django settings under the ``CELERY_`` namespace."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import celeryd_init

from mediastore import broker_fixes

broker_fixes.apply()

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mediastore.settings")

app = Celery("mediastore")
app.autodiscover_tasks()


@app.on_configure.connect
def _read_django_settings(*, sender: Celery, **_: Any) -> None:
    # Django's CELERY_* settings, copied into a dict when Celery first configures itself, not read through
    # Django's lazy settings object at every lookup (`config_from_object("django.conf:settings")`). Celery
    # tries each setting under up to four names in each of its sources, and a miss on Django's object
    # costs two exceptions: publishing one task from a store request spent 0.9 M instructions on lookups,
    # a third of the publish (0.35 M from a dict). A setting changed in Django's settings later
    # (override_settings) no longer reaches Celery: change `celery_app.conf` instead.
    # The names are given as Celery's own (CELERY_TASK_SERIALIZER as task_serializer), as its namespace would
    # read them: under the namespace, the names Celery 3 also had were taken for its old ones, and every
    # worker's start warned that CELERY_ACCEPT_CONTENT and four more were deprecated (celery/celery#6366).
    from django.conf import settings

    prefix = "CELERY_"
    values = {name.removeprefix(prefix).lower(): getattr(settings, name)
              for name in dir(settings) if name.startswith(prefix)}
    values["TIME_ZONE"] = settings.TIME_ZONE  # Celery's fallback for its timezone, as it read it before
    sender.config_from_object(values)


# Connections a worker needs beyond one per task greenlet: the BRPOP consumer, heartbeats, publishing.
BROKER_POOL_HEADROOM = 20


def broker_pool_size(concurrency: int) -> int:
    return concurrency + BROKER_POOL_HEADROOM


@celeryd_init.connect
def _size_broker_pool(*, conf: Any, options: dict[str, Any], **_: Any) -> None:
    # -c on the command line wins over CELERY_WORKER_CONCURRENCY; the pool must follow the real number, or
    # acks start failing with MaxConnectionsError once more tasks than connections finish at once.
    concurrency = int(options.get("concurrency") or conf.worker_concurrency or 1)
    transport_options = dict(conf.broker_transport_options or {})
    transport_options["max_connections"] = max(
        int(transport_options.get("max_connections", 0)), broker_pool_size(concurrency)
    )
    conf.broker_transport_options = transport_options
