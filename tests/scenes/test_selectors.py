"""Reads that are more than ``objects.get``: what they answer, and what they cost where it matters."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext

from scenes import selectors, services
from tests.harness import scene_states

pytestmark = pytest.mark.django_db

URL = "https://example.com/v.mp4"


@pytest.fixture
def owner():
    return get_user_model().objects.create_user("owner")


def test_active_count_counts_the_owners_queued_and_processing_scenes_only(owner):
    services.scene_create(owner=owner, source_url=URL)
    processing = services.scene_create(owner=owner, source_url=URL)
    scene_states.start(scene_id=processing.pk)
    failed = services.scene_create(owner=owner, source_url=URL)
    scene_states.fail(scene_id=failed.pk, error_code="timeout", error_message="x")
    services.scene_create(owner=get_user_model().objects.create_user("other"), source_url=URL)

    assert selectors.active_count(owner=owner) == 2


@pytest.mark.skipif(connection.vendor != "sqlite", reason="reads SQLite's query plan")
def test_active_count_reads_an_index_of_active_scenes_not_the_owners_history(owner):
    # Runs on every store request: it must not grow with the scenes the owner has finished.
    selectors.active_count(owner=owner)  # a process's first count also makes its statement (PreparedCount)
    with CaptureQueriesContext(connection) as queries:
        selectors.active_count(owner=owner)
    (query,) = queries.captured_queries

    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {query['sql']}")
        plan = " ".join(str(row[-1]) for row in cursor.fetchall())

    assert "COVERING INDEX scene_owner_status_idx" in plan
