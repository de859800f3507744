"""Celery tasks of the scenes app: thin, idempotent, given ids only."""

from __future__ import annotations

from mediastore.celery import app as celery_app
from scenes import webhooks


@celery_app.task(name="scenes.deliver_webhook", ignore_result=True)
def deliver_webhook(delivery_id: str) -> str:
    """One attempt of a webhook delivery, if it is due (copies of the task send it once)."""
    return webhooks.deliver(delivery_id=delivery_id)
