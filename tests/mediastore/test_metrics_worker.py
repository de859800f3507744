"""Metrics on the real stack: a gevent worker ingests a clip from the media server while the test scrapes the
worker's metrics port and the web's /metrics before, during and after."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.test import APIClient

from scenes.models import Scene
from tests.harness.media import MediaServer
from tests.harness.metrics import Samples, parse, scrape, value
from tests.harness.processes import free_port, port_open, wait_until
from tests.harness.tokens import api_token

TOKEN = "a-metrics-token-for-the-tests"
LIMITS = {"MEDIA_MAX_FILESIZE": "20M", "MEDIA_SOCKET_TIMEOUT": "5", "MEDIA_DOWNLOAD_TIMEOUT": "120"}
STAGES = ("download", "probe", "upload")


def _web(client: Client) -> Samples:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    return parse(response.content.decode())


def _worker(port: int) -> Samples:
    status, body = scrape(f"http://127.0.0.1:{port}/metrics", token=TOKEN)
    assert status == 200
    return parse(body)


def test_an_ingest_moves_the_job_counters_stage_histograms_and_bytes(transactional_db, start_worker, settings,
                                                                   media_server: MediaServer):
    port = free_port()
    start_worker(concurrency=4, env={**LIMITS, "METRICS_TOKEN": TOKEN, "MEDIA_WORKER_METRICS_PORT": str(port)})
    settings.METRICS_TOKEN = TOKEN
    settings.MEDIA_ALLOWED_NETWORKS = ["127.0.0.0/8"]  # the loopback media server
    api = APIClient()
    owner = get_user_model().objects.create_user("metrics-owner")
    api.credentials(HTTP_AUTHORIZATION=f"Token {api_token(owner)}")
    web = Client()
    wait_until(lambda: port_open(port), timeout=10, what="the worker's metrics port")
    size = media_server.files.large.stat().st_size
    worker_before, web_before = _worker(port), _web(web)

    # About two seconds of download: long enough to scrape the job while it runs.
    stored = api.post("/api/v1/media/store", {"url": media_server.url(f"throttled.mp4?rate={size // 2}")},
                      format="json")
    wait_until(lambda: value(_worker(port), "mediastore_worker_active_jobs") == 1, timeout=30, interval=0.1,
               what="the worker to report the job as active")
    during = _worker(port)
    wait_until(lambda: Scene.objects.get(pk=stored.json()["id"]).is_terminal, timeout=90, interval=0.2,
               what="the scene to finish")
    worker_after, web_after = _worker(port), _web(web)

    def moved(name: str, **labels: str) -> float:
        return value(worker_after, name, **labels) - value(worker_before, name, **labels)

    assert stored.status_code == 202
    assert Scene.objects.get(pk=stored.json()["id"]).status == Scene.Status.COMPLETED
    assert value(during, "mediastore_jobs_started_total") == value(worker_before, "mediastore_jobs_started_total") + 1
    assert value(during, "mediastore_jobs_finished_total", outcome="completed", error_code="") == value(
        worker_before, "mediastore_jobs_finished_total", outcome="completed", error_code="")
    assert moved("mediastore_jobs_finished_total", outcome="completed", error_code="") == 1
    assert {stage: moved("mediastore_stage_duration_seconds_count", stage=stage) for stage in STAGES} == dict.fromkeys(
        STAGES, 1)
    assert value(worker_after, "mediastore_stage_duration_seconds_sum", stage="download") >= 1.0
    assert moved("mediastore_ingested_bytes_total") == size
    assert value(worker_after, "mediastore_worker_active_jobs") == 0
    assert value(worker_after, "mediastore_worker_concurrency") == 4
    assert value(web_after, "mediastore_store_requests_total", status="202") == value(
        web_before, "mediastore_store_requests_total", status="202") + 1
    assert value(web_after, "mediastore_store_request_duration_seconds_count") == value(
        web_before, "mediastore_store_request_duration_seconds_count") + 1
    assert value(web_after, "mediastore_queue_depth", queue="celery") == 0
    assert value(web_after, "mediastore_broker_up") == 1
