"""Prometheus metrics of web and worker, and the two places they are served.

- **Web**: ``GET /metrics`` (``metrics_view``). Under gunicorn every worker process writes its samples to
  ``PROMETHEUS_MULTIPROC_DIR`` (set up by ``mediastore/gunicorn_conf.py``) and a scrape adds all processes
  up, whichever process answers it. Without that variable (tests, ``manage.py``) it serves this process.
  The queue depth is read from Redis at scrape time.
- **Worker**: each worker process serves its own registry on ``MEDIA_WORKER_METRICS_PORT`` (``serve``,
  started when the worker is ready): job counts and outcomes, stage durations, bytes, active jobs, webhook
  deliveries, and the process's CPU and memory.

Both need ``Authorization: Bearer <METRICS_TOKEN>``. Metrics are created by the process that owns them
(``web()``, ``worker()``), not at import: a web process in multiprocess mode would otherwise write a file of
zeros for every worker metric, and the scrape would show them as if the web ran jobs.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_safe
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer, choose_encoder
from prometheus_client.metrics_core import Metric

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

WEBHOOK_DELIVERIES = Counter("mediastore_webhook_deliveries_total", "Webhook delivery attempts by outcome",
                             ["outcome"])


def webhook_delivered(*, outcome: str) -> None:
    WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()


def _once(factory: Callable[[], _T]) -> Callable[[], _T]:
    """Like ``functools.cache`` on a factory without arguments, except that two threads making the first call
    at once get one object: the metrics register themselves on creation, and a second registration raises
    ``DuplicateTimeseries`` (a 500 for one of a web process's first concurrent store requests)."""
    lock = threading.Lock()
    made: list[_T] = []

    @functools.wraps(factory)
    def get() -> _T:
        if not made:
            with lock:
                if not made:
                    made.append(factory())
        return made[0]

    get.cache_clear = made.clear  # type: ignore[attr-defined]  # as functools.cache's, for tests
    return get


# --- What the web measures -----------------------------------------------------------------------------------


class _Web:
    def __init__(self) -> None:
        self.store_requests = Counter("mediastore_store_requests_total",
                                      "POST /api/v1/media/store answers by HTTP status", ["status"])
        self.store_latency = Histogram("mediastore_store_request_duration_seconds",
                                       "Time to answer POST /api/v1/media/store")


@_once
def web() -> _Web:
    return _Web()


def store_view(view: Callable[..., Any]) -> Callable[..., Any]:
    """Count and time every answer of the store view, refusals (401, 429, 4xx) included."""

    @functools.wraps(view)  # keeps csrf_exempt and the DRF class the schema generator reads
    def timed(request: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        status = 500  # what the client gets when the view raises
        try:
            response = view(request, *args, **kwargs)
            status = response.status_code
            return response
        finally:
            measured = web()
            measured.store_requests.labels(status=str(status)).inc()
            measured.store_latency.observe(time.perf_counter() - started)

    return timed


# Redis must answer within this at scrape time; a scrape that waits for a dead broker would time out whole.
QUEUE_DEPTH_TIMEOUT = 0.5


class QueueDepthCollector:
    """``mediastore_queue_depth{queue}``: tasks waiting in the broker, read at scrape time. When Redis does
    not answer within ``QUEUE_DEPTH_TIMEOUT`` the depth is left out (not 0, which would read as "idle") and
    ``mediastore_broker_up`` is 0."""

    def __init__(self, queues: Iterable[str] | None = None) -> None:
        self._queues = list(queues) if queues is not None else None

    def collect(self) -> Iterator[Metric]:
        from mediastore import liveness
        from mediastore.celery import app

        queues = self._queues or [str(app.conf.task_default_queue)]
        client = liveness.broker_redis(timeout=QUEUE_DEPTH_TIMEOUT)
        if client is None:  # not a Redis broker: nothing to read
            return
        up = GaugeMetricFamily("mediastore_broker_up", "1 when the broker answered the queue-depth read")
        depth = GaugeMetricFamily("mediastore_queue_depth", "Tasks waiting in the broker queue", labels=["queue"])
        try:
            lengths = {queue: liveness.queue_length(client, queue) for queue in queues}
        except Exception as exc:  # any failure is the answer: the depth is unknown
            logger.warning("metrics: queue depth not read: %s: %s", type(exc).__name__, exc)
            up.add_metric([], 0)
            yield up
            return
        finally:
            client.close()
        up.add_metric([], 1)
        for queue, length in lengths.items():
            depth.add_metric([queue], length)
        yield up
        yield depth


class _Forward:
    """Another registry's metrics, inside a registry of one scrape."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        return self._registry.collect()


def web_registry() -> CollectorRegistry:
    """What one web scrape shows: every gunicorn process's samples (multiprocess mode) or this process's,
    and the queue depth."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Forward(REGISTRY))
    registry.register(QueueDepthCollector())
    return registry


# --- What the worker measures --------------------------------------------------------------------------------

# "probe" includes the thumbnail: one child makes both where the worker has a yt-dlp helper.
STAGES = ("download", "probe", "upload")
# From a short probe to a long download; the download timeout is 1 h by default.
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)


class _Worker:
    def __init__(self) -> None:
        self.jobs_started = Counter("mediastore_jobs_started_total", "Ingest runs started (the scene was claimed)")
        self.jobs_finished = Counter("mediastore_jobs_finished_total", "Ingest runs ended, by outcome and error code",
                                     ["outcome", "error_code"])
        self.stage_seconds = Histogram("mediastore_stage_duration_seconds", "Duration of each ingest stage",
                                       ["stage"], buckets=STAGE_BUCKETS)
        self.ingested_bytes = Counter("mediastore_ingested_bytes_total", "Size of the media of completed runs")
        self.active_jobs = Gauge("mediastore_worker_active_jobs", "Ingest runs in progress in this worker process")
        self.concurrency = Gauge("mediastore_worker_concurrency", "Task slots of this worker process")
        # Present from the start, so rate() and the dashboard have a series before the first job ends.
        for stage in STAGES:
            self.stage_seconds.labels(stage=stage)
        self.jobs_finished.labels(outcome="completed", error_code="")


@_once
def worker() -> _Worker:
    return _Worker()


# --- The token check, shared by web and worker ---------------------------------------------------------------


def authorized(header: str | None, token: str | None) -> bool:
    """``header`` is an ``Authorization`` value; true only for ``Bearer <token>`` with the configured token."""
    if not token or not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Constant time: how much of a guess matched must not show in the answer's timing.
    return hmac.compare_digest(given.strip().encode(), token.encode())


@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics`` of the web. 404 when ``METRICS_TOKEN`` is unset (metrics are off), 401 without the
    right bearer token."""
    token = settings.METRICS_TOKEN
    if not token:
        raise Http404("metrics are off")
    if not authorized(request.headers.get("Authorization"), token):
        refused = HttpResponse("A bearer token is required.\n", status=401, content_type="text/plain")
        refused["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return refused
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(web_registry()), content_type=content_type)


# --- The worker's metrics server -----------------------------------------------------------------------------


def protected(app: Callable[..., Any], token: str) -> Callable[..., Any]:
    """A WSGI app that answers only ``/metrics``, and only with the bearer token."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"Not found.\n"]
        if not authorized(environ.get("HTTP_AUTHORIZATION"), token):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                 ("WWW-Authenticate", 'Bearer realm="metrics"')])
            return [b"A bearer token is required.\n"]
        return app(environ, start_response)

    return guarded


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  # the base class's name
        pass  # a scrape every 15 s is not worth a log line


def _server_class(host: str) -> type[WSGIServer]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Server(ThreadingWSGIServer):
        address_family = family

    return Server


def serve(*, host: str, port: int, token: str | None,
          registry: CollectorRegistry = REGISTRY) -> Callable[[], None] | None:
    """Serve ``registry`` on ``host:port`` in a thread of its own (a greenlet in the gevent worker); returns a
    function that stops it, or None when nothing could be served. Never raises: a worker without metrics is
    still a worker, and a second worker on the same host finds the port taken."""
    if not token:
        logger.warning("metrics: MEDIA_WORKER_METRICS_PORT is set but METRICS_TOKEN is not; this worker serves "
                       "no metrics")
        return None
    try:
        server = make_server(host, port, protected(make_wsgi_app(registry), token), _server_class(host),
                             handler_class=_QuietHandler)
    except OSError as exc:
        logger.warning("metrics: cannot listen on %s:%d (%s); this worker serves no metrics", host, port,
                       exc.strerror or exc)
        return None
    thread = threading.Thread(target=server.serve_forever, name="metrics server", daemon=True)
    thread.start()
    logger.info("metrics: serving on http://%s:%d/metrics", host, server.server_port)

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop
