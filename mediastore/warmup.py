"""A web worker process made ready before it takes its first request (``post_worker_init`` in
``mediastore/gunicorn_conf.py``; sync and uvicorn workers alike, never the Celery worker or a command).

It also opens the process's idle SQLite connection (``mediastore.sqlite_wal``).

Left to the first request, the store path imports the task modules (``downloads.tasks`` pulls in the
pipeline and the object store's client, some 0.3 to 0.4 s of CPU), loads the result backend and opens the
broker connection: the first store request in every worker paid for all of it, under load the tail of the
whole server. A broker that cannot be reached here costs nothing but a warning: the web still starts, and
its store requests answer 202 while the sweeper sends their tasks later, as when the broker goes down at
any other time.
"""

from __future__ import annotations

import importlib
import logging
import time

logger = logging.getLogger(__name__)

# What the request paths import lazily (inside functions, to keep import cycles and the worker's start-up
# apart): the tasks the services enqueue, and what a scene's transition records and announces.
LAZY_MODULES = ("downloads.tasks", "scenes.tasks", "scenes.webhooks", "scenes.serializers")


def warm_web_process() -> None:
    """Never raises: whatever fails here fails again, with its error, on the request that needs it."""
    started = time.perf_counter()
    try:
        for name in LAZY_MODULES:
            importlib.import_module(name)
    except Exception:
        logger.warning("web worker warm-up: importing %s failed", name, exc_info=True)
        return
    broker = "broker connected"
    try:
        _connect_broker()
    except Exception as exc:  # kombu's OperationalError, a refused or timed-out connection, …
        broker = "broker unreachable"
        logger.warning("web worker warm-up: the broker did not answer (%s); store requests still answer and "
                       "their tasks are sent by the sweeper until it does", exc)
    database = _keep_wal_open()
    logger.info("web worker warmed: %s imported, %s%s, in %d ms", ", ".join(LAZY_MODULES), broker, database,
                (time.perf_counter() - started) * 1000)


def _keep_wal_open() -> str:
    from mediastore import sqlite_wal

    try:
        return ", SQLite WAL kept open" if sqlite_wal.keep_wal_open() else ""
    except Exception as exc:  # sqlite3.Error: a file that cannot be opened fails the first request the same way
        logger.warning("web worker warm-up: SQLite's WAL is not kept open (%s); each request's connection may "
                       "checkpoint it when it closes", exc)
        return ""


def _connect_broker() -> None:
    from mediastore.celery import app

    # The result backend is made on the first publish; one per process (CELERY_RESULT_BACKEND_THREAD_SAFE),
    # so this one serves every request's thread.
    app.backend  # noqa: B018
    app.amqp.send_task_message  # noqa: B018  # the sender (and its event dispatcher), built once per process
    # A producer from the pool the publishes take theirs from, connected and put back: the first store
    # request finds the connection open. max_retries=0 as for a publish: a broker that is down fails at once.
    with app.producer_or_acquire() as producer:
        producer.connection.ensure_connection(max_retries=0)
        producer.connection.default_channel  # noqa: B018  # for Redis: the client, its pool and a PING
        # The connection declares the queue before its first message (for Redis, the binding the worker
        # made already); done here, the first store request does not.
        producer.maybe_declare(app.amqp.queues[app.conf.task_default_queue], retry=False)
