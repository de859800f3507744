"""The published OpenAPI schema, its docs page, and the API checked against it by schemathesis."""

from __future__ import annotations

from unittest import mock

import pytest
import schemathesis
from django.contrib.auth import get_user_model
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from mediastore.wsgi import application
from tests.harness.tokens import api_token

schema = schemathesis.openapi.from_wsgi("/api/schema/", application)


def test_schema_is_published_as_openapi_3(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    paths = {path.rstrip("/") for path in document["paths"]}  # the trailing slash is optional
    assert {"/api/v1/media/store", "/api/v1/scenes/{id}", "/api/v1/scenes/{id}/retry"} <= paths


def test_docs_page_is_served_without_a_cdn(client):
    response = client.get("/api/docs/")

    assert response.status_code == 200
    page = response.content.decode()
    assert "swagger-ui" in page
    assert "cdn.jsdelivr" not in page
    assert "unpkg.com" not in page


@pytest.fixture
def token(transactional_db, broker_url: str) -> str:
    # Transactional: the WSGI handler closes connections after each request, as in production; and
    # stored scenes are really enqueued (on the test broker).
    user = get_user_model().objects.create_user("schemathesis")
    return api_token(user)


@pytest.fixture(autouse=True)
def _public_dns():
    # Generated URLs name random hosts; this machine has no DNS. They resolve to a public address.
    with mock.patch("downloads.egress._resolve", return_value=["93.184.216.34"]):
        yield


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case, token: str):
    # The bar: no 5xx, and every response (status, content type, body, headers) as documented.
    case.call_and_validate(headers={"Authorization": f"Token {token}"}, checks=[
        not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
        response_headers_conformance,
    ])
