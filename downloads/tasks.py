"""Celery tasks: thin, idempotent, given ids only. Their bodies are in the modules they call."""

from __future__ import annotations

import asyncio
import platform
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from celery.signals import worker_init, worker_ready, worker_shutdown
from celery.utils.log import get_task_logger

from downloads import bridge, pipeline
from downloads.asynctask import AsyncTask
from mediastore.celery import app as celery_app
from mediastore.fingerprint import config_fingerprint

logger = get_task_logger(__name__)

REPORTED_PACKAGES = ("celery", "kombu", "django", "gevent", "pymongo", "aiobotocore", "yt-dlp")


@worker_init.connect
def _start_bridge(**_: Any) -> None:
    # Start the loop with the worker, not on the first task, so a broken bridge fails the start-up.
    if bridge.gevent_is_active():
        bridge.bridge.start()


@worker_ready.connect
def _keep_children_ours(**_: Any) -> None:
    # The start-up banner ran a gevent subprocess, which armed gevent's SIGCHLD reaper; switch it off.
    if bridge.gevent_is_active():
        bridge.keep_children_ours()


@worker_shutdown.connect
def _stop_bridge(**_: Any) -> None:
    bridge.bridge.stop()


@celery_app.task(base=AsyncTask, name="downloads.hello_world")
async def hello_world() -> str:
    """The seed's step 1: proves an ``async def`` task runs on this worker."""
    logger.info("hello_world: running on the worker's asyncio loop")
    await asyncio.sleep(1)
    return "hello world"


@celery_app.task(base=AsyncTask, name="downloads.download_media_task")
async def download_media_task(mongo_db_id: str) -> str:
    """Ingest the scene with this primary key (its only argument, by design). Safe to run twice."""
    return await pipeline.ingest(scene_id=mongo_db_id)


@celery_app.task(base=AsyncTask, name="downloads.delete_scene_objects_task", max_retries=10)
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
    """What this worker runs and sees: versions, a settings fingerprint, job folders left in its temp dir."""
    leftovers = sorted(p.name for p in Path(tempfile.gettempdir()).glob(f"{pipeline.JOB_DIR_PREFIX}*"))
    return {"versions": package_versions(), "gevent_active": bridge.gevent_is_active(),
            "fingerprint": config_fingerprint(), "job_dirs": leftovers}
