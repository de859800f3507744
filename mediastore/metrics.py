"""Prometheus metrics of web and worker."""

from __future__ import annotations

from prometheus_client import Counter

WEBHOOK_DELIVERIES = Counter("mediastore_webhook_deliveries_total", "Webhook delivery attempts by outcome",
                             ["outcome"])


def webhook_delivered(*, outcome: str) -> None:
    WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()
