"""Every read of projects and scenes that is more than ``objects.get``."""

from __future__ import annotations

import datetime as dt

from django.contrib.auth.models import User
from django.db.models import Q, QuerySet
from django.utils import timezone

from mediastore.prepared import PreparedCount
from scenes.models import PendingDeletion, Project, Scene


def reach(*, user: User, permission: str) -> User | None:
    """Whose data ``user`` may reach for ``permission`` (``"scenes.delete_scene"``): everyone's (None) for staff
    who hold that permission, as in the admin; otherwise only their own. Being staff alone opens nothing."""
    return None if user.is_staff and user.has_perm(permission) else user


def scene_list(
    *, owner: User | None = None, status: str | None = None, project_id: str | None = None
) -> QuerySet[Scene]:
    """Newest first; ``owner=None`` means every owner (staff views)."""
    scenes = Scene.objects.select_related("project", "owner").order_by("-created_at")
    if owner is not None:
        scenes = scenes.filter(owner=owner)
    if status is not None:
        scenes = scenes.filter(status=status)
    if project_id is not None:
        scenes = scenes.filter(project_id=project_id)
    return scenes


# Every store request counts: the ORM's statement is made once (``PreparedCount``), not per request. No user
# has the placeholder's id: ids count up from 1 on SQL databases.
_ACTIVE = PreparedCount(Scene.objects.filter(status__in=[Scene.Status.QUEUED, Scene.Status.PROCESSING]),
                        field="owner_id", placeholder=-1)


def active_count(*, owner: User) -> int:
    """How many of the owner's scenes are queued or processing."""
    return _ACTIVE(owner.pk)


def scene_owned(*, owner: User, scene_id: str) -> Scene | None:
    """The owner's scene with that id, or None: someone else's scene and a missing one look the same."""
    return Scene.objects.select_related("project").filter(owner=owner, pk=scene_id).first()


def scene_source_url(*, scene_id: str, owner_username: str) -> str | None:
    """The scene's URL when that user owns it; None for a missing scene and for anyone else's alike."""
    # Two reads rather than a join across users and scenes: the same plain lookups on SQL and on MongoDB.
    owner_id = User.objects.filter(username=owner_username).values_list("pk", flat=True).first()
    if owner_id is None:
        return None
    url: str | None = Scene.objects.filter(pk=scene_id, owner_id=owner_id).values_list("source_url", flat=True).first()
    return url


def project_list(*, owner: User | None = None) -> QuerySet[Project]:
    """Newest first; ``owner=None`` means every owner (staff views)."""
    projects = Project.objects.order_by("-created_at")
    return projects if owner is None else projects.filter(owner=owner)


def scenes_failed(
    *, since: dt.timedelta | None = None, error_code: str | None = None, project_id: str | None = None,
    limit: int | None = None, exclude_codes: frozenset[str] = frozenset(), only_codes: frozenset[str] = frozenset(),
) -> list[Scene]:
    """Failed scenes, newest first, narrowed by age of the failure, error code(s) and project."""
    scenes = Scene.objects.filter(status=Scene.Status.FAILED).order_by("-updated_at")
    if exclude_codes:
        scenes = scenes.exclude(error_code__in=sorted(exclude_codes))
    if only_codes:
        scenes = scenes.filter(error_code__in=sorted(only_codes))
    if since is not None:
        scenes = scenes.filter(updated_at__gte=timezone.now() - since)
    if error_code:
        scenes = scenes.filter(error_code=error_code)
    if project_id:
        scenes = scenes.filter(project_id=project_id)
    return list(scenes[:limit] if limit else scenes)


def scenes_stuck(*, older_than: dt.timedelta) -> list[Scene]:
    """Processing scenes whose heartbeat is older than ``older_than`` (a dead worker), and scenes queued for
    longer than that (an enqueue that was lost)."""
    cutoff = timezone.now() - older_than
    return list(Scene.objects.filter(
        Q(status=Scene.Status.PROCESSING) | Q(status=Scene.Status.QUEUED), updated_at__lt=cutoff
    ).order_by("updated_at"))


def scenes_stale(*, older_than: dt.timedelta, limit: int = 500) -> list[Scene]:
    """Processing scenes whose heartbeat is older than ``older_than``: their worker died."""
    cutoff = timezone.now() - older_than
    return list(Scene.objects.filter(status=Scene.Status.PROCESSING, updated_at__lt=cutoff)
                .order_by("updated_at")[:limit])


def scenes_waiting(*, older_than: dt.timedelta, limit: int = 500) -> list[Scene]:
    """Scenes queued, untouched, for longer than ``older_than``: their task was lost (or is very late)."""
    cutoff = timezone.now() - older_than
    return list(Scene.objects.filter(status=Scene.Status.QUEUED, updated_at__lt=cutoff)
                .order_by("updated_at")[:limit])


def deletions_waiting(*, older_than: dt.timedelta, limit: int = 500) -> list[PendingDeletion]:
    """Deletions whose task has not reported back for longer than ``older_than``: never sent, or lost."""
    cutoff = timezone.now() - older_than
    return list(PendingDeletion.objects.filter(updated_at__lt=cutoff).order_by("updated_at")[:limit])
