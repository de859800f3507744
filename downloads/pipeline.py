"""The ingest pipeline, in order: claim → download → probe → thumbnail → upload → complete (or fail).

Every step is async and runs on the worker's loop (see ``downloads.bridge``). Status changes go through
``scenes.lifecycle`` by primary key only; this module knows no model. The job's temp folder is removed on
every way out: success, failure and cancellation.

Every claimed scene leaves ``processing`` on every way out the worker lives through: completed; failed
(permanent errors, attempts used up, the soft or hard time limit); queued again (a transient error with
attempts left, or a warm shutdown that handed the job back). Only a worker that dies outright leaves it in
``processing``, and then the sweeper or a redelivered task takes it over once its heartbeat is stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from django.conf import settings

from downloads import bridge, cancels, egress, job_metrics, media, storage, ytdlp
from downloads.exceptions import (
    DiskFullError,
    DownloadTimeoutError,
    InternalError,
    MediastoreError,
    NetworkError,
    RetryLater,
    StorageError,
    TempDirError,
    UnsupportedUrlError,
    UrlNotAllowedError,
    WorkerShutdownError,
)
from scenes import lifecycle
from scenes.lifecycle import Stage

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL = 1.0  # at most one progress write a second
HEARTBEAT_INTERVAL = 10.0  # and one every ten seconds even when nothing moves (uploads, merges)


def _heartbeat_interval() -> float:
    # Well inside MEDIA_STALE_AFTER, or a live job would look dead to the sweeper.
    return min(HEARTBEAT_INTERVAL, float(settings.MEDIA_STALE_AFTER) / 3)
JOB_DIR_PREFIX = "mediastore-job-"
HAND_BACK_DELAY = 10.0  # seconds before a job handed back at shutdown may run again
HARD_LIMIT_DISCARD = 1.0  # of the hard limit's grace, for removing what the run stored


class _ProgressReporter:
    """Writes progress and stage at most once a second; the scene's heartbeat in between."""

    def __init__(self, scene_id: str, attempt: int) -> None:
        self.scene_id = scene_id
        self.attempt = attempt
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
        await self._write(stage=progress.stage, progress=value)

    async def stage(self, stage: str, progress: int | None = None) -> None:
        self._last, self._last_write = (stage, progress), time.monotonic()
        await self._write(stage=stage, progress=progress)

    async def _write(self, **changes: Any) -> None:
        if not await lifecycle.heartbeat(scene_id=self.scene_id, attempt=self.attempt, **changes):
            _lost_the_scene(self.scene_id)


def _lost_the_scene(scene_id: str) -> None:
    # Taken over, queued again or deleted while we worked: stop, leave the scene to whoever has it now.
    logger.warning("ingest %s: the scene is no longer this run's; stopping", scene_id)
    bridge.cancel_current(bridge.MOVED)


async def _keep_heartbeat(scene_id: str, attempt: int) -> None:
    while True:
        await asyncio.sleep(_heartbeat_interval())
        try:
            alive = await lifecycle.heartbeat(scene_id=scene_id, attempt=attempt)
        except Exception:
            # A database hiccup (a locked SQLite file, a MongoDB failover) must not end the heartbeat while
            # the job goes on: the sweeper would take the scene over from a live worker.
            logger.warning("ingest %s: heartbeat not written; trying again", scene_id, exc_info=True)
            continue
        if not alive:
            _lost_the_scene(scene_id)
            return


async def ingest(*, scene_id: str, origins: tuple[str, ...] = ()) -> str:
    """Ingest one scene; returns what happened (``completed``, ``failed``, ``retry``, ``deleted`` or why
    nothing was done). ``origins``: URLs whose exact host and port this job may fetch from beyond the address
    policy (``downloads.egress``); the task gives them to check_pipeline's own scene only."""
    policy = egress.settings_policy().with_origins(origins)
    claim = await lifecycle.claim(scene_id=scene_id, stale_after=settings.MEDIA_STALE_AFTER,
                                  max_attempts=settings.MEDIA_MAX_ATTEMPTS)
    if not claim.claimed:
        logger.info("ingest %s: nothing to do (%s)", scene_id, claim.reason)
        return claim.reason
    logger.info("ingest %s: %s, attempt %d", scene_id, claim.reason, claim.attempts)
    with cancels.cancellable(scene_id), job_metrics.run() as run:
        return run.ended(await _ingest_claimed(scene_id, claim, policy))


async def _ingest_claimed(scene_id: str, claim: lifecycle.Claim, policy: egress.Policy) -> str:
    try:
        # The temp folder is gone before the scene's final status is written, so whoever sees
        # "completed" or "failed" also sees the clean-up done.
        fields = await _in_job_dir(scene_id, claim, policy)
        return await _complete(scene_id, claim, fields)
    except MediastoreError as error:
        return await _failed(scene_id, claim, error)
    except asyncio.CancelledError:
        return await _cancelled(scene_id, claim)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            return await _failed(scene_id, claim, DiskFullError())
        logger.exception("ingest %s: unexpected error", scene_id)
        return await _failed(scene_id, claim, InternalError(), retry=False)
    except Exception:
        logger.exception("ingest %s: unexpected error", scene_id)
        return await _failed(scene_id, claim, InternalError(), retry=False)


async def _cancelled(scene_id: str, claim: lifecycle.Claim) -> str:
    """The run was cancelled. The soft limit fails the scene and the task ends normally; the hard limit
    fails it too (the greenlet then reports the limit); a worker shutdown hands it back (queued, the attempt
    not counted) and asks for the task to be sent again; a run that lost its scene just stops. Anything
    else (an unexplained cancel) queues the scene again with the attempt counted, for the sweeper."""
    reason = bridge.cancel_reason()
    task = asyncio.current_task()
    assert task is not None
    if reason == bridge.SOFT_LIMIT:
        task.uncancel()
        return await _failed(scene_id, claim, DownloadTimeoutError(
            f"The job ran past its time limit ({settings.CELERY_TASK_SOFT_TIME_LIMIT:g} s) and was stopped."),
            retry=False)
    if reason in (bridge.MOVED, bridge.CANCELLED):
        task.uncancel()
        return await _moved(scene_id, claim, "stopped:")
    if reason == bridge.HARD_LIMIT:
        # Shielded: the greenlet gives the run a short grace to write this, and nothing may cut it short.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(_discard_stored(scene_id)), HARD_LIMIT_DISCARD)
        await asyncio.shield(lifecycle.fail(scene_id=scene_id, attempt=claim.attempts, code=DownloadTimeoutError.code,
                                            message=f"The job ran past its hard time limit "
                                                    f"({settings.CELERY_TASK_TIME_LIMIT:g} s) and was stopped."))
        raise asyncio.CancelledError
    if reason == bridge.SHUTDOWN:
        released = await asyncio.shield(lifecycle.release(scene_id=scene_id, attempt=claim.attempts))
    else:
        released = await asyncio.shield(lifecycle.retry_later(
            scene_id=scene_id, attempt=claim.attempts, code=InternalError.code,
            message="The job was interrupted; it will be tried again."))
    logger.warning("ingest %s: cancelled (%s); %s", scene_id, reason or "no reason given",
                   "handed back to the queue" if released else "the scene had moved meanwhile")
    if reason == bridge.SHUTDOWN and released:
        task.uncancel()
        # Sent again with a delay: a worker that is shutting down may still take a message, and one due
        # later is merely held, then restored to the queue when it stops, for the next worker to run.
        raise RetryLater(WorkerShutdownError(), countdown=HAND_BACK_DELAY)
    raise asyncio.CancelledError


def _job_dir_prefix(scene_id: str) -> str:
    # The worker's pid in the name: a worker starting up removes the folders of workers that are gone.
    return f"{JOB_DIR_PREFIX}{os.getpid()}-{scene_id}-"


async def _make_job_dir(scene_id: str) -> Path:
    try:
        return Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=_job_dir_prefix(scene_id)))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFullError() from exc
        # The folder's path is for the operator's log, not for the scene's owner.
        logger.error("ingest %s: cannot create a job folder in %s: %s", scene_id, tempfile.gettempdir(), exc.strerror)
        raise TempDirError() from exc


async def _in_job_dir(scene_id: str, claim: lifecycle.Claim, policy: egress.Policy) -> dict[str, Any]:
    job_dir = await _make_job_dir(scene_id)
    heartbeat = asyncio.create_task(_keep_heartbeat(scene_id, claim.attempts))
    try:
        return await _run(scene_id, claim, job_dir, policy)
    finally:
        heartbeat.cancel()
        # wait() never raises: neither the heartbeat's end nor a cancellation of ours is swallowed here.
        await asyncio.wait([heartbeat])
        # Shielded: a cancelled job (hard limit) must still leave no temp folder behind.
        await asyncio.shield(asyncio.to_thread(shutil.rmtree, job_dir, True))


def remove_dead_job_dirs(*, tmp_dir: Path | None = None) -> list[str]:
    """Remove the job folders of workers that are gone (kill -9, a crash) and of this process's earlier
    life under the same pid; called once when a worker starts. Returns the names removed."""
    removed = []
    for path in (tmp_dir or Path(tempfile.gettempdir())).glob(f"{JOB_DIR_PREFIX}*"):
        pid_text = path.name[len(JOB_DIR_PREFIX):].split("-", 1)[0]
        pid = int(pid_text) if pid_text.isdigit() else None
        if pid is not None and pid != os.getpid() and _alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    if removed:
        logger.warning("removed %d job folder(s) left by workers that died: %s", len(removed), ", ".join(removed))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _check_source(url: str, policy: egress.Policy) -> None:
    """The address policy again, at every start: a retry, a requeue, a takeover or the sweeper re-runs a URL
    accepted long ago, and its name may point somewhere else today (or the policy changed)."""
    try:
        await asyncio.to_thread(egress.check_url, url, policy=policy)
    except egress.UrlNotAllowed as exc:
        raise UrlNotAllowedError(exc.message) from exc
    except egress.Unresolvable as exc:
        raise NetworkError(exc.message) from exc
    except egress.InvalidUrl as exc:
        raise UnsupportedUrlError(exc.message) from exc


async def _run(scene_id: str, claim: lifecycle.Claim, job_dir: Path, policy: egress.Policy) -> dict[str, Any]:
    """Download, probe, thumbnail and upload; returns the fields the completed scene gets."""
    reporter = _ProgressReporter(scene_id, claim.attempts)
    steps: dict[str, float] = {}
    mark = time.monotonic()

    def step(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        steps[name], mark = now - mark, now
        job_metrics.stage_done(name, steps[name])

    await _check_source(claim.source_url, policy)
    if policy.origins:
        logger.info("ingest %s: may fetch from %s beyond the address policy", scene_id,
                    ", ".join(f"{host}:{port}" for host, port in policy.origins))
    result = await ytdlp.download(claim.source_url, job_dir=job_dir, on_progress=reporter, policy=policy)
    step("download")
    await reporter.stage(Stage.POSTPROCESSING)
    info, thumb = await media.examine(result.path, into=job_dir)
    step("probe")  # and the thumbnail: one child does both where the worker has a yt-dlp helper
    await reporter.stage(Stage.UPLOADING)
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


async def _complete(scene_id: str, claim: lifecycle.Claim, fields: dict[str, Any]) -> str:
    if await lifecycle.complete(scene_id=scene_id, attempt=claim.attempts, fields=fields):
        logger.info("ingest %s: completed", scene_id)
        job_metrics.ingested(fields["size_bytes"])
        return "completed"
    return await _moved(scene_id, claim, "stored, but")


async def _moved(scene_id: str, claim: lifecycle.Claim, what: str) -> str:
    """A write of the run matched nothing: a cancel waits (then the run ends it: what it stored goes, the
    scene becomes ``cancelled``), or the scene was deleted or taken over."""
    if await lifecycle.cancel_waiting(scene_id=scene_id, attempt=claim.attempts):
        await asyncio.shield(_discard_stored(scene_id))
        if await asyncio.shield(lifecycle.cancelled(scene_id=scene_id, attempt=claim.attempts)):
            logger.info("ingest %s: %s cancelled on request", scene_id, what)
            return "cancelled"
    if not await lifecycle.exists(scene_id=scene_id):
        # Deleted while we worked: its delete task may have run before our upload. The task that ran us
        # sends another one (``deleted``), which retries until the store has nothing left of the scene.
        logger.info("ingest %s: %s the scene was deleted meanwhile; its objects go with a delete task",
                    scene_id, what)
        return "deleted"
    logger.warning("ingest %s: %s the scene was moved meanwhile (taken over)", scene_id, what)
    return "moved"


async def _discard_stored(scene_id: str) -> None:
    """Remove what the run stored before it failed (a limit after the upload, a write that came too late):
    a scene that is not completed owns no objects. Retried a few times; the run still owns the scene, so
    nothing new can be stored under its prefix meanwhile."""
    for delay in (0.5, 1.0, 2.0, None):
        try:
            removed = await storage.get_storage().delete_prefix(storage.scene_prefix(scene_id))
        except StorageError as error:
            if delay is None:
                logger.error("ingest %s: stored objects not removed: %s", scene_id, error.message)
                return
            await asyncio.sleep(delay)
            continue
        if removed:
            logger.info("ingest %s: removed %d object(s) stored before the failure", scene_id, removed)
        return


async def _failed(scene_id: str, claim: lifecycle.Claim, error: MediastoreError, *, retry: bool = True) -> str:
    attempts = claim.attempts
    job_metrics.error(error.code)
    await asyncio.shield(_discard_stored(scene_id))
    if retry and error.retryable and attempts < settings.MEDIA_MAX_ATTEMPTS:
        countdown = settings.MEDIA_RETRY_BACKOFF * 2 ** (attempts - 1)
        logger.warning("ingest %s: %s (%s%s); retry %d of %d in %.0fs", scene_id, error.code, error.message,
                       f"; {error.detail}" if error.detail else "", attempts, settings.MEDIA_MAX_ATTEMPTS - 1,
                       countdown)
        if await lifecycle.retry_later(scene_id=scene_id, attempt=attempts, code=error.code, message=error.message,
                                       detail=error.detail):
            raise RetryLater(error, countdown)
        return await _moved(scene_id, claim, f"{error.code}, and")
    logger.warning("ingest %s: failed with %s: %s%s", scene_id, error.code, error.message,
                   f" ({error.detail})" if error.detail else "")
    if await lifecycle.fail(scene_id=scene_id, attempt=attempts, code=error.code, message=error.message,
                            detail=error.detail):
        return "failed"
    return await _moved(scene_id, claim, f"{error.code}, and")


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
