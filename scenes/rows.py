"""How the worker reads a scene row and updates it conditionally, by primary key only, on either backend.

Only ``scenes.lifecycle`` uses this module. On SQL databases the writes go through Django's async ORM; on
MongoDB through PyMongo's async client (``update_one({"_id": pk, ...})``), with collection and field names
taken from the model's metadata, so both backends run one schema. The web side needs none of this: it
uses the sync ORM, which django-mongodb-backend serves as well.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections, transaction
from django.db.models import F

from downloads import bridge
from scenes.models import Scene

if TYPE_CHECKING:
    from scenes.lifecycle import Announcement


READ_FIELDS = ("status", "source_url", "title", "attempts", "updated_at", "cancel_requested_at")


class SceneRows(Protocol):
    async def read(self, pk: str) -> dict[str, Any] | None: ...
    async def update(self, pk: str, *, where: dict[str, Any], changes: dict[str, Any],
                     increment: dict[str, int] | None = None,
                     announce: str | None = None) -> tuple[int, Announcement | None]: ...


Updated = tuple[int, "Announcement | None"]


class _OrmRows:
    async def read(self, pk: str) -> dict[str, Any] | None:
        row: dict[str, Any] | None = await Scene.objects.filter(pk=pk).values(*READ_FIELDS).afirst()
        return row

    async def update(self, pk: str, *, where: dict[str, Any], changes: dict[str, Any],
                     increment: dict[str, int] | None = None, announce: str | None = None) -> Updated:
        expressions = {name: F(name) + amount for name, amount in (increment or {}).items()}
        if announce is None:
            return await Scene.objects.filter(pk=pk, **where).aupdate(**changes, **expressions), None

        from scenes.lifecycle import _record  # here: lifecycle imports this module

        def update_and_record() -> Updated:
            # One transaction: the change, the scene read back, and the webhook deliveries it owes.
            with transaction.atomic():
                changed = Scene.objects.filter(pk=pk, **where).update(**changes, **expressions)
                if changed != 1:
                    return changed, None
                return changed, _record(pk, announce)

        return await sync_to_async(update_and_record)()


def _column(name: str) -> str:
    return str(Scene._meta.get_field(name).column)  # type: ignore[union-attr]  # concrete fields only


def _mongo_condition(name: str, value: Any) -> tuple[str, Any]:
    # The ORM-style lookups the lifecycle uses: ``status__in``, ``__isnull`` and plain equality.
    if name.endswith("__in"):
        return _column(name[: -len("__in")]), {"$in": list(value)}
    if name.endswith("__isnull"):
        return _column(name[: -len("__isnull")]), None if value else {"$ne": None}
    return _column(name), value


class _MongoRows:
    async def _collection(self) -> Any:
        return (await mongo_database())[Scene._meta.db_table]

    async def read(self, pk: str) -> dict[str, Any] | None:
        document = await (await self._collection()).find_one(
            {"_id": pk}, {_column(name): 1 for name in READ_FIELDS}
        )
        if document is None:
            return None
        values = {name: document.get(_column(name)) for name in READ_FIELDS}
        if isinstance(values["updated_at"], dt.datetime) and values["updated_at"].tzinfo is None:
            values["updated_at"] = values["updated_at"].replace(tzinfo=dt.UTC)  # BSON dates are UTC
        return values

    async def update(self, pk: str, *, where: dict[str, Any], changes: dict[str, Any],
                     increment: dict[str, int] | None = None, announce: str | None = None) -> Updated:
        operation: dict[str, Any] = {"$set": {_column(k): v for k, v in changes.items()}}
        if increment:
            operation["$inc"] = {_column(k): v for k, v in increment.items()}
        query = {"_id": pk, **dict(_mongo_condition(k, v) for k, v in where.items())}
        collection = await self._collection()
        if announce is None:
            result = await collection.update_one(query, operation)
            return int(result.matched_count), None
        from pymongo import ReturnDocument

        from scenes import webhooks
        from scenes.lifecycle import snapshot  # here: lifecycle imports this module

        database = await mongo_database()
        # One transaction (replica sets, Atlas): the change, the scene read back, the deliveries it owes. A
        # standalone server has none: the same writes, one after the other.
        async with database.client.start_session() as session, _transaction(session,
                                                                              await _has_transactions(database)):
            document = await collection.find_one_and_update(query, operation, return_document=ReturnDocument.AFTER,
                                                            session=session)
            if document is None:
                return 0, None
            announcement = snapshot(scene_from_document(document), announce)
            deliveries = await webhooks.arecord_mongo(announcement, database=database, session=session)
        for delivery_id in deliveries:
            await sync_to_async(webhooks.send)(delivery_id)
        return 1, announcement


_TRANSACTIONS: dict[int, bool] = {}


async def _has_transactions(database: Any) -> bool:
    """Whether the deployment is a replica set or a sharded cluster (asked once per client)."""
    key = id(database.client)
    if key not in _TRANSACTIONS:
        hello = await database.client.admin.command("hello")
        _TRANSACTIONS[key] = "setName" in hello or hello.get("msg") == "isdbgrid"
    return _TRANSACTIONS[key]


@asynccontextmanager
async def _transaction(session: Any, enabled: bool) -> AsyncIterator[None]:
    if not enabled:
        yield
        return
    async with await session.start_transaction():
        yield


def scene_from_document(document: dict[str, Any]) -> Scene:
    """An unsaved Scene holding a MongoDB document's fields (for the API's representation of it)."""
    values = {}
    for model_field in Scene._meta.concrete_fields:
        value = document.get(str(model_field.column))
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)  # BSON dates are UTC
        values[model_field.attname] = value
    return Scene(**values)


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


def scene_rows() -> SceneRows:
    return _MongoRows() if settings.DATABASE_IS_MONGODB else _OrmRows()
