"""The ingest pipeline, in order: claim → download → probe → thumbnail → upload → complete (or fail).

Every step is async and runs on the worker's loop (see ``downloads.bridge``). Status writes go through
``downloads.updates`` by primary key only. The job's temp folder is removed on every way out: success,
failure and cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from downloads import media, storage, updates, ytdlp
from downloads.exceptions import DownloadTimeoutError, InternalError, MediastoreError, RetryLater, StorageError
from scenes.models import Scene

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL = 1.0  # at most one progress write a second
HEARTBEAT_INTERVAL = 10.0  # and one every ten seconds even when nothing moves (uploads, merges)
JOB_DIR_PREFIX = "mediastore-job-"


class _ProgressReporter:
    """Writes progress and stage at most once a second; the scene's heartbeat in between."""

    def __init__(self, scene_id: str) -> None:
        self.scene_id = scene_id
        self._last_write = 0.0
        self._last: tuple[str, int | None] | None = None

    async def __call__(self, progress: ytdlp.Progress) -> None:
        value = int(progress.percent) if progress.percent is not None else None
        current = (progress.stage, value)
        now = time.monotonic()
        same_stage = self._last is not None and current[0] == self._last[0]
        if current == self._last or (same_stage and now - self._last_write < PROGRESS_INTERVAL):
            return
        self._last, self._last_write = current, now
        await updates.heartbeat(scene_id=self.scene_id, stage=progress.stage, progress=value)

    async def stage(self, stage: str, progress: int | None = None) -> None:
        self._last, self._last_write = (stage, progress), time.monotonic()
        await updates.heartbeat(scene_id=self.scene_id, stage=stage, progress=progress)


async def _keep_heartbeat(scene_id: str) -> None:
    while True:
        await asyncio.sleep(HEARTBEAT_INTERVAL)
        await updates.heartbeat(scene_id=scene_id)


async def ingest(*, scene_id: str) -> str:
    """Ingest one scene; returns what happened (``completed``, ``failed`` or why nothing was done)."""
    claim = await updates.claim(scene_id=scene_id, stale_after=settings.MEDIA_STALE_AFTER)
    if not claim.claimed:
        logger.info("ingest %s: nothing to do (%s)", scene_id, claim.reason)
        return claim.reason
    logger.info("ingest %s: %s, attempt %d", scene_id, claim.reason, claim.attempts)
    try:
        # The temp folder is gone before the scene's final status is written, so whoever sees
        # "completed" or "failed" also sees the clean-up done.
        fields = await _in_job_dir(scene_id, claim)
        await _complete(scene_id, fields)
        return "completed"
    except MediastoreError as error:
        return await _failed(scene_id, error, claim.attempts)
    except SoftTimeLimitExceeded:
        return await _failed(scene_id, DownloadTimeoutError("The job ran past its time limit."), attempts=None)
    except Exception:
        logger.exception("ingest %s: unexpected error", scene_id)
        return await _failed(scene_id, InternalError(), attempts=None)


async def _in_job_dir(scene_id: str, claim: updates.Claim) -> dict[str, Any]:
    job_dir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=f"{JOB_DIR_PREFIX}{scene_id}-"))
    heartbeat = asyncio.create_task(_keep_heartbeat(scene_id))
    try:
        return await _run(scene_id, claim, job_dir)
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
        # Shielded: a cancelled job (hard limit) must still leave no temp folder behind.
        await asyncio.shield(asyncio.to_thread(shutil.rmtree, job_dir, True))


async def _run(scene_id: str, claim: updates.Claim, job_dir: Path) -> dict[str, Any]:
    """Download, probe, thumbnail and upload; returns the fields the completed scene gets."""
    reporter = _ProgressReporter(scene_id)
    steps: dict[str, float] = {}
    mark = time.monotonic()

    def step(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        steps[name], mark = now - mark, now

    result = await ytdlp.download(claim.source_url, job_dir=job_dir, on_progress=reporter)
    step("download")
    await reporter.stage(Scene.Stage.POSTPROCESSING)
    info = await media.probe(result.path)
    step("probe")
    thumb = await media.thumbnail(result.path, info, into=job_dir)
    step("thumbnail")
    await reporter.stage(Scene.Stage.UPLOADING)
    store = storage.get_storage()
    key = storage.media_key(scene_id, result.path.suffix)
    await store.upload(result.path, key=key, content_type=info.content_type)
    thumb_key = ""
    if thumb is not None:
        try:
            await store.upload(thumb, key=storage.thumbnail_key(scene_id), content_type="image/jpeg")
            thumb_key = storage.thumbnail_key(scene_id)
        except StorageError as error:  # the thumbnail is best effort; the media is what matters
            logger.warning("ingest %s: thumbnail not stored: %s", scene_id, error.message)
    step("upload")
    fields: dict[str, Any] = {
        "storage_key": key, "thumbnail_key": thumb_key, "duration": info.duration, "width": info.width,
        "height": info.height, "size_bytes": info.size_bytes, "video_codec": info.video_codec,
        "audio_codec": info.audio_codec, "content_type": info.content_type,
    }
    if not claim.title and result.title:
        fields["title"] = result.title
    timings = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in steps.items())
    logger.info("ingest %s: stored %s bytes at %s (%s)", scene_id, info.size_bytes, key, timings)
    return fields


async def _complete(scene_id: str, fields: dict[str, Any]) -> None:
    if await updates.complete(scene_id=scene_id, fields=fields):
        logger.info("ingest %s: completed", scene_id)
    elif not await updates.exists(scene_id=scene_id):
        # Deleted while we worked: its deletion task may have run before this upload; leave nothing.
        removed = await storage.get_storage().delete_prefix(storage.scene_prefix(scene_id))
        logger.info("ingest %s: the scene was deleted meanwhile; removed %d stored objects", scene_id, removed)
    else:
        logger.warning("ingest %s: stored, but the scene was moved meanwhile (taken over)", scene_id)


async def _failed(scene_id: str, error: MediastoreError, attempts: int | None) -> str:
    if error.retryable and attempts is not None and attempts < settings.MEDIA_MAX_ATTEMPTS:
        countdown = settings.MEDIA_RETRY_BACKOFF * 2 ** (attempts - 1)
        logger.warning("ingest %s: %s (%s); retry %d of %d in %.0fs", scene_id, error.code, error.message,
                       attempts, settings.MEDIA_MAX_ATTEMPTS - 1, countdown)
        if await updates.requeue_for_retry(scene_id=scene_id, code=error.code, message=error.message):
            raise RetryLater(error, countdown)
        return "moved"
    logger.warning("ingest %s: failed with %s: %s", scene_id, error.code, error.message)
    await updates.fail(scene_id=scene_id, code=error.code, message=error.message)
    return "failed"


async def delete_objects(*, scene_id: str) -> int:
    """Delete everything stored under a scene's prefix; transient store errors ask for a retry."""
    try:
        removed = await storage.get_storage().delete_prefix(storage.scene_prefix(scene_id))
    except StorageError as error:
        if error.retryable:
            raise RetryLater(error) from error
        raise
    logger.info("delete %s: removed %d stored objects", scene_id, removed)
    return removed
