"""The scene lifecycle: every transition is one conditional update by primary key, announced once."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.utils import timezone

from scenes import lifecycle, services
from scenes.lifecycle import SceneStateConflict
from scenes.models import Scene

pytestmark = pytest.mark.django_db

claim = async_to_sync(lifecycle.claim)
heartbeat = async_to_sync(lifecycle.heartbeat)
complete = async_to_sync(lifecycle.complete)
fail = async_to_sync(lifecycle.fail)
retry_later = async_to_sync(lifecycle.retry_later)
release = async_to_sync(lifecycle.release)


@pytest.fixture
def scene() -> Scene:
    owner = get_user_model().objects.create_user("owner")
    return services.scene_create(owner=owner, source_url="https://example.com/v.mp4")


@pytest.fixture
def announced() -> Iterator[list[tuple[str, str, str]]]:
    events: list[tuple[str, str, str]] = []

    def listen(*, scene_id: str, transition: str, status: str, **_: Any) -> None:
        events.append((scene_id, transition, status))

    lifecycle.transitioned.connect(listen, dispatch_uid="test-listener")
    try:
        yield events
    finally:
        lifecycle.transitioned.disconnect(dispatch_uid="test-listener")


def _reload(scene: Scene) -> Scene:
    return Scene.objects.get(pk=scene.pk)


def _age(scene: Scene, seconds: float) -> Scene:
    Scene.objects.filter(pk=scene.pk).update(updated_at=timezone.now() - dt.timedelta(seconds=seconds))
    return _reload(scene)


def test_claim_moves_a_queued_scene_to_processing(scene: Scene, announced):
    result = claim(scene_id=scene.pk, stale_after=300, max_attempts=3)

    scene = _reload(scene)
    assert (result.claimed, result.reason, result.attempts) == (True, "claimed", 1)
    assert (scene.status, scene.stage, scene.attempts) == (Scene.Status.PROCESSING, Scene.Stage.DOWNLOADING, 1)
    assert announced == [(scene.pk, "claim", "processing")]


def test_a_scene_is_claimed_only_once(scene: Scene):
    claim(scene_id=scene.pk, stale_after=300, max_attempts=3)

    second = claim(scene_id=scene.pk, stale_after=300, max_attempts=3)

    assert (second.claimed, second.reason) == (False, "busy")
    assert _reload(scene).attempts == 1


def test_a_stale_processing_scene_is_taken_over(scene: Scene, announced):
    claim(scene_id=scene.pk, stale_after=300, max_attempts=3)
    _age(scene, 400)

    result = claim(scene_id=scene.pk, stale_after=300, max_attempts=3)

    assert (result.claimed, result.reason, result.attempts) == (True, "taken_over", 2)
    assert announced[-1] == (scene.pk, "take_over", "processing")


def test_a_worker_death_on_the_last_attempt_fails_the_scene_as_worker_lost(scene: Scene, announced):
    for _ in range(3):
        assert claim(scene_id=scene.pk, stale_after=300, max_attempts=3).claimed
        _age(scene, 400)

    result = claim(scene_id=scene.pk, stale_after=300, max_attempts=3)

    scene = _reload(scene)
    assert (result.claimed, result.reason) == (False, "worker_lost")
    assert (scene.status, scene.error_code, scene.attempts) == (Scene.Status.FAILED, "worker_lost", 3)
    assert "3 time(s)" in scene.error_message
    assert announced[-1] == (scene.pk, "worker_lost", "failed")


def test_heartbeat_records_progress_only_while_processing(scene: Scene):
    assert heartbeat(scene_id=scene.pk, attempt=0, progress=10) is False
    claim(scene_id=scene.pk, stale_after=300, max_attempts=3)

    assert heartbeat(scene_id=scene.pk, attempt=1, stage="uploading", progress=40) is True
    assert (_reload(scene).stage, _reload(scene).progress) == ("uploading", 40)


def test_complete_stores_the_fields(scene: Scene, announced):
    claim(scene_id=scene.pk, stale_after=300, max_attempts=3)

    assert complete(scene_id=scene.pk, attempt=1, fields={"storage_key": "scenes/x/media.mp4", "duration": 3.0})

    scene = _reload(scene)
    assert (scene.status, scene.progress, scene.storage_key, scene.duration) == (
        Scene.Status.COMPLETED, 100, "scenes/x/media.mp4", 3.0)
    assert announced[-1] == (scene.pk, "complete", "completed")


def test_a_queued_scene_cannot_complete(scene: Scene, announced):
    assert complete(scene_id=scene.pk, attempt=1, fields={"storage_key": "x"}) is False
    assert _reload(scene).status == Scene.Status.QUEUED
    assert announced == []


def test_fail_records_code_and_message(scene: Scene):
    claim(scene_id=scene.pk, stale_after=300, max_attempts=3)

    assert fail(scene_id=scene.pk, attempt=1, code="not_found", message="HTTP 404 from the source")

    scene = _reload(scene)
    assert (scene.status, scene.error_code, scene.error_message) == ("failed", "not_found", "HTTP 404 from the source")


def test_retry_later_queues_again_and_keeps_the_error(scene: Scene):
    claim(scene_id=scene.pk, stale_after=300, max_attempts=3)

    assert retry_later(scene_id=scene.pk, attempt=1, code="timeout", message="stalled")

    scene = _reload(scene)
    assert (scene.status, scene.error_code, scene.progress) == ("queued", "timeout", None)


def test_release_hands_the_scene_back_without_counting_the_attempt(scene: Scene, announced):
    claim(scene_id=scene.pk, stale_after=300, max_attempts=3)

    assert release(scene_id=scene.pk, attempt=1)

    assert (_reload(scene).status, _reload(scene).attempts) == ("queued", 0)
    assert announced[-1] == (scene.pk, "release", "queued")


def test_retry_queues_a_failed_scene_and_clears_its_error(scene: Scene):
    claim(scene_id=scene.pk, stale_after=300, max_attempts=3)
    fail(scene_id=scene.pk, attempt=1, code="timeout", message="stalled")

    lifecycle.retry(scene_id=scene.pk, task_id="t-2")

    scene = _reload(scene)
    assert (scene.status, scene.error_code, scene.error_message, scene.task_id) == ("queued", "", "", "t-2")
    assert scene.attempts == 0  # a person's retry gets every attempt again


def test_a_run_that_was_taken_over_can_no_longer_write(scene: Scene):
    old = claim(scene_id=scene.pk, stale_after=300, max_attempts=3)
    _age(scene, 400)
    new = claim(scene_id=scene.pk, stale_after=300, max_attempts=3)

    assert heartbeat(scene_id=scene.pk, attempt=old.attempts) is False
    assert complete(scene_id=scene.pk, attempt=old.attempts, fields={"storage_key": "old"}) is False
    assert retry_later(scene_id=scene.pk, attempt=old.attempts, code="timeout", message="m") is False
    assert release(scene_id=scene.pk, attempt=old.attempts) is False
    assert complete(scene_id=scene.pk, attempt=new.attempts, fields={"storage_key": "new"}) is True
    assert (_reload(scene).status, _reload(scene).storage_key) == ("completed", "new")


def test_only_a_failed_scene_can_be_retried(scene: Scene):
    with pytest.raises(SceneStateConflict, match="failed"):
        lifecycle.retry(scene_id=scene.pk, task_id="t")


def test_restart_requeues_a_completed_scene(scene: Scene):
    claim(scene_id=scene.pk, stale_after=300, max_attempts=3)
    complete(scene_id=scene.pk, attempt=1, fields={"storage_key": "k"})

    lifecycle.restart(scene_id=scene.pk, task_id="t-2", title="again")

    assert (_reload(scene).status, _reload(scene).title) == ("queued", "again")


def test_a_processing_scene_is_not_restarted(scene: Scene):
    claim(scene_id=scene.pk, stale_after=300, max_attempts=3)

    with pytest.raises(SceneStateConflict):
        lifecycle.restart(scene_id=scene.pk, task_id="t-2")


def test_requeue_stuck_queues_a_scene_whose_worker_died(scene: Scene):
    claim(scene_id=scene.pk, stale_after=300, max_attempts=3)
    seen = _age(scene, 400)

    status = lifecycle.requeue_stuck(scene_id=scene.pk, seen_updated_at=seen.updated_at, task_id="t-2",
                                     max_attempts=3)

    assert status == "queued"
    assert (_reload(scene).status, _reload(scene).task_id) == ("queued", "t-2")


def test_requeue_stuck_fails_a_scene_whose_attempts_are_used_up(scene: Scene):
    Scene.objects.filter(pk=scene.pk).update(attempts=2)
    claim(scene_id=scene.pk, stale_after=300, max_attempts=3)
    seen = _age(scene, 400)

    status = lifecycle.requeue_stuck(scene_id=scene.pk, seen_updated_at=seen.updated_at, task_id="t", max_attempts=3)

    assert status == "failed"
    assert (_reload(scene).status, _reload(scene).error_code) == ("failed", "worker_lost")


def test_requeue_stuck_leaves_a_scene_whose_heartbeat_moved(scene: Scene):
    claim(scene_id=scene.pk, stale_after=300, max_attempts=3)
    seen = _age(scene, 400)
    heartbeat(scene_id=scene.pk, attempt=1)  # the worker was alive after all

    with pytest.raises(SceneStateConflict):
        lifecycle.requeue_stuck(scene_id=scene.pk, seen_updated_at=seen.updated_at, task_id="t", max_attempts=3)
    assert _reload(scene).status == "processing"


def test_resend_refreshes_a_waiting_scene(scene: Scene, announced, django_capture_on_commit_callbacks):
    seen = _age(scene, 900)

    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.resend(scene_id=scene.pk, seen_updated_at=seen.updated_at, task_id="t-2")

    assert _reload(scene).updated_at > seen.updated_at
    assert announced[-1] == (scene.pk, "resend", "queued")


def test_deleting_a_scene_is_announced(scene: Scene, announced, django_capture_on_commit_callbacks):
    scene_id = scene.pk

    # The delete task is for the store (tests/scenes/test_services.py); no broker here.
    with mock.patch("downloads.tasks.delete_scene_objects_task.apply_async"), \
            django_capture_on_commit_callbacks(execute=True):
        scene.delete()

    assert announced == [(scene_id, "delete", "deleted")]


def test_transition_of_a_deleted_scene_changes_nothing(scene: Scene):
    scene_id = scene.pk
    scene.delete()

    assert claim(scene_id=scene_id, stale_after=300, max_attempts=3).reason == "missing"
    with pytest.raises(SceneStateConflict):
        lifecycle.retry(scene_id=scene_id, task_id="t")


def test_every_transition_moves_the_heartbeat(scene: Scene):
    before = _age(scene, 10).updated_at

    claim(scene_id=scene.pk, stale_after=300, max_attempts=3)

    assert _reload(scene).updated_at > before
