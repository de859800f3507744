"""Django admin: staff see what happened and fix it with the same services as the API."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from scenes import services
from scenes.models import Scene
from tests.harness import scene_states
from tests.harness.media import MediaServer
from tests.harness.processes import wait_until

CHANGELIST = "/admin/scenes/scene/"


def _staff(username: str, *codenames: str):
    user = get_user_model().objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="scenes", codename__in=codenames))
    return user


def _browser(user) -> Client:
    browser = Client()
    browser.force_login(user)
    return browser


@pytest.mark.django_db
def test_scene_list_shows_status_badges_and_progress():
    staff = _staff("viewer", "view_scene")
    scene = services.scene_create(owner=staff, source_url="https://example.com/v.mp4")
    scene_states.start(scene_id=scene.pk)
    Scene.objects.filter(pk=scene.pk).update(progress=42)

    page = _browser(staff).get(CHANGELIST).content.decode()

    assert "Processing</span>" in page
    assert '<progress max="100" value="42"' in page
    assert len(re.findall(r'<th scope="col" class="[^"]*\bcolumn-', page)) <= 7


@pytest.mark.django_db
def test_staff_without_the_permission_do_not_see_the_requeue_action():
    staff = _staff("plain", "view_scene", "change_scene", "delete_scene")
    services.scene_create(owner=staff, source_url="https://example.com/v.mp4")  # actions show on a non-empty list

    page = _browser(staff).get(CHANGELIST).content.decode()

    assert "delete_with_media" in page
    assert "requeue_failed" not in page


@pytest.mark.django_db
def test_staff_with_the_permission_see_the_requeue_action():
    staff = _staff("operator", "view_scene", "change_scene", "requeue_scene")
    services.scene_create(owner=staff, source_url="https://example.com/v.mp4")

    page = _browser(staff).get(CHANGELIST).content.decode()

    assert "requeue_failed" in page
    assert "delete_selected" not in page  # bulk delete goes through the action that also deletes media


def test_requeue_action_queues_failed_scenes_and_says_what_it_skipped(
        start_worker, media_server: MediaServer, settings):
    start_worker(concurrency=4, env={"MEDIA_MAX_FILESIZE": "20M", "MEDIA_DOWNLOAD_TIMEOUT": "60"})
    operator = _staff("operator", "view_scene", "change_scene", "requeue_scene")
    failed = [services.scene_create(owner=operator, source_url=media_server.url("video.mp4")) for _ in range(2)]
    for scene in failed:
        scene_states.fail(scene_id=scene.pk, error_code="timeout", error_message="stalled")
    done = services.scene_create(owner=operator, source_url=media_server.url("video.mp4"), title="Already done")
    scene_states.start(scene_id=done.pk)
    scene_states.complete(scene_id=done.pk, storage_key="scenes/x/media.mp4")

    response = _browser(operator).post(CHANGELIST, {
        "action": "requeue_failed", "_selected_action": [s.pk for s in [*failed, done]],
    }, follow=True)

    page = response.content.decode()
    assert "Queued 2 scene(s)." in page
    assert "Skipped 1" in page
    assert "Already done (completed)" in page
    for scene in failed:
        wait_until(lambda scene=scene: Scene.objects.get(pk=scene.pk).status == Scene.Status.COMPLETED,
                   timeout=60, what="a re-queued scene to complete")


def test_bulk_delete_of_twenty_scenes_leaves_no_stored_file(start_worker, tmp_path: Path, settings):
    start_worker(concurrency=10)
    media_root = tmp_path / "worker-data" / "media"
    operator = _staff("deleter", "view_scene", "delete_scene")
    scenes = [services.scene_create(owner=operator, source_url=f"https://example.com/{i}.mp4") for i in range(20)]
    for scene in scenes:  # as the worker stores them
        for name in ("media.mp4", "thumb.jpg"):
            path = media_root / "scenes" / scene.pk / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"stored")

    response = _browser(operator).post(CHANGELIST, {
        "action": "delete_with_media", "_selected_action": [s.pk for s in scenes],
    }, follow=True)

    assert "Deleted 20 scene(s)" in response.content.decode()
    assert not Scene.objects.exists()
    wait_until(lambda: not any(p.is_file() for p in media_root.rglob("*")), timeout=60,
               what="every stored file to be deleted")


@pytest.mark.django_db
def test_scene_detail_shows_the_full_error_and_the_task_result():
    from django_celery_results.models import TaskResult

    staff = _staff("inspector", "view_scene", "change_scene")
    scene = services.scene_create(owner=staff, source_url="https://example.com/v.mp4")
    scene_states.fail(scene_id=scene.pk, error_code="not_found", error_message="HTTP Error 404 " + "x" * 300)
    Scene.objects.filter(pk=scene.pk).update(task_id="task-123")
    TaskResult.objects.create(task_id="task-123", status="FAILURE")

    page = _browser(staff).get(f"/admin/scenes/scene/{scene.pk}/change/").content.decode()

    assert "HTTP Error 404 " + "x" * 300 in page  # the whole message, not a shortened one
    assert "Failure" in page  # in fieldsets: message and detail together
    assert "/admin/django_celery_results/taskresult/" in page
    assert 'name="title"' in page  # editable
    assert 'name="source_url"' not in page  # read-only


@pytest.mark.django_db
def test_cancel_action_cancels_queued_scenes_and_says_what_it_skipped(django_capture_on_commit_callbacks):
    operator = _staff("canceller", "view_scene", "change_scene")
    queued = services.scene_create(owner=operator, source_url="https://example.com/q.mp4")
    done = services.scene_create(owner=operator, source_url="https://example.com/d.mp4", title="Already done")
    scene_states.start(scene_id=done.pk)
    scene_states.complete(scene_id=done.pk, storage_key="scenes/x/media.mp4")

    response = _browser(operator).post(CHANGELIST, {
        "action": "cancel", "_selected_action": [queued.pk, done.pk]}, follow=True)

    page = response.content.decode()
    assert "Cancelled 1 scene(s)" in page
    assert "Already done (completed)" in page
    assert Scene.objects.get(pk=queued.pk).status == Scene.Status.CANCELLED


@pytest.mark.django_db
def test_webhook_admin_refuses_a_url_into_a_refused_network_and_sends_a_delivery_again(
        settings, django_capture_on_commit_callbacks):
    from unittest import mock

    from django.utils import timezone

    from scenes.models import WebhookDelivery, WebhookEndpoint

    settings.MEDIA_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    operator = _staff("hooks", "view_webhookendpoint", "add_webhookendpoint", "change_webhookendpoint",
                      "view_webhookdelivery", "change_webhookdelivery")
    browser = _browser(operator)

    refused = browser.post("/admin/scenes/webhookendpoint/add/", {
        "owner": operator.pk, "url": "http://127.0.0.5/hooks", "events": "[]", "enabled": "on",
        "description": ""})
    assert refused.status_code == 200  # the form again, with the error
    assert "does not fetch from" in refused.content.decode()
    assert not WebhookEndpoint.objects.exists()

    endpoint = WebhookEndpoint.objects.create(owner=operator, url="http://127.0.0.1:9/hooks", secret="whsec_eA==")
    delivery = WebhookDelivery.objects.create(endpoint=endpoint, event="scene.failed", scene_id="b" * 24,
                                              payload={}, status="failed", attempts=8, next_attempt_at=timezone.now())
    with mock.patch("scenes.webhooks.send") as send, django_capture_on_commit_callbacks(execute=True):
        response = browser.post("/admin/scenes/webhookdelivery/", {
            "action": "send_again", "_selected_action": [delivery.pk]}, follow=True)

    assert "Sending 1 delivery(ies) again." in response.content.decode()
    assert WebhookDelivery.objects.get().status == "pending"
    assert send.call_args.args == (delivery.pk,)


@pytest.mark.django_db
def test_scene_detail_shows_sizes_and_durations_for_people_and_the_error_detail():
    staff = _staff("reader", "view_scene", "change_scene")
    scene = services.scene_create(owner=staff, source_url="https://example.com/v.mp4")
    scene_states.start(scene_id=scene.pk)
    scene_states.complete(scene_id=scene.pk, storage_key="scenes/x/media.mp4", size_bytes=507211, duration=5.0,
                          width=320, height=240, video_codec="h264", audio_codec="aac")
    failed = services.scene_create(owner=staff, source_url="https://example.com/gone.mp4")
    Scene.objects.filter(pk=failed.pk).update(status="failed", error_code="not_found", error_message="Gone.",
                                              error_detail="[generic] gone: HTTP Error 404: Not Found")

    page = _browser(staff).get(f"/admin/scenes/scene/{scene.pk}/change/").content.decode()
    failed_page = _browser(staff).get(f"/admin/scenes/scene/{failed.pk}/change/").content.decode()

    assert "495.3\xa0KB" in page
    assert "0:05" in page
    assert "320x240" in page
    assert "h264 / aac" in page
    assert "507211" not in page
    assert "[generic] gone: HTTP Error 404: Not Found" in failed_page
