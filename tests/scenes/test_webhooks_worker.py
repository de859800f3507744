"""Webhooks through a real gevent worker and a real receiver on loopback that verifies every signature with
the Standard Webhooks reference code (tests/harness/receiver.py)."""

from __future__ import annotations

import itertools
import time

import pytest
from django.contrib.auth import get_user_model

from scenes import services, webhooks
from scenes.models import WebhookDelivery
from tests.harness import scene_states
from tests.harness.processes import wait_until
from tests.harness.receiver import Receiver
from tests.harness.scene_states import ingest
from tests.harness.services import celery_broker

# Quick retries, a quick sweeper: the schedule's shape is the same as in production, only shorter.
FAST = {"WEBHOOK_RETRY_DELAYS": "0.3s,0.3s,0.3s,0.3s", "MEDIA_SWEEP_INTERVAL": "1", "MEDIA_RESEND_AFTER": "2",
        "MEDIA_SOCKET_TIMEOUT": "5", "MEDIA_MAX_ATTEMPTS": "1"}


@pytest.fixture
def owner(transactional_db, settings):
    settings.MEDIA_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    return get_user_model().objects.create_user("hooked")


def _settled(receiver: Receiver, count: int, *, quiet: float = 2.0, timeout: float = 60) -> None:
    """Wait for ``count`` requests, then long enough that a duplicate would have come."""
    wait_until(lambda: len(receiver.received) >= count, timeout=timeout, interval=0.05,
               what=f"{count} webhook request(s)")
    time.sleep(quiet)


def test_completed_and_failed_scenes_each_produce_exactly_one_signed_delivery(owner, start_worker, media_server):
    start_worker(concurrency=4, env=FAST)
    with Receiver("127.0.0.1") as receiver:
        endpoint = webhooks.webhook_endpoint_create(owner=owner, url=receiver.url,
                                                    events=["scene.completed", "scene.failed"])
        receiver.trust(endpoint.secret)

        completed = ingest(owner, media_server.url("video.mp4"))
        failed = ingest(owner, media_server.url("missing.mp4"))
        _settled(receiver, 2)

    assert (completed.status, failed.status) == ("completed", "failed")
    got = receiver.received
    assert [(r.event["type"], r.event["data"]["id"]) for r in sorted(got, key=lambda r: r.event["type"])] == [
        ("scene.completed", completed.pk), ("scene.failed", failed.pk)]
    assert all(r.verified for r in got)
    assert len({r.headers["webhook-id"] for r in got}) == 2
    by_type = {r.event["type"]: r.event["data"] for r in got}
    assert by_type["scene.completed"]["size_bytes"] == completed.size_bytes
    assert by_type["scene.failed"]["error_code"] == failed.error_code


def test_a_receiver_answering_500_three_times_gets_the_event_on_the_4th_try(owner, start_worker):
    start_worker(concurrency=2, env=FAST)
    scene = services.scene_create(owner=owner, source_url="http://127.0.0.1:9/v.mp4")
    with Receiver("127.0.0.1", answers=[500, 500, 500]) as receiver:
        endpoint = webhooks.webhook_endpoint_create(owner=owner, url=receiver.url, events=["scene.completed"])
        receiver.trust(endpoint.secret)

        scene_states.start(scene_id=scene.pk)
        scene_states.complete(scene_id=scene.pk, storage_key="scenes/x/media.mp4")
        _settled(receiver, 4)

    got = receiver.received
    assert [r.answered for r in got] == [500, 500, 500, 200]
    assert all(r.verified for r in got)
    assert len({r.headers["webhook-id"] for r in got}) == 1  # one message, tried four times
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("delivered", 4)
    assert [(a.number, a.status_code) for a in delivery.log.order_by("number")] == [
        (1, 500), (2, 500), (3, 500), (4, 200)]
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(got)]
    assert all(gap >= 0.3 * 0.8 - 0.05 for gap in gaps), gaps  # the backoff was waited out


def test_an_event_whose_broker_was_down_at_the_transition_is_delivered_later(owner, start_worker, caplog):
    start_worker(concurrency=2, env=FAST)
    scene = services.scene_create(owner=owner, source_url="http://127.0.0.1:9/v.mp4")
    with Receiver("127.0.0.1") as receiver:
        endpoint = webhooks.webhook_endpoint_create(owner=owner, url=receiver.url, events=["scene.cancelled"])
        receiver.trust(endpoint.secret)

        # The web process's broker is down while the scene is cancelled: the delivery's task cannot be sent.
        with celery_broker("redis://127.0.0.1:1/0"):  # nothing listens on port 1
            services.scene_cancel(scene=scene)
        assert "not sent now (broker); the sweeper sends it" in caplog.text
        _settled(receiver, 1, timeout=30)

    [got] = receiver.received
    assert got.verified
    assert (got.event["type"], got.event["data"]["id"]) == ("scene.cancelled", scene.pk)
    assert WebhookDelivery.objects.get().status == "delivered"


def test_a_receiver_moved_into_a_refused_network_is_never_contacted(owner, start_worker):
    start_worker(concurrency=2, env=FAST)
    scene = services.scene_create(owner=owner, source_url="http://127.0.0.1:9/v.mp4")
    with Receiver("127.0.0.5") as inside:
        endpoint = webhooks.webhook_endpoint_create(owner=owner, url="http://127.0.0.1:9/hooks")
        # As if its name now pointed inside: the worker checks the address at every delivery.
        type(endpoint).objects.filter(pk=endpoint.pk).update(url=inside.url)

        scene_states.fail(scene_id=scene.pk, error_code="not_found", error_message="gone")
        wait_until(lambda: WebhookDelivery.objects.filter(status="failed").count() == 2, timeout=30,
                   what="both deliveries (processing, failed) to use up their retries")

    assert inside.connections == 0
    errors = set(WebhookDelivery.objects.values_list("log__error", flat=True))
    assert all(error.startswith("url_not_allowed") for error in errors), errors
    endpoint.refresh_from_db()
    assert endpoint.failing_since is not None
