"""check_pipeline: passes on a healthy stack and names what is wrong otherwise."""

from __future__ import annotations

import time
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from scenes import check_sample, services
from scenes.models import Scene
from tests.harness.services import WebServer, r2_env

# The web's address in these tests: loopback, but not the test "internet" (ALLOWED_INTERNET), so the worker's
# ordinary policy refuses it, as it refuses the web's internal address in compose.
WEB_HOST = "127.0.0.2"


@pytest.fixture
def bucket(s3_bucket, s3_endpoint: str, settings):
    _, name = s3_bucket
    # The web side (this process) and the worker use the same object store, as in production.
    for variable, value in r2_env(endpoint=s3_endpoint, bucket=name).items():
        setattr(settings, variable, value)
    from scenes.links import store_client

    store_client.cache_clear()
    yield s3_bucket
    store_client.cache_clear()


def _worker_env(s3_endpoint: str, bucket_name: str) -> dict[str, str]:
    return {**r2_env(endpoint=s3_endpoint, bucket=bucket_name), "MEDIA_DOWNLOAD_TIMEOUT": "60"}


def _check(*args: str) -> tuple[str, CommandError | None]:
    out = StringIO()
    try:
        call_command("check_pipeline", *args, stdout=out)
    except CommandError as error:
        return out.getvalue(), error
    return out.getvalue(), None


def test_e2e_check_passes_on_the_test_stack_and_cleans_up(start_worker, bucket, s3_endpoint: str):
    client, name = bucket
    start_worker(concurrency=4, env=_worker_env(s3_endpoint, name))

    output, error = _check("--e2e")

    assert error is None, output
    for check in ("database [0.1]", "broker [0.1]", "object store [0.1]", "worker [0.1]", "configuration [0.1.1]",
                 "version celery [0.1.2]", "sample [0.2]", "ingest [0.3]", "stored object [0.4]",
                 "worker temp dir [0.5]", "delete [0.6]"):
        assert f"PASS {check}:" in output
    assert "FAIL" not in output
    assert "check_pipeline:" in output
    assert not Scene.objects.exists()
    assert client.list_objects_v2(Bucket=name).get("KeyCount", 0) == 0


def test_check_fails_on_services_when_no_worker_answers(broker_url: str, bucket, transactional_db):
    output, error = _check()

    assert error is not None
    assert "FAIL worker [0.1]: no worker answered" in output
    assert "PASS database [0.1]" in output


def test_check_fails_on_configuration_when_the_worker_uses_another_bucket(start_worker, bucket, s3_endpoint: str):
    start_worker(concurrency=2, env=_worker_env(s3_endpoint, "some-other-bucket"))

    output, error = _check()

    assert error is not None
    assert "FAIL configuration [0.1.1]: web and worker differ in R2_BUCKET" in output


@pytest.fixture
def web(start_web, settings, tmp_path) -> WebServer:
    """The web serving samples on 127.0.0.2, sharing this process's DATA_DIR and secret key (as compose shares
    its /data volume); this process is told to use it as the sample origin."""
    settings.DATA_DIR = tmp_path / "worker-data"  # start_web's and start_worker's
    server = start_web(host=WEB_HOST, env={"DJANGO_SECRET_KEY": settings.SECRET_KEY, "DJANGO_ALLOWED_HOSTS": WEB_HOST})
    settings.PIPELINE_CHECK_SAMPLE_ORIGIN = server.url
    return server


def _start_worker_for(start_worker, web: WebServer, s3_endpoint: str, bucket_name: str) -> None:
    # MEDIA_ALLOWED_NETWORKS stays the test "internet" (127.0.0.1/32): the web's address is outside it.
    start_worker(concurrency=2, env={**_worker_env(s3_endpoint, bucket_name), "PIPELINE_CHECK_SAMPLE_ORIGIN": web.url})


def test_e2e_check_fetches_the_sample_from_the_web_under_the_normal_policy(start_worker, web: WebServer, bucket,
                                                                           s3_endpoint: str):
    _, name = bucket
    _start_worker_for(start_worker, web, s3_endpoint, name)

    output, error = _check("--e2e")

    assert error is None, output
    assert f"served at {web.url}/check/sample/" in output
    for check in ("configuration [0.1.1]", "sample [0.2]", "ingest [0.3]", "stored object [0.4]", "delete [0.6]"):
        assert f"PASS {check}:" in output
    assert "FAIL" not in output
    assert '"GET /check/sample/' in web.log()  # what the worker downloaded came from the web
    assert not list(check_sample.sample_folder().iterdir())
    assert not Scene.objects.exists()


def test_anyone_elses_scene_cannot_fetch_a_sample_from_the_web(start_worker, web: WebServer, bucket,
                                                              s3_endpoint: str):
    _, name = bucket
    _start_worker_for(start_worker, web, s3_endpoint, name)
    sample = check_sample.new_sample_path()
    sample.write_bytes(b"never fetched")
    alice = get_user_model().objects.create_user("alice")

    scene = services.scene_store(owner=alice, source_url=check_sample.sample_url(origin=web.url, path=sample))

    deadline = time.monotonic() + 60
    while not Scene.objects.get(pk=scene.pk).is_terminal and time.monotonic() < deadline:
        time.sleep(0.2)
    scene.refresh_from_db()
    assert (scene.status, scene.error_code) == (Scene.Status.FAILED, "url_not_allowed")
    assert "/check/sample/" not in web.log()
