"""Every write to projects and scenes.

A scene's status changes only through ``scenes.lifecycle`` (one conditional update by primary key per
transition; ``SceneStateConflict`` when someone else moved the scene first). These services add what goes
with a change: the enqueue after commit, the clean-up of stored objects after a delete, the sweeper.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.utils import timezone

from mediastore.prepared import PreparedInsert
from scenes import lifecycle, selectors
from scenes.models import IdempotencyRecord, PendingDeletion, Project, Scene
from scenes.validators import validate_media_url

logger = logging.getLogger(__name__)

Status = Scene.Status

# Every store request inserts one scene: the ORM's statement, compiled once (``mediastore.prepared``).
_insert_scene = PreparedInsert(Scene)


def project_create(*, owner: User, name: str) -> Project:
    return Project.objects.create(owner=owner, name=name)


def project_rename(*, project: Project, name: str) -> Project:
    Project.objects.filter(pk=project.pk).update(name=name, updated_at=timezone.now())
    project.refresh_from_db()
    return project


class TooManyActive(Exception):
    """The owner has ``MEDIA_MAX_ACTIVE_PER_OWNER`` scenes queued or processing already."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.message = (f"You have {limit} downloads queued or running, the most this server takes from one "
                        "person at a time. Try again when some have finished.")


def _check_active_limit(*, owner: User) -> None:
    # One person's burst (or drip sources) must not fill every worker slot: the others' jobs would wait.
    limit = settings.MEDIA_MAX_ACTIVE_PER_OWNER
    if selectors.active_count(owner=owner) >= limit:
        raise TooManyActive(limit)


def scene_create(
    *, owner: User, source_url: str, project: Project | None = None, title: str = ""
) -> Scene:
    return Scene.objects.create(owner=owner, source_url=source_url, project=project, title=title)


def _enqueue_after_commit(*, task: Any, args: list[Any], task_id: str) -> None:
    """Publish once the row is committed. A broker that is down loses nothing: the scene stays queued and
    the sweeper (``scenes_sweep``) sends it again."""

    def publish() -> None:
        try:
            task.apply_async(args=args, task_id=task_id, retry=False)
        except Exception:  # kombu's OperationalError, a refused or timed-out connection, …
            logger.warning("enqueue of %s%s failed; it stays queued for the sweeper", task.name, args, exc_info=True)

    transaction.on_commit(publish)


def scene_store(
    *, owner: User, source_url: str, project: Project | None = None, scene: Scene | None = None, title: str = ""
) -> Scene:
    """Create a scene (or re-ingest one of the caller's own) as ``queued`` and enqueue its download.

    Re-ingesting keeps the scene's project and title unless new ones are given."""
    from downloads.tasks import download_media_task

    _check_active_limit(owner=owner)
    task_id = str(uuid.uuid4())
    if scene is None:
        # One INSERT that commits by itself, not BEGIN IMMEDIATE … COMMIT around it: the write lock every web
        # process and the worker share is then held while SQLite writes, not also while this thread waits
        # for the GIL between the statements (other writers poll for it in steps of 1 to 100 ms).
        scene = _insert_scene(owner=owner, source_url=source_url, project=project, title=title, task_id=task_id)
        _enqueue_after_commit(task=download_media_task, args=[scene.pk], task_id=task_id)
        return scene
    changes: dict[str, Any] = {"source_url": source_url}
    if project is not None:
        changes["project"] = project
    if title:
        changes["title"] = title
    with transaction.atomic():
        lifecycle.restart(scene_id=scene.pk, task_id=task_id, **changes)
        scene.refresh_from_db()
        _enqueue_after_commit(task=download_media_task, args=[scene.pk], task_id=task_id)
    return scene


def scene_retry(*, scene: Scene) -> Scene:
    """A person's retry: the URL meets the address policy again (``UrlRejected``: what it points to may have
    changed since) and the owner's active cap holds (``TooManyActive``); then ``scene_requeue_failed``."""
    validate_media_url(scene.source_url)
    _check_active_limit(owner=scene.owner)
    return scene_requeue_failed(scene=scene)


def scene_requeue_failed(*, scene: Scene) -> Scene:
    """failed → queued and enqueue; any other status conflicts (so a double retry queues one task). The
    operators' path (admin, ``requeue_failed``): the worker checks the URL again when the job starts."""
    from downloads.tasks import download_media_task

    task_id = str(uuid.uuid4())
    with transaction.atomic():
        lifecycle.retry(scene_id=scene.pk, task_id=task_id)
        _enqueue_after_commit(task=download_media_task, args=[scene.pk], task_id=task_id)
    scene.refresh_from_db()
    return scene


def scene_cancel(*, scene: Scene) -> Scene:
    """Cancel a queued scene at once, or ask the worker of a processing one to stop it (it writes
    ``cancelled`` within a couple of seconds: the live message below, or its next heartbeat). A finished
    scene raises ``SceneStateConflict``."""
    status = lifecycle.cancel(scene_id=scene.pk)
    # Read before the workers are told: outside a transaction they are told at once, and a quick worker could
    # write ``cancelled`` before this read. The answer is what this request did: the cancel asked for.
    scene.refresh_from_db()
    if status == Status.PROCESSING:
        transaction.on_commit(lambda: _tell_workers_to_cancel(scene_id=scene.pk))
    return scene


def _tell_workers_to_cancel(*, scene_id: str) -> None:
    from downloads import cancels

    cancels.publish(scene_id=scene_id)


def scene_delete(*, scene: Scene) -> None:
    """Delete the scene; its stored objects follow through a retried task (see ``_delete_objects_later``)."""
    scene.delete()


def project_delete(*, project: Project) -> None:
    """Delete the project, its scenes and (through the same retried task) their stored objects."""
    with transaction.atomic():
        project.scenes.all().delete()
        project.delete()


@receiver(post_delete, sender=Scene, dispatch_uid="scenes.services.delete_objects_later")
def _delete_objects_later(*, instance: Scene, **_: Any) -> None:
    # Every way a scene row disappears passes here (a delete, a project's or a user's cascade, the admin),
    # so none can leave its stored objects behind: the pending deletion is recorded with the delete, and
    # the sweeper sends its task again until the task reports the objects gone.
    scene_objects_delete(scene_id=instance.pk)


def scene_objects_delete(*, scene_id: str) -> None:
    """Delete every stored object of a deleted scene, through a retried task that the sweeper sends again
    until it reports back (also for a job that stored media after its scene was deleted)."""
    PendingDeletion.objects.update_or_create(scene_id=scene_id)
    _send_deletion(scene_id=scene_id)


def _send_deletion(*, scene_id: str) -> None:
    from downloads.tasks import delete_scene_objects_task

    _enqueue_after_commit(task=delete_scene_objects_task, args=[scene_id], task_id=str(uuid.uuid4()))


def scene_objects_deleted(*, scene_id: str) -> None:
    """The delete task removed every stored object of a deleted scene: nothing is pending any more."""
    PendingDeletion.objects.filter(scene_id=scene_id).delete()


IDEMPOTENCY_WINDOW = dt.timedelta(hours=24)


class IdempotencyKeyReused(Exception):
    """The key was used within the window for a request with a different body."""


def idempotent_replay(*, owner: User, key: str, request_hash: str) -> IdempotencyRecord | None:
    """The stored answer for this key, when the same request was answered within the window."""
    record = IdempotencyRecord.objects.filter(
        owner=owner, key=key, created_at__gte=timezone.now() - IDEMPOTENCY_WINDOW
    ).first()
    if record is not None and record.request_hash != request_hash:
        raise IdempotencyKeyReused(key)
    return record


class IdempotencyKeyTaken(Exception):
    """Another request with the same key got there first."""


def idempotent_claim(*, owner: User, key: str, request_hash: str) -> IdempotencyRecord:
    """Reserve the key before anything is stored (``status_code`` 0 until the answer is known), so that of
    two concurrent requests with one key only one stores a scene; the unique index decides, which works
    without transactions too (MongoDB). Raises ``IdempotencyKeyTaken`` for the other."""
    IdempotencyRecord.objects.filter(owner=owner, key=key, created_at__lt=timezone.now() - IDEMPOTENCY_WINDOW).delete()
    try:
        with transaction.atomic():
            return IdempotencyRecord.objects.create(owner=owner, key=key, request_hash=request_hash,
                                                    status_code=0, response={})
    except IntegrityError as exc:
        raise IdempotencyKeyTaken(key) from exc


def idempotent_remember(*, record: IdempotencyRecord, status_code: int, response: dict[str, Any]) -> IdempotencyRecord:
    """Keep the first answer, to be replayed for the rest of the window."""
    IdempotencyRecord.objects.filter(pk=record.pk).update(status_code=status_code, response=response)
    record.refresh_from_db()
    return record


def idempotent_forget(*, record: IdempotencyRecord) -> None:
    """The request failed before it had an answer: free the key for the client's next try."""
    IdempotencyRecord.objects.filter(pk=record.pk, status_code=0).delete()


def scene_requeue_any(*, scene: Scene) -> Scene:
    """Queue a scene again whatever it last did, unless a worker has it right now."""
    return scene_store(owner=scene.owner, source_url=scene.source_url, project=scene.project, scene=scene)


def scene_requeue_stuck(*, scene: Scene) -> str:
    """Queue a stuck scene again (or fail it as ``worker_lost`` when its attempts are used up): one
    conditional update on the heartbeat that was read, so a worker that came back to life in between wins,
    and the scene is not sent twice. Returns the scene's new status."""
    from downloads.tasks import download_media_task

    task_id = str(uuid.uuid4())
    with transaction.atomic():
        status = lifecycle.requeue_stuck(scene_id=scene.pk, seen_updated_at=scene.updated_at, task_id=task_id,
                                         max_attempts=settings.MEDIA_MAX_ATTEMPTS)
        if status == Scene.Status.QUEUED:
            _enqueue_after_commit(task=download_media_task, args=[scene.pk], task_id=task_id)
    return status


@dataclass(frozen=True)
class SweepResult:
    requeued: int = 0
    worker_lost: int = 0
    resent: int = 0
    moved: int = 0
    deletions_resent: int = 0


def _tasks_in_broker() -> set[str] | None:
    """The task ids the broker still holds, or None when that cannot be known (another broker, or the
    broker does not answer): then every scene waiting too long is sent again, duplicates being harmless."""
    from mediastore import liveness

    try:
        return liveness.broker_task_ids()
    except Exception:
        return None


def scenes_sweep() -> SweepResult:
    """What the periodic sweeper does, so that every accepted scene ends on its own: processing scenes
    whose heartbeat is older than ``MEDIA_STALE_AFTER`` (their worker died) are queued again or failed as
    ``worker_lost``; deletions whose task has not reported back within ``MEDIA_RESEND_AFTER`` are sent
    again; scenes queued for longer than ``MEDIA_RESEND_AFTER`` (their enqueue was lost, or the
    broker lost the message) are sent again, unless the broker still holds their task (a backlog). A scene
    that moved meanwhile is left alone."""
    from downloads.tasks import download_media_task

    requeued = worker_lost = resent = moved = 0
    for scene in selectors.scenes_stale(older_than=dt.timedelta(seconds=settings.MEDIA_STALE_AFTER)):
        try:
            if scene.cancel_requested_at is not None:  # its worker died before it could stop the job
                lifecycle.cancel_abandoned(scene_id=scene.pk, seen_updated_at=scene.updated_at)
            elif scene_requeue_stuck(scene=scene) == Scene.Status.QUEUED:
                requeued += 1
            else:
                worker_lost += 1
        except lifecycle.SceneStateConflict:
            moved += 1
    waiting = selectors.scenes_waiting(older_than=dt.timedelta(seconds=settings.MEDIA_RESEND_AFTER))
    held = _tasks_in_broker() if waiting else None
    if held:
        # A backlog behind busy workers still has its tasks in the queue: sending them again would only
        # pile up duplicates. Only a scene whose task the broker no longer holds was lost.
        waiting = [scene for scene in waiting if scene.task_id not in held]
    for scene in waiting:
        task_id = str(uuid.uuid4())
        try:
            with transaction.atomic():
                lifecycle.resend(scene_id=scene.pk, seen_updated_at=scene.updated_at, task_id=task_id)
                _enqueue_after_commit(task=download_media_task, args=[scene.pk], task_id=task_id)
            resent += 1
        except lifecycle.SceneStateConflict:
            moved += 1
    deletions = 0
    for pending in selectors.deletions_waiting(older_than=dt.timedelta(seconds=settings.MEDIA_RESEND_AFTER)):
        if PendingDeletion.objects.filter(pk=pending.pk, updated_at=pending.updated_at).update(
                updated_at=timezone.now()) == 1:
            _send_deletion(scene_id=pending.scene_id)
            deletions += 1
    result = SweepResult(requeued=requeued, worker_lost=worker_lost, resent=resent, moved=moved,
                         deletions_resent=deletions)
    if requeued or worker_lost or resent or deletions:
        logger.warning("sweep: %s", result)
    return result


# An upload this young may have a job that has just claimed its scene and is still starting; leave it.
UPLOAD_ABORT_MARGIN = dt.timedelta(minutes=1)


def uploads_sweep() -> int:
    """Abort the open uploads under ``scenes/`` whose scene is not being processed: no job will finish
    them (a worker killed mid-upload, a store that failed the abort). Returns how many were aborted.

    The scene's status decides, not only the upload's age: S3-compatible stores disagree on ``Initiated``
    (moto's is a fixed date), while a job uploads only while its scene is processing."""
    from downloads import bridge, storage
    from downloads.exceptions import StorageError

    store = storage.get_storage()
    uploads = bridge.run(store.open_uploads("scenes/"))
    by_scene = storage.by_scene(uploads, key=lambda upload: upload.key)
    processing = set(Scene.objects.filter(pk__in=list(by_scene), status=Scene.Status.PROCESSING)
                     .values_list("pk", flat=True))
    cutoff = timezone.now() - UPLOAD_ABORT_MARGIN
    stale = [upload for scene_id, found in by_scene.items() if scene_id not in processing
             for upload in found if upload.initiated < cutoff]
    aborted = 0
    for upload in stale:
        try:
            bridge.run(store.abort_upload(upload))
            aborted += 1
        except StorageError as error:  # e.g. completed or aborted since it was listed; the rest go on
            logger.warning("sweep: could not abort the upload of %s: %s", upload.key, error.message)
    if aborted:
        logger.warning("sweep: aborted %d open upload(s) of scenes no longer processing", aborted)
    return aborted
