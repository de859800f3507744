"""Pages and files served by the app itself."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import FileResponse, Http404, HttpRequest
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_safe

from scenes.models import Scene


@require_safe
@login_required
def scene_file(request: HttpRequest, scene_id: str, kind: str) -> FileResponse:
    """The stored media or thumbnail of one's own scene, when objects live in the local folder."""
    if settings.R2_BUCKET:
        raise Http404("objects are in the object store")
    user = request.user
    assert isinstance(user, User)  # login_required
    scenes = Scene.objects.all() if user.is_staff else Scene.objects.filter(owner=user)
    scene = get_object_or_404(scenes, pk=scene_id)
    key = scene.storage_key if kind == "media" else scene.thumbnail_key
    root = Path(settings.MEDIA_ROOT).resolve()
    path = (root / key).resolve() if key else None
    if path is None or not path.is_relative_to(root) or not path.is_file():
        raise Http404("no such file")
    content_type = scene.content_type if kind == "media" else "image/jpeg"
    return FileResponse(path.open("rb"), content_type=content_type or "application/octet-stream")
