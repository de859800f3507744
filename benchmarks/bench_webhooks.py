"""Webhook deliveries per second through one gevent worker, against no-op Celery tasks per second on the same
worker (the floor every delivery pays: a message, a greenlet, an ack).

Each delivery is a real one: claimed with a conditional update, signed, POSTed to a receiver on loopback that
verifies the signature with the reference code, and logged. The receiver answers at once, so the figure is
mediastore's own cost per delivery, not a receiver's.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.common import Result, broker_and_worker, scratch_dir, tasks_per_second

DELIVERIES = 300
ROUNDS = 3


def _deliveries_per_second(endpoint: object, count: int) -> float:
    from django.utils import timezone

    from scenes import webhooks
    from scenes.models import WebhookDelivery

    WebhookDelivery.objects.all().delete()
    now = timezone.now()
    rows = WebhookDelivery.objects.bulk_create([
        WebhookDelivery(endpoint=endpoint, event="scene.completed", scene_id=f"{i:024x}",
                        payload={"type": "scene.completed", "timestamp": now.isoformat(), "data": {"id": f"{i:024x}"}},
                        next_attempt_at=now) for i in range(count)])
    started = time.perf_counter()
    for row in rows:
        webhooks.send(row.pk)
    while WebhookDelivery.objects.filter(status="delivered").count() < count:
        if time.perf_counter() - started > 300:
            raise TimeoutError("deliveries not done within 300 s")
        time.sleep(0.02)
    return count / (time.perf_counter() - started)


def run(*, database_url: str) -> list[Result]:
    from django.contrib.auth import get_user_model

    from scenes import webhooks
    from scenes.models import WebhookEndpoint
    from tests.harness.receiver import Receiver
    from tests.harness.tasks import noop_sync

    owner, _ = get_user_model().objects.get_or_create(username="bench-webhooks")
    with scratch_dir("webhooks") as tmp, Receiver("127.0.0.1") as receiver, broker_and_worker(
            concurrency=100, workdir=Path(tmp), database_url=database_url,
            env={"MEDIA_ALLOWED_NETWORKS": "127.0.0.1/32"}):
        endpoint = WebhookEndpoint.objects.create(owner=owner, url=receiver.url, secret=webhooks.new_secret())
        receiver.trust(endpoint.secret)
        _deliveries_per_second(endpoint, 30)  # warm-up, both paths
        tasks_per_second(noop_sync, 30)
        delivered, noop = [], []
        for _ in range(ROUNDS):  # interleaved, so drift on a noisy machine hits both alike
            delivered.append(_deliveries_per_second(endpoint, DELIVERIES))
            noop.append(tasks_per_second(noop_sync, DELIVERIES))
        unverified = [r for r in receiver.received if not r.verified]
        if unverified:
            raise RuntimeError(f"{len(unverified)} deliveries failed the receiver's signature check")
    return [Result(
        benchmark="webhooks",
        figure=f"webhook deliveries/s, signed and logged (best of {ROUNDS} x {DELIVERIES})",
        value=max(delivered),
        anchor="no-op sync Celery tasks/s, same worker",
        anchor_value=max(noop),
        unit="/s",
        note=f"higher is better; deliveries {'/'.join(f'{r:.0f}' for r in delivered)}; "
             f"no-op tasks {'/'.join(f'{r:.0f}' for r in noop)}",
    )]
