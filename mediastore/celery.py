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
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

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
