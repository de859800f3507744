"""Every write to projects and scenes.

A status change is one conditional update, ``filter(pk=…, status__in=…)``, that must change exactly one
row. Zero rows means someone else moved the scene first (another worker, a retry, a delete); the caller
gets ``SceneStateConflict`` and stops instead of overwriting what the other party did.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import User
from django.db.models import F
from django.utils import timezone

from scenes.models import Project, Scene

Status = Scene.Status


class SceneStateConflict(Exception):
    """The scene was not in a status the change may start from (or no longer exists)."""

    def __init__(self, *, scene_id: str, expected: Iterable[str]) -> None:
        self.scene_id = scene_id
        self.expected = tuple(expected)
        super().__init__(f"scene {scene_id} is not in status {' or '.join(self.expected)}")


def _transition(*, scene_id: str, from_statuses: Iterable[str], **changes: Any) -> None:
    from_statuses = tuple(from_statuses)
    # QuerySet.update() skips auto_now, and updated_at is the heartbeat: set it here, always.
    changed = Scene.objects.filter(pk=scene_id, status__in=from_statuses).update(
        updated_at=timezone.now(), **changes
    )
    if changed != 1:
        raise SceneStateConflict(scene_id=scene_id, expected=from_statuses)


def project_create(*, owner: User, name: str) -> Project:
    return Project.objects.create(owner=owner, name=name)


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


def scene_requeue(*, scene_id: str) -> None:
    """failed → queued, clearing the last attempt's error and progress."""
    _transition(
        scene_id=scene_id,
        from_statuses=[Status.FAILED],
        status=Status.QUEUED,
        stage=Scene.Stage.NONE,
        progress=None,
        error_code="",
        error_message="",
    )
