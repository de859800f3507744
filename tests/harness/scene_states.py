"""Put a scene into a status through the lifecycle itself, for tests that start from there."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync

from scenes import lifecycle
from scenes.models import Scene


def start(*, scene_id: str) -> None:
    """queued → processing, as a worker's claim does."""
    claim = async_to_sync(lifecycle.claim)(scene_id=scene_id, stale_after=3600, max_attempts=100)
    assert claim.claimed, claim.reason


def fail(*, scene_id: str, error_code: str, error_message: str) -> None:
    """→ failed (claimed first when still queued), as a worker's failure does."""
    if Scene.objects.get(pk=scene_id).status == Scene.Status.QUEUED:
        start(scene_id=scene_id)
    attempt = Scene.objects.get(pk=scene_id).attempts
    assert async_to_sync(lifecycle.fail)(scene_id=scene_id, attempt=attempt, code=error_code, message=error_message)


def complete(*, scene_id: str, storage_key: str, **metadata: Any) -> None:
    """processing → completed, as a worker's success does."""
    attempt = Scene.objects.get(pk=scene_id).attempts
    assert async_to_sync(lifecycle.complete)(scene_id=scene_id, attempt=attempt,
                                             fields={"storage_key": storage_key, **metadata})
