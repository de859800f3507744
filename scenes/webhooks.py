"""Webhooks: a user's endpoints hear of their scenes' transitions, signed to the Standard Webhooks spec.

- **Recorded with the transition.** ``record`` runs inside the transaction of the scene's change (see
  ``scenes.lifecycle``) and writes one ``WebhookDelivery`` per endpoint that wants the event, the payload
  being the scene as the API shows it at that moment. Nothing is lost when the broker is down: a delivery
  whose task was never sent (or was lost) is sent again by the sweeper (``webhooks_sweep``).
- **Sent by a Celery task** (``scenes.deliver_webhook``), which claims the delivery with a conditional
  update, so two copies of the task send it once. A failed attempt is tried again after
  ``WEBHOOK_RETRY_DELAYS`` (±20 % jitter; about a day in all); after the last one the delivery fails and
  the endpoint is marked failing until one succeeds again. Every attempt is logged (``WebhookAttempt``).
- **The address policy on every delivery.** The endpoint's host is resolved and checked like a media URL,
  and the request goes to the checked address, so a name that changes its answer cannot lead it inside.
  Redirects are not followed.
- **Never in the pipeline's way.** A job only writes rows; a slow receiver holds a delivery task for at most
  ``WEBHOOK_TIMEOUT``.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import logging
import random
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from downloads import egress
from scenes.lifecycle import Announcement
from scenes.models import Project, WebhookAttempt, WebhookDelivery, WebhookEndpoint

logger = logging.getLogger(__name__)

Delivery = WebhookDelivery.Status
EVENTS = tuple(WebhookEndpoint.Event.values)
EXCERPT_CHARS = 1000
JITTER = 0.2
# What one attempt may hold a delivery for before another task may take it over (the sender died).
LEASE_MARGIN = dt.timedelta(seconds=30)


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


# --- Endpoints: the writes ------------------------------------------------------------------------------


class InvalidEvents(ValueError):
    def __init__(self, unknown: Iterable[str]) -> None:
        self.message = f"Unknown event(s): {', '.join(sorted(unknown))}. Choose from {', '.join(EVENTS)}."
        super().__init__(self.message)


def checked_events(events: list[str]) -> list[str]:
    unknown = set(events) - set(EVENTS)
    if unknown:
        raise InvalidEvents(unknown)
    return sorted(set(events))


def checked_url(url: str) -> str:
    # The policy of media URLs (``UrlRejected`` from scenes.validators), checked now and at every delivery.
    from scenes.validators import validate_media_url

    return validate_media_url(url)


def webhook_endpoint_create(*, owner: User, url: str, events: list[str] | None = None,
                            project: Project | None = None, description: str = "") -> WebhookEndpoint:
    """Register an endpoint (``UrlRejected``, ``InvalidEvents``); empty ``events`` means every event."""
    return WebhookEndpoint.objects.create(owner=owner, url=checked_url(url), events=checked_events(events or []),
                                          project=project, description=description, secret=new_secret())


def webhook_endpoint_update(*, endpoint: WebhookEndpoint, url: str | None = None, events: list[str] | None = None,
                            description: str | None = None, enabled: bool | None = None) -> WebhookEndpoint:
    changes: dict[str, Any] = {}
    if url is not None:
        changes["url"] = checked_url(url)
    if events is not None:
        changes["events"] = checked_events(events)
    if description is not None:
        changes["description"] = description
    if enabled is not None:
        changes["enabled"] = enabled
    if changes:
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(**changes, updated_at=timezone.now())
        endpoint.refresh_from_db()
    return endpoint


def webhook_secret_rotate(*, endpoint: WebhookEndpoint) -> WebhookEndpoint:
    """A new secret; deliveries carry signatures by both for ``WEBHOOK_ROTATION_OVERLAP``, so the receiver
    can switch to the new one without missing an event."""
    now = timezone.now()
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        previous_secret=endpoint.secret, secret=new_secret(), updated_at=now,
        previous_secret_expires_at=now + dt.timedelta(seconds=settings.WEBHOOK_ROTATION_OVERLAP))
    endpoint.refresh_from_db()
    return endpoint


def webhook_endpoint_delete(*, endpoint: WebhookEndpoint) -> None:
    endpoint.delete()


def webhook_delivery_resend(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a delivery again now, whatever became of it (the "send again" of the API and the admin)."""
    WebhookDelivery.objects.filter(pk=delivery.pk).exclude(status=Delivery.SENDING).update(
        status=Delivery.PENDING, next_attempt_at=timezone.now(), updated_at=timezone.now())
    send_after_commit([delivery.pk])
    delivery.refresh_from_db()
    return delivery


# --- Recording, inside the transition's transaction --------------------------------------------------------


def _payload(announcement: Announcement, event: str, now: dt.datetime) -> dict[str, Any]:
    return {"type": event, "timestamp": now.isoformat(), "data": announcement.scene}


def record(announcement: Announcement) -> list[str]:
    """The deliveries this change owes (one per endpoint of the owner that wants the event); their tasks are
    sent after the commit. Returns their ids."""
    event = announcement.event
    if event is None or announcement.owner_id is None:
        return []
    endpoints = [endpoint for endpoint in WebhookEndpoint.objects.filter(
        Q(project__isnull=True) | Q(project_id=announcement.project_id), owner_id=announcement.owner_id,
        enabled=True) if endpoint.wants(event)]
    if not endpoints:
        return []
    now = timezone.now()
    payload = _payload(announcement, event, now)
    deliveries = WebhookDelivery.objects.bulk_create([
        WebhookDelivery(endpoint=endpoint, event=event, scene_id=announcement.scene_id, payload=payload,
                        next_attempt_at=now) for endpoint in endpoints])
    ids = [delivery.pk for delivery in deliveries]
    send_after_commit(ids)
    return ids


def _column(model: Any, name: str) -> str:
    return str(model._meta.get_field(name).column)


async def arecord_mongo(announcement: Announcement, *, database: Any, session: Any) -> list[str]:
    """``record`` for the worker on MongoDB: PyMongo's async client, in the session's transaction. The
    caller sends the tasks (``send``) once the transaction has committed."""
    from scenes.models import new_object_id

    event = announcement.event
    if event is None or announcement.owner_id is None:
        return []
    endpoints_table = database[WebhookEndpoint._meta.db_table]
    query = {_column(WebhookEndpoint, "owner"): announcement.owner_id, _column(WebhookEndpoint, "enabled"): True,
             _column(WebhookEndpoint, "project"): {"$in": [None, announcement.project_id]}}
    wanted = []
    async for document in endpoints_table.find(query, session=session):
        events = document.get(_column(WebhookEndpoint, "events")) or []
        if not events or event in events:
            wanted.append(document["_id"])
    if not wanted:
        return []
    now = timezone.now()
    payload = _payload(announcement, event, now)
    columns = {name: _column(WebhookDelivery, name) for name in (
        "endpoint", "event", "scene_id", "payload", "status", "attempts", "next_attempt_at", "last_status_code",
        "created_at", "delivered_at", "updated_at")}
    documents = [{"_id": new_object_id(), columns["endpoint"]: endpoint_id, columns["event"]: event,
                  columns["scene_id"]: announcement.scene_id, columns["payload"]: payload,
                  columns["status"]: Delivery.PENDING.value, columns["attempts"]: 0,
                  columns["next_attempt_at"]: now, columns["last_status_code"]: None, columns["created_at"]: now,
                  columns["delivered_at"]: None, columns["updated_at"]: now} for endpoint_id in wanted]
    await database[WebhookDelivery._meta.db_table].insert_many(documents, session=session)
    return [document["_id"] for document in documents]


def send_after_commit(ids: list[str]) -> None:
    for delivery_id in ids:
        transaction.on_commit(functools.partial(send, delivery_id))


def send(delivery_id: str, *, countdown: float | None = None) -> None:
    """Publish the delivery's task; a broker that is down loses nothing (the sweeper sends it later)."""
    from scenes.tasks import deliver_webhook

    try:
        deliver_webhook.apply_async(args=(delivery_id,), countdown=countdown or 0, task_id=str(uuid.uuid4()),
                                    retry=False)
    except Exception:  # kombu's OperationalError, a refused or timed-out connection, …
        logger.warning("webhook delivery %s not sent now (broker); the sweeper sends it", delivery_id, exc_info=True)


# --- Delivering -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status_code: int | None = None
    latency_ms: int | None = None
    error: str = ""
    excerpt: str = ""

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def signature_headers(endpoint: WebhookEndpoint, *, msg_id: str, body: str, now: dt.datetime) -> dict[str, str]:
    """The spec's three headers; one ``v1`` signature per valid secret (two while a rotation overlaps)."""
    valid = [endpoint.secret]
    if endpoint.previous_secret and endpoint.previous_secret_expires_at and endpoint.previous_secret_expires_at > now:
        valid.append(endpoint.previous_secret)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": " ".join(Webhook(secret).sign(msg_id, now, body) for secret in valid),
    }


def _post(endpoint: WebhookEndpoint, delivery: WebhookDelivery, now: dt.datetime) -> Answer:
    import urllib3

    try:
        url, addresses = egress.allowed_addresses(endpoint.url, policy=egress.settings_policy())
    except egress.UrlRefused as refused:
        return Answer(error=f"url_not_allowed: {refused.message}")
    body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False)
    parts = urlsplit(url)
    host = parts.hostname or ""
    headers = {"content-type": "application/json", "user-agent": "mediastore-webhooks/1",
               "host": parts.netloc.rsplit("@", 1)[-1],
               **signature_headers(endpoint, msg_id=delivery.pk, body=body, now=now)}
    timeout = urllib3.Timeout(total=settings.WEBHOOK_TIMEOUT)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    # To the address that was checked, never a second lookup of the name; TLS still verifies the name.
    pool: urllib3.HTTPConnectionPool
    if parts.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(addresses[0], port, timeout=timeout, retries=False, maxsize=1,
                                           server_hostname=host, assert_hostname=host, cert_reqs="CERT_REQUIRED")
    else:
        pool = urllib3.HTTPConnectionPool(addresses[0], port, timeout=timeout, retries=False, maxsize=1)
    started = time.monotonic()
    try:
        with pool:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            response = pool.urlopen("POST", target,
                                    body=body.encode(), headers=headers, redirect=False, preload_content=False)
            try:
                excerpt = response.read(EXCERPT_CHARS * 4, decode_content=True)[: EXCERPT_CHARS * 4]
            finally:
                response.release_conn()
                response.close()
    except urllib3.exceptions.HTTPError as exc:
        latency = int((time.monotonic() - started) * 1000)
        reason = "timeout" if isinstance(exc, urllib3.exceptions.TimeoutError) else "no answer"
        return Answer(latency_ms=latency, error=f"{reason}: {type(exc).__name__}")
    latency = int((time.monotonic() - started) * 1000)
    text = excerpt.decode("utf-8", "replace")[:EXCERPT_CHARS]
    return Answer(status_code=response.status, latency_ms=latency, excerpt=text)


def _next_delay(attempt: int) -> float | None:
    """Seconds until attempt ``attempt + 1``, or None when ``attempt`` was the last."""
    delays = settings.WEBHOOK_RETRY_DELAYS
    if attempt > len(delays):
        return None
    base = float(delays[attempt - 1])
    return base * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311  # jitter, not a secret


def deliver(*, delivery_id: str) -> str:
    """One attempt of a delivery that is due; returns what happened (``delivered``, ``retry``, ``failed``,
    or ``not_due`` when another task has it or it is not due yet)."""
    now = timezone.now()
    lease = now + dt.timedelta(seconds=settings.WEBHOOK_TIMEOUT) + LEASE_MARGIN
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_id, status__in=[Delivery.PENDING, Delivery.SENDING], next_attempt_at__lte=now
    ).update(status=Delivery.SENDING, next_attempt_at=lease, attempts=F("attempts") + 1, updated_at=now)
    if claimed != 1:
        return "not_due"
    delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_id)
    endpoint = delivery.endpoint
    answer = _post(endpoint, delivery, now) if endpoint.enabled else Answer(error="the endpoint is disabled")
    WebhookAttempt.objects.create(delivery=delivery, number=delivery.attempts, started_at=now,
                                  status_code=answer.status_code, latency_ms=answer.latency_ms,
                                  error=answer.error[:500], response_excerpt=answer.excerpt)
    done = timezone.now()
    mine = WebhookDelivery.objects.filter(pk=delivery_id, status=Delivery.SENDING, attempts=delivery.attempts)
    if answer.ok:
        mine.update(status=Delivery.DELIVERED, delivered_at=done, last_status_code=answer.status_code,
                    updated_at=done)
        WebhookEndpoint.objects.filter(pk=endpoint.pk, failing_since__isnull=False).update(failing_since=None)
        outcome = "delivered"
    else:
        delay = _next_delay(delivery.attempts) if endpoint.enabled else None
        if delay is None:
            mine.update(status=Delivery.FAILED, last_status_code=answer.status_code, updated_at=done)
            WebhookEndpoint.objects.filter(pk=endpoint.pk, failing_since__isnull=True).update(failing_since=done)
            outcome = "failed"
        else:
            mine.update(status=Delivery.PENDING, last_status_code=answer.status_code, updated_at=done,
                        next_attempt_at=done + dt.timedelta(seconds=delay))
            # A short wait rides on the broker; a long one on the sweeper (a countdown beyond the broker's
            # visibility timeout would come back as duplicates meanwhile).
            if delay < settings.CELERY_BROKER_VISIBILITY_TIMEOUT / 2:
                send(delivery_id, countdown=delay)
            outcome = "retry"
    _log_attempt(delivery, answer, outcome)
    from mediastore import metrics

    metrics.webhook_delivered(outcome=outcome)
    return outcome


def _log_attempt(delivery: WebhookDelivery, answer: Answer, outcome: str) -> None:
    what = f"HTTP {answer.status_code}" if answer.status_code is not None else answer.error
    level = logging.INFO if outcome == "delivered" else logging.WARNING
    logger.log(level, "webhook %s (%s, scene %s) attempt %d to %s: %s in %s ms → %s", delivery.pk, delivery.event,
               delivery.scene_id, delivery.attempts, delivery.endpoint.url, what, answer.latency_ms, outcome)


def webhooks_sweep() -> int:
    """Send again the deliveries that are due but whose task never came (a broker that was down at the
    transition, a lost message, a long backoff) or whose sender died mid-attempt; returns how many."""
    cutoff = timezone.now() - dt.timedelta(seconds=settings.MEDIA_RESEND_AFTER)
    late = list(WebhookDelivery.objects.filter(
        Q(status=Delivery.PENDING) | Q(status=Delivery.SENDING), next_attempt_at__lt=cutoff
    ).values_list("pk", flat=True)[:500])
    long_waits = list(WebhookDelivery.objects.filter(
        status=Delivery.PENDING, next_attempt_at__lte=timezone.now(), attempts__gt=0,
    ).values_list("pk", flat=True)[:500])
    due = list(dict.fromkeys([*late, *long_waits]))
    for delivery_id in due:
        send(delivery_id)
    if late:
        logger.warning("sweep: %d webhook deliveries sent again", len(late))
    return len(due)


# --- Reads ------------------------------------------------------------------------------------------------


def endpoint_list(*, owner: User | None) -> QuerySet[WebhookEndpoint]:
    endpoints = WebhookEndpoint.objects.order_by("-created_at")
    return endpoints if owner is None else endpoints.filter(owner=owner)


def delivery_list(*, owner: User | None, endpoint_id: str | None = None,
                  scene_id: str | None = None) -> QuerySet[WebhookDelivery]:
    deliveries = WebhookDelivery.objects.select_related("endpoint").order_by("-created_at")
    if owner is not None:
        deliveries = deliveries.filter(endpoint__owner=owner)
    if endpoint_id:
        deliveries = deliveries.filter(endpoint_id=endpoint_id)
    if scene_id:
        deliveries = deliveries.filter(scene_id=scene_id)
    return deliveries
