"""Status writes from the worker, by primary key only.

On MongoDB the worker talks to the database through PyMongo's async client (one per worker process);
elsewhere through Django's async ORM.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

from django.conf import settings
from django.db import connections

from downloads import bridge


def _new_mongo_client() -> AbstractAsyncContextManager[Any]:
    from pymongo import AsyncMongoClient

    params = connections["default"].get_connection_params()  # the backend's own: URL and timeouts
    return AsyncMongoClient(**params)


async def mongo_database() -> Any:
    """The worker's one async MongoDB client's database; only when ``DATABASE_URL`` is MongoDB."""
    if not settings.DATABASE_IS_MONGODB:
        raise RuntimeError("mongo_database() needs DATABASE_URL to point at MongoDB")
    client = await bridge.shared("mongodb", _new_mongo_client)
    # The connection's name, not settings.DATABASES: under tests it is the test database.
    return client[connections["default"].settings_dict["NAME"]]
