"""Every read of projects and scenes that is more than ``objects.get``."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models import QuerySet

from scenes.models import Scene


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
