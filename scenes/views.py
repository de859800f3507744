"""Pages and files served by the app itself."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User
from django.http import FileResponse
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.views import APIView

from scenes.models import Scene


class SceneFileView(APIView):
    """The stored media or thumbnail of one's own scene when objects live in the local folder.

    An API view, so token clients (the API's own ``media_url``) and signed-in people both get in.
    """

    @extend_schema(exclude=True)  # bytes, not JSON: reached through media_url/thumbnail_url
    def get(self, request: Request, scene_id: str, kind: str) -> FileResponse:
        if settings.R2_BUCKET or kind not in {"media", "thumbnail"}:
            raise exceptions.NotFound()
        user = request.user
        assert isinstance(user, User)
        scenes = Scene.objects.all() if user.is_staff else Scene.objects.filter(owner=user)
        scene = scenes.filter(pk=scene_id).first()
        if scene is None:
            raise exceptions.NotFound()
        key = scene.storage_key if kind == "media" else scene.thumbnail_key
        root = Path(settings.MEDIA_ROOT).resolve()
        path = (root / key).resolve() if key else None
        if path is None or not path.is_relative_to(root) or not path.is_file():
            raise exceptions.NotFound()
        content_type = (scene.content_type or "application/octet-stream") if kind == "media" else "image/jpeg"
        return FileResponse(path.open("rb"), content_type=content_type)
