"""The MongoDB-only code: unit tests with mocks here, live tests where DATABASE_URL is MongoDB."""

from __future__ import annotations

from unittest import mock

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import OperationalError, connection
from django.db.migrations.loader import MigrationLoader
from pymongo.errors import OperationFailure, ServerSelectionTimeoutError

from mediastore.mongodb import unreachable_database_tolerated
from scenes import services
from scenes.models import Scene
from tests.harness import scene_states


def test_unreachable_server_becomes_operational_error():
    loader = mock.Mock(spec=MigrationLoader)
    refused = ServerSelectionTimeoutError("127.0.0.1:1: connection refused")
    with (
        mock.patch.object(MigrationLoader, "check_consistent_history", side_effect=refused),
        unreachable_database_tolerated(),
        pytest.raises(OperationalError, match="not reachable") as error,
    ):
        MigrationLoader.check_consistent_history(loader, mock.sentinel.connection)

    assert isinstance(error.value.__cause__, ServerSelectionTimeoutError)


def test_other_mongodb_errors_are_not_hidden():
    loader = mock.Mock(spec=MigrationLoader)
    with (
        mock.patch.object(MigrationLoader, "check_consistent_history", side_effect=OperationFailure("auth failed")),
        unreachable_database_tolerated(),
        pytest.raises(OperationFailure),
    ):
        MigrationLoader.check_consistent_history(loader, mock.sentinel.connection)


def test_check_is_restored_afterwards():
    original = MigrationLoader.check_consistent_history

    with unreachable_database_tolerated():
        assert MigrationLoader.check_consistent_history is not original

    assert MigrationLoader.check_consistent_history is original


@pytest.mark.mongodb
@pytest.mark.django_db
def test_scene_primary_key_is_the_document_id():
    owner = get_user_model().objects.create_user("mongo-owner")

    scene = services.scene_create(owner=owner, source_url="https://example.com/v.mp4")

    collection = connection.database[Scene._meta.db_table]
    document = collection.find_one({"_id": scene.pk})
    assert settings.DATABASE_IS_MONGODB
    assert document is not None
    assert document["source_url"] == "https://example.com/v.mp4"


@pytest.mark.mongodb
@pytest.mark.django_db
def test_conditional_transition_on_mongodb():
    owner = get_user_model().objects.create_user("mongo-owner-2")
    scene = services.scene_create(owner=owner, source_url="https://example.com/v.mp4")

    scene_states.start(scene_id=scene.pk)

    scene.refresh_from_db()
    assert scene.status == Scene.Status.PROCESSING
    assert scene.attempts == 1
