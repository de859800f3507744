"""The v1 REST API: validation, isolation between users, status codes and the error envelope."""

from __future__ import annotations

import json
import time

import pytest
import redis
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from scenes import services
from scenes.models import Project, Scene
from tests.harness import scene_states
from tests.harness.services import celery_broker
from tests.harness.tokens import api_token
from tests.scenes.conftest import PUBLIC_URL

DEAD_BROKER = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def _client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token(user)}")
    return client


def _queued_task_ids(broker_url: str) -> list[str]:
    client = redis.Redis.from_url(broker_url)
    try:
        return [json.loads(raw)["headers"]["id"] for raw in client.lrange("celery", 0, -1)]
    finally:
        client.close()


def test_anonymous_requests_are_refused_with_the_envelope(client):
    response = client.get("/api/v1/scenes/")

    assert response.status_code in {401, 403}
    assert response.json()["error"]["code"] in {"not_authenticated", "permission_denied"}


@pytest.mark.parametrize("url", ["ftp://example.com/v.mp4", "-x", "https://example.com/" + "a" * 3000,
                                 "https:///no-host", "not a url"])
def test_malformed_urls_are_400_invalid_url(alice, url: str):
    response = _client(alice).post("/api/v1/media/store", {"url": url}, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_url"
    assert "url" in response.json()["error"]["fields"]
    assert not Scene.objects.exists()


@pytest.mark.parametrize("url", ["http://127.0.0.1/v.mp4", "http://10.0.0.8/v.mp4",
                                 "http://169.254.169.254/latest/meta-data/", "http://[::1]/v.mp4",
                                 "http://2130706433/v.mp4", "http://[::ffff:127.0.0.1]/v.mp4"])
def test_urls_into_our_own_network_are_422_url_not_allowed(alice, url: str):
    response = _client(alice).post("/api/v1/media/store", {"url": url}, format="json")

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "url_not_allowed"
    assert not Scene.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_store_answers_202_with_location_and_queues_the_scene_id(broker_url: str):
    alice = get_user_model().objects.create_user("alice")

    response = _client(alice).post("/api/v1/media/store", {"url": PUBLIC_URL, "title": "Holiday"}, format="json")

    assert response.status_code == 202
    body = response.json()
    assert response["Location"] == f"/api/v1/scenes/{body['id']}"
    assert (body["status"], body["title"], body["source_url"]) == ("queued", "Holiday", PUBLIC_URL)
    assert _queued_task_ids(broker_url) == [body["task_id"]]
    message = json.loads(redis.Redis.from_url(broker_url).lrange("celery", 0, -1)[0])
    assert message["headers"]["argsrepr"] == repr([body["id"]])


@pytest.mark.django_db(transaction=True)
def test_store_still_answers_202_when_the_broker_is_down(broker_url: str):
    alice = get_user_model().objects.create_user("alice")

    with celery_broker(DEAD_BROKER):
        started = time.monotonic()
        response = _client(alice).post("/api/v1/media/store", {"url": PUBLIC_URL}, format="json")
        took = time.monotonic() - started

    assert response.status_code == 202
    assert took < 1, f"the store request took {took:.1f}s with the broker down"
    assert Scene.objects.get(pk=response.json()["id"]).status == Scene.Status.QUEUED


def test_store_into_a_project_and_rename_it(alice):
    api = _client(alice)
    project = api.post("/api/v1/projects/", {"name": "Trips"}, format="json").json()

    stored = api.post("/api/v1/media/store", {"url": PUBLIC_URL, "project": project["id"]}, format="json")
    renamed = api.patch(f"/api/v1/projects/{project['id']}", {"name": "Travel"}, format="json")

    assert stored.status_code == 202
    assert stored.json()["project"] == project["id"]
    assert renamed.json()["name"] == "Travel"


def test_other_users_scenes_and_projects_are_404(alice, bob):
    scene = services.scene_create(owner=alice, source_url=PUBLIC_URL)
    project = services.project_create(owner=alice, name="Alice's")
    as_bob = _client(bob)

    responses = [
        as_bob.get(f"/api/v1/scenes/{scene.pk}"),
        as_bob.post(f"/api/v1/scenes/{scene.pk}/retry"),
        as_bob.delete(f"/api/v1/scenes/{scene.pk}"),
        as_bob.get(f"/api/v1/projects/{project.pk}"),
        as_bob.patch(f"/api/v1/projects/{project.pk}", {"name": "mine now"}, format="json"),
        as_bob.delete(f"/api/v1/projects/{project.pk}"),
        as_bob.post("/api/v1/media/store", {"url": PUBLIC_URL, "project": project.pk}, format="json"),
        as_bob.post("/api/v1/media/store", {"url": PUBLIC_URL, "scene": scene.pk}, format="json"),
    ]

    assert [r.status_code for r in responses] == [404] * 8
    assert {r.json()["error"]["code"] for r in responses} == {"not_found"}
    assert as_bob.get("/api/v1/scenes/").json()["results"] == []
    assert Scene.objects.filter(pk=scene.pk).exists()
    assert Project.objects.get(pk=project.pk).name == "Alice's"


def test_retry_shares_the_store_throttle(alice, settings, broker_url: str, monkeypatch):
    from downloads import egress

    monkeypatch.setattr(egress, "_resolve", lambda host, port: ["1.1.1.1"])
    settings.MEDIA_STORE_RATE = "2/min"
    api = _client(alice)
    scene = services.scene_create(owner=alice, source_url=PUBLIC_URL)
    answers = [api.post("/api/v1/media/store", {"url": PUBLIC_URL}, format="json").status_code]
    for _ in range(2):
        scene_states.fail(scene_id=scene.pk, error_code="timeout", error_message="stalled")
        answers.append(api.post(f"/api/v1/scenes/{scene.pk}/retry").status_code)

    assert answers == [202, 202, 429]


def test_json_nested_deeper_than_python_can_parse_is_a_400(alice):
    body = "[" * 100_000 + "]" * 100_000

    response = _client(alice).post("/api/v1/media/store", body, content_type="application/json")

    assert response.status_code == 400
    assert "nested too deeply" in response.json()["error"]["message"]


def test_superusers_see_every_scene(alice, admin_user):
    scene = services.scene_create(owner=alice, source_url=PUBLIC_URL)

    response = _client(admin_user).get(f"/api/v1/scenes/{scene.pk}")

    assert response.status_code == 200


def _staff(name: str, *permissions: str):
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user(name, is_staff=True)
    user.user_permissions.set([Permission.objects.get(codename=p) for p in permissions])
    return get_user_model().objects.get(pk=user.pk)  # a fresh object: permissions are cached per instance


def _others_data_requests(scene_id: str, project_id: str) -> dict[str, tuple[str, str, dict | None]]:
    return {
        "view scene": ("get", f"/api/v1/scenes/{scene_id}", None),
        "retry scene": ("post", f"/api/v1/scenes/{scene_id}/retry", None),
        "delete scene": ("delete", f"/api/v1/scenes/{scene_id}", None),
        "view project": ("get", f"/api/v1/projects/{project_id}", None),
        "rename project": ("patch", f"/api/v1/projects/{project_id}", {"name": "Renamed"}),
        "delete project": ("delete", f"/api/v1/projects/{project_id}", None),
    }


@pytest.mark.parametrize(("permissions", "allowed"), [
    ((), set()),
    (("view_scene", "view_project"), {"view scene", "view project"}),
    (("requeue_scene",), {"retry scene"}),
    (("change_project",), {"rename project"}),
    (("delete_scene", "delete_project"), {"delete scene", "delete project"}),
], ids=["staff alone", "view", "requeue", "change", "delete"])
def test_staff_reach_other_users_data_only_with_the_matching_permission(alice, permissions, allowed, monkeypatch):
    from downloads import egress

    monkeypatch.setattr(egress, "_resolve", lambda host, port: ["1.1.1.1"])  # retry checks the URL again
    staff = _staff("staff-" + "-".join(permissions or ("none",)), *permissions)
    reached = set()
    for action, (method, url, body) in _others_data_requests("0" * 24, "0" * 24).items():
        project = services.project_create(owner=alice, name="Alice's")
        scene = services.scene_create(owner=alice, source_url=PUBLIC_URL, project=project)
        scene_states.fail(scene_id=scene.pk, error_code="network_error", error_message="x")
        url = url.replace("0" * 24, str(scene.pk if "scene" in action else project.pk), 1)
        with celery_broker(DEAD_BROKER):  # a retry may enqueue: nothing needs to run
            response = getattr(_client(staff), method)(url, body, format="json")
        assert response.status_code in {200, 202, 204, 404}, (action, response.status_code)
        if response.status_code != 404:
            reached.add(action)

    assert reached == allowed


def test_list_is_newest_first_and_filters_by_status_and_project(alice):
    project = services.project_create(owner=alice, name="P")
    first = services.scene_create(owner=alice, source_url=PUBLIC_URL, project=project)
    second = services.scene_create(owner=alice, source_url=PUBLIC_URL)
    scene_states.fail(scene_id=second.pk, error_code="not_found", error_message="gone")
    api = _client(alice)

    everything = api.get("/api/v1/scenes/").json()
    failed = api.get("/api/v1/scenes/?status=failed").json()
    in_project = api.get(f"/api/v1/scenes/?project={project.pk}").json()
    bad_status = api.get("/api/v1/scenes/?status=nonsense")

    assert [s["id"] for s in everything["results"]] == [second.pk, first.pk]
    assert [s["id"] for s in failed["results"]] == [second.pk]
    assert [s["id"] for s in in_project["results"]] == [first.pk]
    assert bad_status.status_code == 400


@pytest.mark.django_db(transaction=True)
def test_retry_works_only_from_failed_and_queues_one_task(broker_url: str):
    alice = get_user_model().objects.create_user("alice")
    scene = services.scene_create(owner=alice, source_url=PUBLIC_URL)
    api = _client(alice)

    too_early = api.post(f"/api/v1/scenes/{scene.pk}/retry")
    scene_states.fail(scene_id=scene.pk, error_code="timeout", error_message="stalled")
    first = api.post(f"/api/v1/scenes/{scene.pk}/retry")
    second = api.post(f"/api/v1/scenes/{scene.pk}/retry")

    assert (too_early.status_code, first.status_code, second.status_code) == (409, 202, 409)
    assert second.json()["error"]["code"] == "conflict"
    assert first.json()["status"] == "queued"
    assert _queued_task_ids(broker_url) == [first.json()["task_id"]]


def test_store_is_throttled_per_user_with_retry_after(alice, settings):
    settings.MEDIA_STORE_RATE = "2/min"
    api = _client(alice)

    statuses = [api.post("/api/v1/media/store", {"url": PUBLIC_URL}, format="json") for _ in range(3)]

    assert [r.status_code for r in statuses] == [202, 202, 429]
    assert statuses[-1].json()["error"]["code"] == "throttled"
    assert int(statuses[-1]["Retry-After"]) > 0


def test_readyz_names_the_part_that_fails_without_details_for_anonymous_callers(client, db):
    with celery_broker(DEAD_BROKER):
        response = client.get("/readyz")

    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"] == "ok"
    assert checks["broker"] == "failed"  # no host, port, endpoint or bucket for strangers


def test_readyz_gives_staff_the_details(client, admin_user):
    client.force_login(admin_user)
    with celery_broker(DEAD_BROKER):
        response = client.get("/readyz")

    assert response.json()["checks"]["broker"].startswith("failed: ")
    assert "127.0.0.1:1" in response.json()["checks"]["broker"]


def test_readyz_is_ready_when_everything_answers(client, broker_url: str, db):
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok", "workers": "ok"}


@pytest.mark.django_db(transaction=True)
def test_same_idempotency_key_and_body_replays_the_answer_and_queues_nothing_new(broker_url: str):
    alice = get_user_model().objects.create_user("alice")
    api = _client(alice)
    body = {"url": PUBLIC_URL, "title": "Once"}

    first = api.post("/api/v1/media/store", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = api.post("/api/v1/media/store", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")

    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == first.json()
    assert again["Location"] == first["Location"]
    assert Scene.objects.count() == 1
    assert _queued_task_ids(broker_url) == [first.json()["task_id"]]


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_with_one_idempotency_key_make_one_scene(broker_url: str):
    from unittest import mock

    from scenes import services

    alice = get_user_model().objects.create_user("alice")
    api = _client(alice)
    body = {"url": PUBLIC_URL}
    first = api.post("/api/v1/media/store", body, format="json", HTTP_IDEMPOTENCY_KEY="k-race")
    real_replay = services.idempotent_replay
    calls: list[dict] = []

    def racing(**kwargs):
        # The race: the second request looks for the key before the first has stored its answer.
        calls.append(kwargs)
        return None if len(calls) == 1 else real_replay(**kwargs)

    with mock.patch.object(services, "idempotent_replay", side_effect=racing):
        second = api.post("/api/v1/media/store", body, format="json", HTTP_IDEMPOTENCY_KEY="k-race")

    assert second.status_code == 202
    assert second.json()["id"] == first.json()["id"]
    assert Scene.objects.count() == 1
    assert _queued_task_ids(broker_url) == [first.json()["task_id"]]


def test_same_idempotency_key_with_another_body_is_422(alice):
    api = _client(alice)

    api.post("/api/v1/media/store", {"url": PUBLIC_URL}, format="json", HTTP_IDEMPOTENCY_KEY="k-2")
    other = api.post("/api/v1/media/store", {"url": PUBLIC_URL, "title": "changed"}, format="json",
                     HTTP_IDEMPOTENCY_KEY="k-2")

    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert Scene.objects.count() == 1


def test_idempotency_keys_are_per_user(alice, bob):
    first = _client(alice).post("/api/v1/media/store", {"url": PUBLIC_URL}, format="json", HTTP_IDEMPOTENCY_KEY="k")
    second = _client(bob).post("/api/v1/media/store", {"url": PUBLIC_URL}, format="json", HTTP_IDEMPOTENCY_KEY="k")

    assert second.status_code == 202
    assert second.json()["id"] != first.json()["id"]


def test_an_idempotency_key_expires_after_a_day(alice):
    from datetime import timedelta

    from django.utils import timezone

    from scenes.models import IdempotencyRecord

    api = _client(alice)
    first = api.post("/api/v1/media/store", {"url": PUBLIC_URL}, format="json", HTTP_IDEMPOTENCY_KEY="old")
    IdempotencyRecord.objects.update(created_at=timezone.now() - timedelta(hours=25))

    later = api.post("/api/v1/media/store", {"url": PUBLIC_URL}, format="json", HTTP_IDEMPOTENCY_KEY="old")

    assert later.status_code == 202
    assert later.json()["id"] != first.json()["id"]


def test_session_sign_in_works_as_well_as_tokens(client, alice):
    client.force_login(alice)

    response = client.get("/api/v1/me")

    assert response.status_code == 200
    assert response.json()["username"] == "alice"


def test_session_writes_need_the_csrf_token(alice):
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)

    response = browser.post("/api/v1/projects/", {"name": "x"}, content_type="application/json")

    assert response.status_code == 403
    assert "CSRF" in response.json()["error"]["message"]


def test_patch_of_a_project_without_fields_changes_nothing(alice):
    api = _client(alice)
    project = api.post("/api/v1/projects/", {"name": "Kept"}, format="json").json()

    response = api.patch(f"/api/v1/projects/{project['id']}", {}, format="multipart")

    assert response.status_code == 200
    assert response.json()["name"] == "Kept"


def test_one_person_may_have_only_so_many_scenes_queued_or_running(alice, bob, settings, monkeypatch):
    from downloads import egress

    monkeypatch.setattr(egress, "_resolve", lambda host, port: ["1.1.1.1"])
    settings.MEDIA_MAX_ACTIVE_PER_OWNER = 2
    api = _client(alice)
    with celery_broker(DEAD_BROKER):  # nothing needs to run: the scenes stay queued
        answers = [api.post("/api/v1/media/store", {"url": PUBLIC_URL}, format="json") for _ in range(3)]
        failed = services.scene_create(owner=alice, source_url=PUBLIC_URL)
        scene_states.fail(scene_id=failed.pk, error_code="timeout", error_message="x")
        retry = api.post(f"/api/v1/scenes/{failed.pk}/retry")
        others = _client(bob).post("/api/v1/media/store", {"url": PUBLIC_URL}, format="json")

    assert [a.status_code for a in answers] == [202, 202, 429]
    assert answers[-1].json()["error"]["code"] == "too_many_active"
    assert "2 downloads queued or running" in answers[-1].json()["error"]["message"]
    assert retry.status_code == 429
    assert others.status_code == 202  # another person is not held back
