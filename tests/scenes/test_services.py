"""Status changes: one conditional update that must change exactly one row."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model

from scenes import services
from scenes.models import Scene
from scenes.services import SceneStateConflict

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner():
    return get_user_model().objects.create_user("owner")


@pytest.fixture
def scene(owner) -> Scene:
    return services.scene_create(owner=owner, source_url="https://example.com/v.mp4")


def test_new_scene_is_queued_with_an_object_id_key(scene: Scene):
    assert scene.status == Scene.Status.QUEUED
    assert re.fullmatch(r"[0-9a-f]{24}", scene.pk)


def test_scene_can_belong_to_a_project(owner):
    project = services.project_create(owner=owner, name="Holiday")

    scene = services.scene_create(owner=owner, source_url="https://example.com/v.mp4", project=project)

    assert list(project.scenes.all()) == [scene]


def test_starting_claims_a_queued_scene(scene: Scene):
    services.scene_start(scene_id=scene.pk)

    scene.refresh_from_db()
    assert scene.status == Scene.Status.PROCESSING
    assert scene.stage == Scene.Stage.DOWNLOADING
    assert scene.attempts == 1
    assert scene.started_at is not None


def test_a_scene_is_claimed_only_once(scene: Scene):
    services.scene_start(scene_id=scene.pk)

    with pytest.raises(SceneStateConflict):
        services.scene_start(scene_id=scene.pk)

    scene.refresh_from_db()
    assert scene.attempts == 1


def test_completing_stores_key_and_metadata(scene: Scene):
    services.scene_start(scene_id=scene.pk)

    services.scene_complete(scene_id=scene.pk, storage_key=f"scenes/{scene.pk}/media.mp4", duration=3.0, width=320)

    scene.refresh_from_db()
    assert (scene.status, scene.progress, scene.duration, scene.width) == (Scene.Status.COMPLETED, 100, 3.0, 320)
    assert scene.completed_at is not None


def test_a_queued_scene_cannot_complete(scene: Scene):
    with pytest.raises(SceneStateConflict):
        services.scene_complete(scene_id=scene.pk, storage_key="x")


def test_failing_records_code_and_message(scene: Scene):
    services.scene_start(scene_id=scene.pk)

    services.scene_fail(scene_id=scene.pk, error_code="not_found", error_message="HTTP 404 from the source")

    scene.refresh_from_db()
    assert (scene.status, scene.error_code, scene.error_message) == (
        Scene.Status.FAILED, "not_found", "HTTP 404 from the source")


def test_failed_scene_can_be_requeued(scene: Scene):
    services.scene_fail(scene_id=scene.pk, error_code="timeout", error_message="no bytes for 30 s")

    services.scene_requeue(scene_id=scene.pk)

    scene.refresh_from_db()
    assert (scene.status, scene.error_code, scene.error_message) == (Scene.Status.QUEUED, "", "")


def test_only_failed_scenes_can_be_requeued(scene: Scene):
    with pytest.raises(SceneStateConflict, match="failed"):
        services.scene_requeue(scene_id=scene.pk)


def test_transition_of_a_deleted_scene_conflicts(scene: Scene):
    scene_id = scene.pk
    scene.delete()

    with pytest.raises(SceneStateConflict):
        services.scene_start(scene_id=scene_id)


def test_every_transition_moves_the_heartbeat(scene: Scene):
    before = Scene.objects.get(pk=scene.pk).updated_at

    services.scene_start(scene_id=scene.pk)

    assert Scene.objects.get(pk=scene.pk).updated_at > before
