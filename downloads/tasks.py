"""Celery tasks: thin, idempotent, given ids only. Their bodies are in the modules they call."""

from __future__ import annotations

import asyncio
import logging
import platform
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from asgiref.sync import sync_to_async
from celery.signals import task_received, worker_init, worker_ready, worker_shutdown, worker_shutting_down
from celery.utils.log import get_task_logger
from django.conf import settings
from django.db import close_old_connections

from downloads import bridge, cancels, pipeline, ytdlp, ytdlp_helper
from downloads.asynctask import AsyncTask
from mediastore import liveness, metrics
from mediastore.celery import app as celery_app
from mediastore.fingerprint import config_fingerprint
from mediastore.prepared import KeptMessage

logger = get_task_logger(__name__)
worker_logger = logging.getLogger(__name__)  # outside a task: Celery's task logger would print ???[???]

# What the worker process runs beside its tasks: the sweeper and the liveness report (stop functions).
_background: list[Any] = []
_reporter: liveness.Reporter | None = None

REPORTED_PACKAGES = ("celery", "kombu", "django", "gevent", "pymongo", "aiobotocore", "yt-dlp", "yt-dlp-ejs", "deno")


@worker_init.connect
def _start_bridge(**_: Any) -> None:
    # Start the loop with the worker, not on the first task, so a broken bridge fails the start-up.
    if bridge.gevent_is_active():
        bridge.bridge.start()


@worker_ready.connect
def _worker_ready(sender: Any = None, **_: Any) -> None:
    global _reporter
    if not bridge.gevent_is_active():
        return
    # The start-up banner ran a gevent subprocess, which armed gevent's SIGCHLD reaper; switch it off.
    bridge.keep_children_ours()
    pipeline.remove_dead_job_dirs()
    consumer = sender
    hostname = getattr(consumer, "hostname", None) or liveness.default_hostname()
    concurrency = int(getattr(getattr(consumer, "pool", None), "limit", 0) or settings.CELERY_WORKER_CONCURRENCY)
    queues = tuple(sorted(celery_app.amqp.queues.consume_from or ())) or ("celery",)
    _reporter = liveness.Reporter(hostname=hostname, concurrency=concurrency, queues=queues)
    _background.append(bridge.every(liveness.REPORT_INTERVAL, _report, name="liveness report"))
    # The sweeper runs in every worker, at start (so a restart recovers what the last crash left) and then
    # periodically: no cron, no extra process, and it runs wherever work can run. Two workers sweeping at
    # once is harmless: every change is a conditional update.
    _background.append(bridge.every(settings.MEDIA_SWEEP_INTERVAL, _sweep, name="sweeper"))
    _background.append(bridge.background(cancels.listen, name="cancel listener"))
    if celery_app.conf.task_default_queue in queues:  # a worker that takes ingest jobs (not the webhooks one)
        _background.append(bridge.background(ytdlp_helper.start_early, name="yt-dlp helper start"))
    _serve_metrics(concurrency)


def _serve_metrics(concurrency: int) -> None:
    # Made here, not on the first job: a scrape of an idle worker shows its zeros and its slots.
    metrics.worker().concurrency.set(concurrency)
    if settings.MEDIA_WORKER_METRICS_PORT:
        stop = metrics.serve(host=settings.MEDIA_WORKER_METRICS_HOST, port=settings.MEDIA_WORKER_METRICS_PORT,
                             token=settings.METRICS_TOKEN)
        if stop is not None:
            _background.append(stop)


@task_received.connect
def _task_received(**_: Any) -> None:
    if _reporter is not None:
        _reporter.received()


def _report() -> None:
    from celery.worker import state

    if _reporter is not None:
        _reporter.report(active=len(state.active_requests))


def _sweep() -> None:
    from scenes import services, webhooks

    try:
        services.scenes_sweep()
        services.uploads_sweep()
        webhooks.webhooks_sweep()
    finally:
        close_old_connections()


@worker_shutting_down.connect
def _hand_back_after_grace(**_: Any) -> None:
    # Warm shutdown waits for running tasks; jobs that do not finish within the grace period are cancelled
    # and handed back to the queue (see pipeline._cancelled), so a stop never needs SIGKILL.
    if bridge.gevent_is_active():
        grace = float(settings.MEDIA_SHUTDOWN_GRACE)
        worker_logger.warning("warm shutdown: running jobs get %.0fs to finish, then they are handed back", grace)
        bridge.later(grace, lambda: bridge.bridge.cancel_all(bridge.SHUTDOWN))


@worker_shutdown.connect
def _stop_bridge(**_: Any) -> None:
    for stop in _background:
        stop()
    _background.clear()
    if _reporter is not None:
        _reporter.forget()
    bridge.bridge.stop()


@celery_app.task(base=AsyncTask, name="downloads.hello_world")
async def hello_world() -> str:
    """The seed's step 1: proves an ``async def`` task runs on this worker."""
    logger.info("hello_world: running on the worker's asyncio loop")
    await asyncio.sleep(1)
    return "hello world"


class _DownloadTask(KeptMessage, AsyncTask):  # KeptMessage: every store request sends one
    abstract = True

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        # The scene was deleted while it was being ingested: what the upload stored goes with a delete task
        # (retried while the store fails), sent from here because the pipeline runs on the loop thread.
        if retval == "deleted":
            from scenes import services

            services.scene_objects_delete(scene_id=args[0] if args else kwargs["mongo_db_id"])


@celery_app.task(base=_DownloadTask, name="downloads.download_media_task")
async def download_media_task(mongo_db_id: str) -> str:
    """Ingest the scene with this primary key (its only argument, by design). Safe to run twice."""
    return await pipeline.ingest(scene_id=mongo_db_id, origins=await _egress_origins(mongo_db_id))


async def _egress_origins(scene_id: str) -> tuple[str, ...]:
    # Read from the scene, never from the message: only check_pipeline's own scene gets one (see
    # scenes.check_sample), and nothing is read at all while no sample origin is configured.
    if not settings.PIPELINE_CHECK_SAMPLE_ORIGIN:
        return ()
    from scenes.check_sample import egress_origins

    return await sync_to_async(egress_origins)(scene_id=scene_id)


class _DeleteTask(AsyncTask):
    abstract = True

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        from scenes import services

        services.scene_objects_deleted(scene_id=args[0] if args else kwargs["scene_id"])


@celery_app.task(base=_DeleteTask, name="downloads.delete_scene_objects_task", max_retries=10)
async def delete_scene_objects_task(scene_id: str) -> int:
    """Delete every stored object of a deleted scene; retried with backoff while the store fails."""
    return await pipeline.delete_objects(scene_id=scene_id)


def package_versions() -> dict[str, str]:
    versions: dict[str, str] = {"python": platform.python_version()}
    for package in REPORTED_PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


@celery_app.task(name="downloads.worker_info")
def worker_info() -> dict[str, Any]:
    """What this worker runs and sees: versions, a settings fingerprint, job folders left in its temp dir, the
    JavaScript runtime yt-dlp gets."""
    leftovers = sorted(p.name for p in Path(tempfile.gettempdir()).glob(f"{pipeline.JOB_DIR_PREFIX}*"))
    return {"versions": package_versions(), "gevent_active": bridge.gevent_is_active(),
            "fingerprint": config_fingerprint(), "job_dirs": leftovers, "js_runtime": ytdlp.js_runtime_version()}
