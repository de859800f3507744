"""Every write to projects and scenes.

A status change is one conditional update, ``filter(pk=…, status__in=…)``, that must change exactly one
row. Zero rows means someone else moved the scene first (another worker, a retry, a delete); the caller
gets ``SceneStateConflict`` and stops instead of overwriting what the other party did.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from scenes.models import IdempotencyRecord, Project, Scene

logger = logging.getLogger(__name__)

Status = Scene.Status


class SceneStateConflict(Exception):
    """The scene was not in a status the change may start from (or no longer exists)."""

    def __init__(self, *, scene_id: str, expected: Iterable[str]) -> None:
        self.scene_id = scene_id
        self.expected = tuple(expected)
        super().__init__(f"scene {scene_id} is not in status {' or '.join(self.expected)}")


def _transition(
    *, scene_id: str, from_statuses: Iterable[str], where: dict[str, Any] | None = None, **changes: Any
) -> None:
    from_statuses = tuple(from_statuses)
    # QuerySet.update() skips auto_now, and updated_at is the heartbeat: set it here, always.
    changed = Scene.objects.filter(pk=scene_id, status__in=from_statuses, **(where or {})).update(
        updated_at=timezone.now(), **changes
    )
    if changed != 1:
        raise SceneStateConflict(scene_id=scene_id, expected=from_statuses)


def project_create(*, owner: User, name: str) -> Project:
    return Project.objects.create(owner=owner, name=name)


def project_rename(*, project: Project, name: str) -> Project:
    Project.objects.filter(pk=project.pk).update(name=name, updated_at=timezone.now())
    project.refresh_from_db()
    return project


def scene_create(
    *, owner: User, source_url: str, project: Project | None = None, title: str = ""
) -> Scene:
    return Scene.objects.create(owner=owner, source_url=source_url, project=project, title=title)


def scene_start(*, scene_id: str) -> None:
    """queued → processing: a worker claimed the scene."""
    _transition(
        scene_id=scene_id,
        from_statuses=[Status.QUEUED],
        status=Status.PROCESSING,
        stage=Scene.Stage.DOWNLOADING,
        progress=0,
        started_at=timezone.now(),
        attempts=F("attempts") + 1,
    )


def scene_complete(*, scene_id: str, storage_key: str, **metadata: Any) -> None:
    """processing → completed, with where the media went and what ffprobe said of it."""
    _transition(
        scene_id=scene_id,
        from_statuses=[Status.PROCESSING],
        status=Status.COMPLETED,
        stage=Scene.Stage.NONE,
        progress=100,
        storage_key=storage_key,
        completed_at=timezone.now(),
        error_code="",
        error_message="",
        **metadata,
    )


def scene_fail(*, scene_id: str, error_code: str, error_message: str) -> None:
    """queued or processing → failed, with a stable code and the specific reason."""
    _transition(
        scene_id=scene_id,
        from_statuses=[Status.QUEUED, Status.PROCESSING],
        status=Status.FAILED,
        stage=Scene.Stage.NONE,
        error_code=error_code,
        error_message=error_message,
    )


def scene_requeue(*, scene_id: str, task_id: str = "") -> None:
    """failed → queued, clearing the last attempt's error and progress."""
    extra: dict[str, Any] = {"task_id": task_id} if task_id else {}
    _transition(
        scene_id=scene_id,
        from_statuses=[Status.FAILED],
        status=Status.QUEUED,
        stage=Scene.Stage.NONE,
        progress=None,
        error_code="",
        error_message="",
        **extra,
    )


def _enqueue_after_commit(*, task: Any, args: list[Any], task_id: str) -> None:
    """Publish once the row is committed. A broker that is down loses nothing: the scene stays queued and
    the re-queue sweeper (``requeue_stuck``) sends it again later."""

    def publish() -> None:
        try:
            task.apply_async(args=args, task_id=task_id, retry=False)
        except Exception:  # kombu's OperationalError, a refused or timed-out connection, …
            logger.warning("enqueue of %s%s failed; it stays queued for the sweeper", task.name, args, exc_info=True)

    transaction.on_commit(publish)


def scene_store(
    *, owner: User, source_url: str, project: Project | None = None, scene: Scene | None = None, title: str = ""
) -> Scene:
    """Create a scene (or re-ingest one of the caller's own) as ``queued`` and enqueue its download."""
    from downloads.tasks import download_media_task

    task_id = str(uuid.uuid4())
    with transaction.atomic():
        if scene is None:
            scene = Scene.objects.create(owner=owner, source_url=source_url, project=project, title=title,
                                         task_id=task_id)
        else:
            changes: dict[str, Any] = {"source_url": source_url, "task_id": task_id, "project": project}
            if title:
                changes["title"] = title
            # A scene being processed right now is not restarted under the worker's feet.
            _transition(scene_id=scene.pk, from_statuses=[Status.QUEUED, Status.COMPLETED, Status.FAILED],
                        status=Status.QUEUED, stage=Scene.Stage.NONE, progress=None, error_code="",
                        error_message="", **changes)
            scene.refresh_from_db()
        _enqueue_after_commit(task=download_media_task, args=[scene.pk], task_id=task_id)
    return scene


def scene_retry(*, scene: Scene) -> Scene:
    """failed → queued and enqueue; any other status conflicts (so a double retry queues one task)."""
    from downloads.tasks import download_media_task

    task_id = str(uuid.uuid4())
    with transaction.atomic():
        scene_requeue(scene_id=scene.pk, task_id=task_id)
        _enqueue_after_commit(task=download_media_task, args=[scene.pk], task_id=task_id)
    scene.refresh_from_db()
    return scene


def scene_delete(*, scene: Scene) -> None:
    """Delete the scene and, through a retried task, every object stored for it."""
    from downloads.tasks import delete_scene_objects_task

    scene_id = scene.pk
    with transaction.atomic():
        scene.delete()
        _enqueue_after_commit(task=delete_scene_objects_task, args=[scene_id], task_id=str(uuid.uuid4()))


def project_delete(*, project: Project) -> None:
    """Delete the project, its scenes and their stored objects."""
    from downloads.tasks import delete_scene_objects_task

    with transaction.atomic():
        scene_ids = list(project.scenes.values_list("pk", flat=True))
        project.scenes.all().delete()
        project.delete()
        for scene_id in scene_ids:
            _enqueue_after_commit(task=delete_scene_objects_task, args=[scene_id], task_id=str(uuid.uuid4()))


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


def idempotent_remember(
    *, owner: User, key: str, request_hash: str, status_code: int, response: dict[str, Any]
) -> IdempotencyRecord:
    """Keep the first answer; of two concurrent first requests, the second gets the first's record."""
    IdempotencyRecord.objects.filter(owner=owner, key=key, created_at__lt=timezone.now() - IDEMPOTENCY_WINDOW).delete()
    try:
        with transaction.atomic():
            return IdempotencyRecord.objects.create(owner=owner, key=key, request_hash=request_hash,
                                                    status_code=status_code, response=response)
    except IntegrityError:
        existing = idempotent_replay(owner=owner, key=key, request_hash=request_hash)
        assert existing is not None
        return existing


def scene_requeue_any(*, scene: Scene) -> Scene:
    """Queue a scene again whatever it last did, unless a worker has it right now."""
    return scene_store(owner=scene.owner, source_url=scene.source_url, project=scene.project, scene=scene)


def scene_requeue_stuck(*, scene: Scene) -> None:
    """Queue a stuck scene again: one conditional update on the heartbeat that was read, so a worker that
    came back to life in between wins, and the scene is not sent twice."""
    from downloads.tasks import download_media_task

    task_id = str(uuid.uuid4())
    with transaction.atomic():
        _transition(scene_id=scene.pk, from_statuses=[Status.PROCESSING, Status.QUEUED],
                    where={"updated_at": scene.updated_at}, status=Status.QUEUED, stage=Scene.Stage.NONE,
                    progress=None, task_id=task_id)
        _enqueue_after_commit(task=download_media_task, args=[scene.pk], task_id=task_id)
