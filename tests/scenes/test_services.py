"""Writes that go with a status change: creating, re-storing, sweeping."""

from __future__ import annotations

import datetime as dt
import re
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from scenes import services
from scenes.models import Scene
from tests.harness import scene_states

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


def test_storing_a_new_scene_takes_the_write_lock_for_one_statement(owner, django_capture_on_commit_callbacks):
    # The write lock is shared by every web process and the worker: no transaction (or savepoint) is opened
    # around the INSERT, so no thread holds the lock while it waits for the GIL between statements.
    with mock.patch("downloads.tasks.download_media_task.apply_async") as send, \
            django_capture_on_commit_callbacks(execute=True), CaptureQueriesContext(connection) as queries:
        scene = services.scene_store(owner=owner, source_url="https://example.com/v.mp4")

    writes = [q["sql"].split()[0].upper() for q in queries.captured_queries if not q["sql"].startswith("SELECT")]
    assert writes == ["INSERT"]
    send.assert_called_once_with(args=[scene.pk], task_id=scene.task_id, retry=False)


def _age(scene: Scene, seconds: float) -> None:
    Scene.objects.filter(pk=scene.pk).update(updated_at=timezone.now() - dt.timedelta(seconds=seconds))


def test_restoring_a_scene_without_a_project_keeps_its_project(owner, django_capture_on_commit_callbacks):
    project = services.project_create(owner=owner, name="Holiday")
    scene = services.scene_create(owner=owner, source_url="https://example.com/v.mp4", project=project)

    with mock.patch("downloads.tasks.download_media_task.apply_async"):
        services.scene_store(owner=owner, source_url="https://example.com/w.mp4", scene=scene)

    scene.refresh_from_db()
    assert (scene.project_id, scene.source_url, scene.status) == (project.pk, "https://example.com/w.mp4", "queued")


def test_sweep_queues_again_a_scene_whose_worker_died(scene: Scene, settings, django_capture_on_commit_callbacks):
    scene_states.start(scene_id=scene.pk)
    _age(scene, settings.MEDIA_STALE_AFTER + 10)

    with mock.patch("downloads.tasks.download_media_task.apply_async") as send, \
            django_capture_on_commit_callbacks(execute=True):
        result = services.scenes_sweep()

    scene.refresh_from_db()
    assert (result.requeued, scene.status) == (1, "queued")
    assert send.call_args.kwargs["args"] == [scene.pk]


def test_sweep_fails_as_worker_lost_a_scene_out_of_attempts(scene: Scene, settings,
                                                             django_capture_on_commit_callbacks):
    Scene.objects.filter(pk=scene.pk).update(attempts=settings.MEDIA_MAX_ATTEMPTS - 1)
    scene_states.start(scene_id=scene.pk)
    _age(scene, settings.MEDIA_STALE_AFTER + 10)

    with mock.patch("downloads.tasks.download_media_task.apply_async") as send, \
            django_capture_on_commit_callbacks(execute=True):
        result = services.scenes_sweep()

    scene.refresh_from_db()
    assert (result.worker_lost, scene.status, scene.error_code) == (1, "failed", "worker_lost")
    send.assert_not_called()


def test_sweep_sends_again_a_scene_queued_too_long(scene: Scene, settings, broker_url: str,
                                                    django_capture_on_commit_callbacks):
    _age(scene, settings.MEDIA_RESEND_AFTER + 10)

    with mock.patch("downloads.tasks.download_media_task.apply_async") as send, \
            django_capture_on_commit_callbacks(execute=True):
        result = services.scenes_sweep()

    assert (result.resent, send.call_count) == (1, 1)
    with mock.patch("downloads.tasks.download_media_task.apply_async") as send_again, \
            django_capture_on_commit_callbacks(execute=True):
        assert services.scenes_sweep().resent == 0  # its heartbeat is fresh now
    send_again.assert_not_called()


def test_sweep_leaves_fresh_scenes_alone(scene: Scene, django_capture_on_commit_callbacks):
    with mock.patch("downloads.tasks.download_media_task.apply_async") as send, \
            django_capture_on_commit_callbacks(execute=True):
        assert services.scenes_sweep() == services.SweepResult()
    send.assert_not_called()


def test_deleting_a_user_sends_the_objects_of_each_scene_to_deletion(owner, django_capture_on_commit_callbacks):
    scenes = [services.scene_create(owner=owner, source_url=f"https://example.com/{i}.mp4") for i in range(3)]

    with mock.patch("downloads.tasks.delete_scene_objects_task.apply_async") as send, \
            django_capture_on_commit_callbacks(execute=True):
        owner.delete()

    assert sorted(call.kwargs["args"][0] for call in send.call_args_list) == sorted(s.pk for s in scenes)


def test_uploads_sweep_removes_half_written_local_files_of_scenes_not_processing(owner, settings, tmp_path):
    import os

    settings.MEDIA_ROOT = tmp_path / "media"
    running = services.scene_create(owner=owner, source_url="https://example.com/v.mp4")
    scene_states.start(scene_id=running.pk)
    half_written = {}
    for scene_id in (running.pk, "d" * 24):
        path = tmp_path / "media" / "scenes" / scene_id / ".upload-abc"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"half")
        old = (timezone.now() - dt.timedelta(minutes=5)).timestamp()
        os.utime(path, (old, old))
        half_written[scene_id] = path

    assert services.uploads_sweep() == 1
    assert half_written[running.pk].exists()
    assert not half_written["d" * 24].exists()


def test_sweep_does_not_resend_a_backlog_the_broker_still_holds(owner, settings, broker_url: str,
                                                                 django_capture_on_commit_callbacks):
    from downloads.tasks import download_media_task

    waiting = services.scene_create(owner=owner, source_url="https://example.com/waiting.mp4")
    lost = services.scene_create(owner=owner, source_url="https://example.com/lost.mp4")
    download_media_task.apply_async(args=[waiting.pk], task_id="still-in-the-queue")
    Scene.objects.filter(pk=waiting.pk).update(task_id="still-in-the-queue")
    Scene.objects.filter(pk=lost.pk).update(task_id="never-sent")
    _age(waiting, settings.MEDIA_RESEND_AFTER + 10)
    _age(lost, settings.MEDIA_RESEND_AFTER + 10)

    with mock.patch("downloads.tasks.download_media_task.apply_async") as send, \
            django_capture_on_commit_callbacks(execute=True):
        result = services.scenes_sweep()

    assert result.resent == 1
    assert [call.kwargs["args"] for call in send.call_args_list] == [[lost.pk]]


def test_deleting_a_scene_records_its_objects_as_pending_until_the_task_reports(scene: Scene,
                                                                                 django_capture_on_commit_callbacks):
    from scenes.models import PendingDeletion

    scene_id = scene.pk
    with mock.patch("downloads.tasks.delete_scene_objects_task.apply_async") as send, \
            django_capture_on_commit_callbacks(execute=True):
        services.scene_delete(scene=scene)

    assert list(PendingDeletion.objects.values_list("scene_id", flat=True)) == [scene_id]
    assert send.call_args.kwargs["args"] == [scene_id]
    services.scene_objects_deleted(scene_id=scene_id)
    assert not PendingDeletion.objects.exists()


def test_sweep_sends_again_a_deletion_whose_task_never_reported(scene: Scene, settings,
                                                                 django_capture_on_commit_callbacks):
    from scenes.models import PendingDeletion

    scene_id = scene.pk
    with mock.patch("downloads.tasks.delete_scene_objects_task.apply_async", side_effect=OSError("broker down")):
        services.scene_delete(scene=scene)  # the task was never sent
    PendingDeletion.objects.update(updated_at=timezone.now() - dt.timedelta(seconds=settings.MEDIA_RESEND_AFTER + 5))

    with mock.patch("downloads.tasks.delete_scene_objects_task.apply_async") as send, \
            django_capture_on_commit_callbacks(execute=True):
        result = services.scenes_sweep()

    assert result.deletions_resent == 1
    assert send.call_args.kwargs["args"] == [scene_id]
