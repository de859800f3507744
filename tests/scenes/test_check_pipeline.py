"""check_pipeline: passes on a healthy stack and names what is wrong otherwise."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from scenes.models import Scene
from tests.harness.services import r2_env


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
