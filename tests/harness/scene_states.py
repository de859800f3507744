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


def ingest(owner: Any, url: str, *, timeout: float = 90) -> Scene:
    """Create a scene for ``url``, send its task to the test's worker, and return it once it has ended."""
    from downloads.tasks import download_media_task
    from scenes import services
    from tests.harness.processes import wait_until

    scene = services.scene_create(owner=owner, source_url=url)
    download_media_task.delay(scene.pk)
    try:
        wait_until(lambda: Scene.objects.get(pk=scene.pk).is_terminal, timeout=timeout, interval=0.2,
                   what=f"scene {scene.pk} to finish")
    except TimeoutError as exc:
        # Where it stopped, for a hang seen once in a while: the stage, and whether its heartbeat still ran.
        now = Scene.objects.get(pk=scene.pk)
        raise TimeoutError(f"{exc}; it is {now.status}, stage {now.stage!r} at {now.progress}%, attempt "
                           f"{now.attempts}, last written {now.updated_at.isoformat()}") from exc
    return Scene.objects.get(pk=scene.pk)
