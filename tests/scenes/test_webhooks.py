"""Webhooks in one process: what a transition records, how it is signed, how a delivery is sent and logged.
The worker's part (the task, retries over time, a broker that was down) is in test_webhooks_worker.py."""

from __future__ import annotations

import datetime as dt
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from rest_framework.test import APIClient
from standardwebhooks.webhooks import Webhook

from scenes import lifecycle, services, webhooks
from scenes.models import Scene, WebhookDelivery, WebhookEndpoint
from tests.harness import scene_states
from tests.harness.receiver import Receiver
from tests.harness.tokens import api_token

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner():
    return get_user_model().objects.create_user("owner")


@pytest.fixture
def scene(owner) -> Scene:
    return services.scene_create(owner=owner, source_url="https://example.com/v.mp4")


@pytest.fixture(autouse=True)
def _loopback_receivers_only(settings):
    settings.MEDIA_ALLOWED_NETWORKS = ["127.0.0.1/32"]  # 127.0.0.1 is "the internet"; 127.0.0.5 is not


@pytest.fixture
def no_broker():
    with mock.patch("scenes.webhooks.send") as send:
        yield send


def _endpoint(owner, url="http://127.0.0.1:9/hooks", **kwargs) -> WebhookEndpoint:
    return webhooks.webhook_endpoint_create(owner=owner, url=url, **kwargs)


def test_a_new_secret_has_the_spec_prefix_and_32_random_bytes():
    import base64

    secret = webhooks.new_secret()

    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert secret != webhooks.new_secret()


def test_completion_records_one_delivery_per_endpoint_that_wants_it(owner, scene, no_broker):
    wants = _endpoint(owner, events=["scene.completed"])
    everything = _endpoint(owner)
    _endpoint(owner, events=["scene.failed"])
    other_user = _endpoint(get_user_model().objects.create_user("other"))
    scene_states.start(scene_id=scene.pk)

    scene_states.complete(scene_id=scene.pk, storage_key="scenes/k/media.mp4", size_bytes=5)

    deliveries = WebhookDelivery.objects.filter(event="scene.completed")
    assert sorted(d.endpoint_id for d in deliveries) == sorted([wants.pk, everything.pk])
    assert not WebhookDelivery.objects.filter(endpoint=other_user).exists()
    payload = deliveries[0].payload
    assert payload["type"] == "scene.completed"
    assert payload["data"]["id"] == scene.pk
    assert payload["data"]["status"] == "completed"
    assert payload["data"]["size_bytes"] == 5


def test_claim_records_scene_processing_and_a_progress_write_records_nothing(owner, scene, no_broker):
    _endpoint(owner)

    scene_states.start(scene_id=scene.pk)
    from asgiref.sync import async_to_sync

    async_to_sync(lifecycle.heartbeat)(scene_id=scene.pk, attempt=1, stage="downloading", progress=40)

    assert list(WebhookDelivery.objects.values_list("event", flat=True)) == ["scene.processing"]


def test_a_project_endpoint_hears_only_its_project(owner, no_broker):
    holiday = services.project_create(owner=owner, name="Holiday")
    work = services.project_create(owner=owner, name="Work")
    endpoint = _endpoint(owner, project=holiday)
    in_holiday = services.scene_create(owner=owner, source_url="https://e.com/1.mp4", project=holiday)
    in_work = services.scene_create(owner=owner, source_url="https://e.com/2.mp4", project=work)

    scene_states.fail(scene_id=in_holiday.pk, error_code="not_found", error_message="gone")
    scene_states.fail(scene_id=in_work.pk, error_code="not_found", error_message="gone")

    assert set(WebhookDelivery.objects.filter(event="scene.failed").values_list("scene_id", "endpoint_id")) == {
        (in_holiday.pk, endpoint.pk)}


def test_a_transition_rolled_back_leaves_no_delivery(owner, scene, no_broker):
    _endpoint(owner)

    def cancel_then_fail() -> None:
        with transaction.atomic():
            lifecycle.cancel(scene_id=scene.pk)
            raise RuntimeError("the caller's transaction fails after the transition")

    with pytest.raises(RuntimeError):
        cancel_then_fail()

    assert Scene.objects.get(pk=scene.pk).status == "queued"
    assert not WebhookDelivery.objects.exists()


def test_deliveries_are_sent_only_after_the_commit(owner, scene, django_capture_on_commit_callbacks, no_broker):
    _endpoint(owner)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        lifecycle.cancel(scene_id=scene.pk)
        no_broker.assert_not_called()
    for callback in callbacks:
        callback()

    delivery = WebhookDelivery.objects.get()
    assert delivery.event == "scene.cancelled"
    assert [c.args[0] for c in no_broker.call_args_list] == [delivery.pk]


def test_deleting_a_scene_records_scene_deleted(owner, scene, no_broker):
    _endpoint(owner)
    scene_id = scene.pk

    with mock.patch("downloads.tasks.delete_scene_objects_task.apply_async"):
        services.scene_delete(scene=scene)

    delivery = WebhookDelivery.objects.get()
    assert (delivery.event, delivery.scene_id, delivery.payload["data"]["status"]) == (
        "scene.deleted", scene_id, "deleted")


def test_deleting_a_user_deletes_their_endpoints_without_an_error(owner, scene, no_broker):
    _endpoint(owner)

    with mock.patch("downloads.tasks.delete_scene_objects_task.apply_async"):
        owner.delete()

    assert not WebhookEndpoint.objects.exists()
    assert not WebhookDelivery.objects.exists()


def test_signatures_verify_with_the_reference_code_and_both_secrets_during_a_rotation(owner):
    endpoint = _endpoint(owner)
    old_secret = endpoint.secret
    endpoint = webhooks.webhook_secret_rotate(endpoint=endpoint)
    body = '{"type":"scene.completed"}'

    headers = webhooks.signature_headers(endpoint, msg_id="msg_1", body=body, now=timezone.now())

    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old_secret, endpoint.secret):
        Webhook(secret).verify(body, headers)  # raises when the signature does not match


def test_the_old_secret_stops_signing_when_the_overlap_ends(owner):
    endpoint = webhooks.webhook_secret_rotate(endpoint=_endpoint(owner))
    later = endpoint.previous_secret_expires_at + dt.timedelta(seconds=1)

    headers = webhooks.signature_headers(endpoint, msg_id="msg_1", body="{}", now=later)

    assert headers["webhook-signature"] == Webhook(endpoint.secret).sign("msg_1", later, "{}")


def _due_delivery(owner, url: str) -> WebhookDelivery:
    endpoint = WebhookEndpoint.objects.create(owner=owner, url=url, secret=webhooks.new_secret())
    return WebhookDelivery.objects.create(endpoint=endpoint, event="scene.completed", scene_id="a" * 24,
                                          payload={"type": "scene.completed", "data": {"id": "a" * 24}},
                                          next_attempt_at=timezone.now())


def test_a_delivery_reaches_a_real_receiver_signed_and_is_logged(owner, no_broker):
    with Receiver("127.0.0.1") as receiver:
        delivery = _due_delivery(owner, receiver.url)
        receiver.trust(delivery.endpoint.secret)

        outcome = webhooks.deliver(delivery_id=delivery.pk)

    assert outcome == "delivered"
    [got] = receiver.received
    assert got.verified
    assert got.headers["webhook-id"] == delivery.pk
    assert got.event["data"]["id"] == "a" * 24
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)
    [attempt] = delivery.log.all()
    assert (attempt.number, attempt.status_code, attempt.error) == (1, 200, "")
    assert attempt.latency_ms is not None
    assert "ok" in attempt.response_excerpt


def test_a_failed_attempt_is_logged_and_scheduled_with_backoff(owner, settings, no_broker):
    settings.WEBHOOK_RETRY_DELAYS = [60.0, 600.0]
    with Receiver("127.0.0.1", answers=[500]) as receiver:
        delivery = _due_delivery(owner, receiver.url)

        before = timezone.now()
        outcome = webhooks.deliver(delivery_id=delivery.pk)

    assert outcome == "retry"
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, 500)
    wait = (delivery.next_attempt_at - before).total_seconds()
    assert 60 * 0.8 - 1 <= wait <= 60 * 1.2 + 1
    assert delivery.log.get().response_excerpt == "receiver says no"


def test_a_delivery_not_due_is_not_sent(owner, no_broker):
    with Receiver("127.0.0.1") as receiver:
        delivery = _due_delivery(owner, receiver.url)
        WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() + dt.timedelta(hours=1))

        assert webhooks.deliver(delivery_id=delivery.pk) == "not_due"
    assert receiver.received == []


def test_the_last_failure_fails_the_delivery_and_marks_the_endpoint_failing(owner, settings, no_broker):
    settings.WEBHOOK_RETRY_DELAYS = [1.0]
    with Receiver("127.0.0.1", answers=[500, 503]) as receiver:
        delivery = _due_delivery(owner, receiver.url)
        webhooks.deliver(delivery_id=delivery.pk)
        WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())

        assert webhooks.deliver(delivery_id=delivery.pk) == "failed"

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("failed", 2)
    assert delivery.endpoint.failing_since is not None


def test_a_receiver_in_a_refused_network_is_never_contacted_at_delivery(owner, no_broker):
    with Receiver("127.0.0.5") as inside:
        # Registered when the policy allowed it (or through a name that changed its answer since).
        delivery = _due_delivery(owner, inside.url)

        outcome = webhooks.deliver(delivery_id=delivery.pk)

    assert outcome == "retry"
    assert inside.connections == 0
    assert delivery.log.get().error.startswith("url_not_allowed")


def test_redirects_are_not_followed(owner, no_broker):
    with Receiver("127.0.0.1", answers=[307]) as receiver:
        delivery = _due_delivery(owner, receiver.url)

        assert webhooks.deliver(delivery_id=delivery.pk) == "retry"

    assert len(receiver.received) == 1
    assert delivery.log.get().status_code == 307


@pytest.fixture
def api(owner):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token(owner)}")
    return client


def test_registration_refuses_a_url_into_a_refused_network(api):
    response = api.post("/api/v1/webhooks/", {"url": "http://127.0.0.5:8080/hooks"}, format="json")

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "url_not_allowed"
    assert not WebhookEndpoint.objects.exists()


def test_registration_answers_with_the_secret_and_the_events(api):
    response = api.post("/api/v1/webhooks/", {"url": "http://127.0.0.1:8080/hooks",
                                               "events": ["scene.completed", "scene.failed"]}, format="json")

    assert response.status_code == 201
    body = response.json()
    assert body["secret"].startswith("whsec_")
    assert body["events"] == ["scene.completed", "scene.failed"]


def test_registration_refuses_an_unknown_event(api):
    response = api.post("/api/v1/webhooks/", {"url": "http://127.0.0.1:8080/hooks", "events": ["scene.eaten"]},
                        format="json")

    assert response.status_code == 400
    assert "events" in response.json()["error"]["fields"]


def test_the_delivery_log_shows_attempts_and_send_again_queues_one_more(api, owner, no_broker):
    with Receiver("127.0.0.1", answers=[500]) as receiver:
        delivery = _due_delivery(owner, receiver.url)
        webhooks.deliver(delivery_id=delivery.pk)

    listed = api.get("/api/v1/webhook-deliveries/").json()["results"]
    resent = api.post(f"/api/v1/webhook-deliveries/{delivery.pk}/resend")

    assert [entry["id"] for entry in listed] == [delivery.pk]
    assert [(a["number"], a["status_code"]) for a in listed[0]["log"]] == [(1, 500)]
    assert resent.status_code == 202
    assert resent.json()["status"] == "pending"
    assert no_broker.call_args.args == (delivery.pk,)


def test_someone_elses_endpoints_and_deliveries_are_not_found(api, no_broker):
    other = get_user_model().objects.create_user("other")
    endpoint = _endpoint(other)
    delivery = _due_delivery(other, "http://127.0.0.1:9/hooks")

    assert api.get(f"/api/v1/webhooks/{endpoint.pk}").status_code == 404
    assert api.get(f"/api/v1/webhook-deliveries/{delivery.pk}").status_code == 404
    assert api.post(f"/api/v1/webhook-deliveries/{delivery.pk}/resend").status_code == 404
    assert api.get("/api/v1/webhooks/").json()["results"] == []
