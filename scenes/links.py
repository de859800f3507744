"""Where a client fetches a scene's media: the public R2 URL, a presigned S3 URL, or the app itself."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from django.conf import settings
from django.urls import reverse

from scenes.models import Scene

PRESIGNED_SECONDS = 3600


@lru_cache(maxsize=2)
def store_client(*, for_browsers: bool = False) -> Any:
    """The web side's sync S3 client: readiness checks (head_bucket) reach the store as the app does; links
    are signed for ``R2_PRESIGN_ENDPOINT_URL`` when browsers reach it elsewhere (the host is signed too)."""
    import botocore.session

    from downloads.storage import s3_connection

    connection = s3_connection()
    if for_browsers and settings.R2_PRESIGN_ENDPOINT_URL:
        connection["endpoint_url"] = settings.R2_PRESIGN_ENDPOINT_URL
    return botocore.session.get_session().create_client("s3", **connection)


def _link(scene: Scene, key: str, kind: str, request: Any) -> str | None:
    if not key:
        return None
    if settings.R2_PUBLIC_BASE_URL:
        return f"{settings.R2_PUBLIC_BASE_URL.rstrip('/')}/{key}"
    if settings.R2_BUCKET:
        return str(store_client(for_browsers=True).generate_presigned_url(
            "get_object", Params={"Bucket": settings.R2_BUCKET, "Key": key}, ExpiresIn=PRESIGNED_SECONDS))
    path = reverse("scene-file", kwargs={"scene_id": scene.pk, "kind": kind})
    return request.build_absolute_uri(path) if request is not None else path


def media_url(scene: Scene, *, request: Any = None) -> str | None:
    return _link(scene, scene.storage_key, "media", request)


def thumbnail_url(scene: Scene, *, request: Any = None) -> str | None:
    return _link(scene, scene.thumbnail_key, "thumbnail", request)
