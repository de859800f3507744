"""The OpenAPI schema reads well to a client generator: named operations, tags, enums, documented headers."""

from __future__ import annotations

import pytest

from downloads.exceptions import ERROR_CODES
from mediastore.schema import OPERATIONS

pytestmark = pytest.mark.django_db


@pytest.fixture
def document(client) -> dict:
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return response.json()


def _operations(document: dict) -> list[tuple[str, str, dict]]:
    return [(path, method, operation) for path, item in document["paths"].items()
            for method, operation in item.items() if isinstance(operation, dict) and "operationId" in operation]


def test_every_operation_has_a_readable_id_and_one_tag(document):
    named = {name for name, _ in OPERATIONS.values()}
    for path, method, operation in _operations(document):
        assert operation["operationId"] in named, f"{method.upper()} {path} is not named in mediastore/schema.py"
        assert len(operation["tags"]) == 1
    assert {"store_media", "get_scene", "list_scenes", "cancel_scene", "create_webhook"} <= {
        operation["operationId"] for _, _, operation in _operations(document)}


def test_error_code_is_an_enum_of_every_code(document):
    schemas = document["components"]["schemas"]
    enum = schemas["ErrorCodeEnum"]["enum"]

    assert set(ERROR_CODES) <= set(enum)
    assert {"not_found", "no_media", "url_not_allowed", "worker_lost", ""} <= set(enum)
    assert "BlankEnum" not in schemas


def test_store_documents_location_retry_after_and_idempotency_key(document):
    store = document["paths"]["/api/v1/media/store"]["post"]

    assert "Location" in store["responses"]["202"]["headers"]
    assert "Retry-After" in store["responses"]["429"]["headers"]
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in store["parameters"])
    assert all(response.get("description") for response in store["responses"].values())


def test_every_operation_that_reads_a_body_documents_415(document):
    with_body = [(path, method, operation) for path, method, operation in _operations(document)
                 if "requestBody" in operation]

    assert with_body
    assert [(path, method) for path, method, operation in with_body if "415" not in operation["responses"]] == []
