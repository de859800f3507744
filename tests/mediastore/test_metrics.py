"""Metrics: the token on the web's /metrics and the worker's port, the store view's counts, the queue depth."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from unittest import mock

import pytest
import redis
from prometheus_client import REGISTRY, CollectorRegistry

from mediastore import celery_app, metrics
from tests.harness.metrics import Samples, parse, scrape
from tests.harness.processes import free_port, port_open

TOKEN = "a-metrics-token-for-the-tests"


# --- The web's /metrics ------------------------------------------------------------------------------------


@pytest.fixture
def web_token(settings, broker_url: str) -> str:
    settings.METRICS_TOKEN = TOKEN
    return TOKEN


def test_web_metrics_are_absent_without_a_configured_token(client, settings):
    settings.METRICS_TOKEN = None

    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 404


@pytest.mark.parametrize("header", [None, "Bearer wrong-token-of-enough-length", f"Token {TOKEN}", f"Bearer {TOKEN}x",
                                    f"Bearer {TOKEN[:-1]}", "Bearer "])
def test_web_metrics_refuse_anything_but_the_bearer_token(client, web_token: str, header: str | None):
    extra = {"HTTP_AUTHORIZATION": header} if header is not None else {}

    response = client.get("/metrics", **extra)

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"mediastore_" not in response.content


def test_web_metrics_answer_the_bearer_token(client, web_token: str):
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {web_token}")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert ("mediastore_broker_up", ()) in parse(response.content.decode())


def test_store_requests_are_counted_by_status_and_timed(client):
    def count(name: str, labels: dict[str, str] | None = None) -> float:
        return REGISTRY.get_sample_value(name, labels or {}) or 0.0

    refused_before = count("mediastore_store_requests_total", {"status": "401"})
    timed_before = count("mediastore_store_request_duration_seconds_count")

    response = client.post("/api/v1/media/store", {"url": "http://93.184.216.34/video.mp4"},
                           content_type="application/json")

    assert response.status_code == 401
    assert count("mediastore_store_requests_total", {"status": "401"}) == refused_before + 1
    assert count("mediastore_store_request_duration_seconds_count") == timed_before + 1


# --- Queue depth -------------------------------------------------------------------------------------------


def _collect(collector: metrics.QueueDepthCollector) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in collector.collect()
            for s in family.samples}


def test_two_threads_making_the_first_call_get_one_set_of_web_metrics():
    # A web process's first store requests may arrive together: a second set of metrics would register the
    # same names again, which prometheus_client refuses (a 500 for that request).
    original = metrics.web()
    made: list[object] = []
    start = threading.Barrier(2)

    class SlowWeb:
        def __init__(self) -> None:
            made.append(self)
            time.sleep(0.05)  # the other thread arrives meanwhile

    got: list[object] = []

    def first_call() -> None:
        start.wait()
        got.append(metrics.web())

    metrics.web.cache_clear()
    try:
        with mock.patch.object(metrics, "_Web", SlowWeb):
            threads = [threading.Thread(target=first_call) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        metrics.web.cache_clear()
        with mock.patch.object(metrics, "_Web", return_value=original):
            metrics.web()

    assert len(made) == 1
    assert got[0] is got[1]


def test_queue_depth_counts_every_priority_list_of_the_queue(broker_url: str):
    client = redis.Redis.from_url(broker_url)
    client.lpush("celery", "a", "b", "c")
    client.lpush("celery\x06\x169", "d", "e")  # kombu's list for priority 9
    client.lpush("other", "f")
    client.close()

    samples = _collect(metrics.QueueDepthCollector())

    assert samples[("mediastore_queue_depth", (("queue", "celery"),))] == 5
    assert samples[("mediastore_broker_up", ())] == 1


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """A port that accepts connections and never answers: a hung Redis."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    previous = celery_app.conf.broker_url
    celery_app.conf.broker_url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    try:
        yield celery_app.conf.broker_url
    finally:
        celery_app.conf.broker_url = previous
        listener.close()


def test_queue_depth_of_a_hung_broker_is_left_out_quickly(silent_broker: str, caplog):
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="mediastore.metrics"):
        samples = _collect(metrics.QueueDepthCollector())
    took = time.monotonic() - started

    assert samples == {("mediastore_broker_up", ()): 0}
    assert took < 2 * metrics.QUEUE_DEPTH_TIMEOUT + 0.5, f"the scrape waited {took:.2f}s"
    assert "queue depth not read" in caplog.text


# --- The worker's metrics port ------------------------------------------------------------------------------


def _get(port: int, path: str = "/metrics", token: str | None = None) -> tuple[int, str]:
    return scrape(f"http://127.0.0.1:{port}{path}", token=token)


@pytest.fixture
def registry() -> CollectorRegistry:
    from prometheus_client import Counter

    registry = CollectorRegistry()
    Counter("probe_total", "a counter of the test", registry=registry).inc(3)
    return registry


@pytest.fixture
def served(registry: CollectorRegistry) -> Iterator[int]:
    port = free_port()
    stop = metrics.serve(host="127.0.0.1", port=port, token=TOKEN, registry=registry)
    assert stop is not None
    try:
        yield port
    finally:
        stop()


@pytest.mark.parametrize("token", [None, "wrong-token-of-enough-length", TOKEN + "x"])
def test_worker_port_refuses_a_scrape_without_the_token(served: int, token: str | None):
    status, body = _get(served, token=token)

    assert status == 401
    assert "probe_total" not in body


def test_worker_port_answers_the_token(served: int):
    status, body = _get(served, token=TOKEN)

    assert status == 200
    assert parse(body)[("probe_total", ())] == 3


def test_worker_port_serves_only_metrics(served: int):
    assert _get(served, "/", token=TOKEN)[0] == 404


def test_worker_port_closes_when_stopped(registry: CollectorRegistry):
    port = free_port()
    stop = metrics.serve(host="127.0.0.1", port=port, token=TOKEN, registry=registry)
    assert stop is not None
    assert port_open(port)

    stop()

    assert not port_open(port)


def test_a_second_worker_on_a_taken_port_goes_on_without_metrics(served: int, registry: CollectorRegistry, caplog):
    with caplog.at_level(logging.WARNING, logger="mediastore.metrics"):
        second = metrics.serve(host="127.0.0.1", port=served, token=TOKEN, registry=registry)

    assert second is None
    assert f"cannot listen on 127.0.0.1:{served}" in caplog.text
    assert _get(served, token=TOKEN)[0] == 200  # the first one still serves


def test_worker_port_is_not_opened_without_a_token(registry: CollectorRegistry, caplog):
    port = free_port()
    with caplog.at_level(logging.WARNING, logger="mediastore.metrics"):
        stop = metrics.serve(host="127.0.0.1", port=port, token=None, registry=registry)

    assert stop is None
    assert not port_open(port)
    assert "METRICS_TOKEN is not" in caplog.text
