"""Status writes from the worker, by the scene's primary key only (never a lookup by any other id).

Every write is a conditional update on ``{pk, status[, updated_at]}`` that must match exactly one scene;
zero means another worker, a retry or a delete moved it first, and the caller stops. ``updated_at`` is
written with every change: it is the heartbeat the stale-job sweeper and a redelivered task read.

On SQL databases the writes go through Django's async ORM; on MongoDB through PyMongo's async client
(``update_one({"_id": pk, ...})``), with collection and field names taken from the model's metadata.
"""

from __future__ import annotations

import datetime as dt
import logging
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from django.conf import settings
from django.db import connections
from django.db.models import F
from django.utils import timezone

from downloads import bridge
from scenes.models import Scene

logger = logging.getLogger(__name__)

Status = Scene.Status
_READ_FIELDS = ("status", "source_url", "title", "attempts", "updated_at")


class _Scenes(Protocol):
    async def read(self, pk: str) -> dict[str, Any] | None: ...
    async def update(self, pk: str, *, where: dict[str, Any], changes: dict[str, Any],
                     increment: dict[str, int] | None = None) -> int: ...


class _OrmScenes:
    async def read(self, pk: str) -> dict[str, Any] | None:
        row: dict[str, Any] | None = await Scene.objects.filter(pk=pk).values(*_READ_FIELDS).afirst()
        return row

    async def update(self, pk: str, *, where: dict[str, Any], changes: dict[str, Any],
                     increment: dict[str, int] | None = None) -> int:
        expressions = {name: F(name) + amount for name, amount in (increment or {}).items()}
        return await Scene.objects.filter(pk=pk, **where).aupdate(**changes, **expressions)


def _column(name: str) -> str:
    return str(Scene._meta.get_field(name).column)  # type: ignore[union-attr]  # concrete fields only


class _MongoScenes:
    async def _collection(self) -> Any:
        return (await mongo_database())[Scene._meta.db_table]

    async def read(self, pk: str) -> dict[str, Any] | None:
        document = await (await self._collection()).find_one(
            {"_id": pk}, {_column(name): 1 for name in _READ_FIELDS}
        )
        if document is None:
            return None
        values = {name: document.get(_column(name)) for name in _READ_FIELDS}
        if isinstance(values["updated_at"], dt.datetime) and values["updated_at"].tzinfo is None:
            values["updated_at"] = values["updated_at"].replace(tzinfo=dt.UTC)  # BSON dates are UTC
        return values

    async def update(self, pk: str, *, where: dict[str, Any], changes: dict[str, Any],
                     increment: dict[str, int] | None = None) -> int:
        operation: dict[str, Any] = {"$set": {_column(k): v for k, v in changes.items()}}
        if increment:
            operation["$inc"] = {_column(k): v for k, v in increment.items()}
        query = {"_id": pk, **{_column(k): v for k, v in where.items()}}
        result = await (await self._collection()).update_one(query, operation)
        return int(result.matched_count)


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


def _scenes() -> _Scenes:
    return _MongoScenes() if settings.DATABASE_IS_MONGODB else _OrmScenes()


@dataclass(frozen=True)
class Claim:
    claimed: bool
    reason: str  # claimed, taken_over, already_completed, already_failed, busy, missing
    source_url: str = ""
    title: str = ""
    attempts: int = 0


async def claim(*, scene_id: str, stale_after: float) -> Claim:
    """queued → processing; or take over a processing scene whose heartbeat is older than ``stale_after``."""
    scenes = _scenes()
    current = await scenes.read(scene_id)
    if current is None:
        return Claim(claimed=False, reason="missing")
    status = current["status"]
    now = timezone.now()
    if status == Status.QUEUED:
        where: dict[str, Any] = {"status": Status.QUEUED}
        reason = "claimed"
    elif status == Status.PROCESSING and current["updated_at"] < now - dt.timedelta(seconds=stale_after):
        # Compare-and-set on the heartbeat we read: of two redelivered tasks, one wins.
        where = {"status": Status.PROCESSING, "updated_at": current["updated_at"]}
        reason = "taken_over"
    else:
        reason = {Status.PROCESSING: "busy", Status.COMPLETED: "already_completed"}.get(status, f"already_{status}")
        return Claim(claimed=False, reason=reason)
    changed = await scenes.update(
        scene_id, where=where,
        changes={"status": Status.PROCESSING, "stage": Scene.Stage.DOWNLOADING, "progress": 0,
                 "started_at": now, "updated_at": now, "error_code": "", "error_message": ""},
        increment={"attempts": 1},
    )
    if changed != 1:
        return Claim(claimed=False, reason="busy")
    return Claim(claimed=True, reason=reason, source_url=current["source_url"], title=current["title"] or "",
                 attempts=int(current["attempts"] or 0) + 1)


async def heartbeat(*, scene_id: str, stage: str | None = None, progress: int | None = None) -> bool:
    changes: dict[str, Any] = {"updated_at": timezone.now()}
    if stage is not None:
        changes["stage"] = stage
    if progress is not None:
        changes["progress"] = progress
    return await _scenes().update(scene_id, where={"status": Status.PROCESSING}, changes=changes) == 1


async def complete(*, scene_id: str, fields: dict[str, Any]) -> bool:
    now = timezone.now()
    changes = {**fields, "status": Status.COMPLETED, "stage": Scene.Stage.NONE, "progress": 100,
               "completed_at": now, "updated_at": now, "error_code": "", "error_message": ""}
    return await _scenes().update(scene_id, where={"status": Status.PROCESSING}, changes=changes) == 1


async def fail(*, scene_id: str, code: str, message: str) -> bool:
    changes = {"status": Status.FAILED, "stage": Scene.Stage.NONE, "error_code": code,
               "error_message": message, "updated_at": timezone.now()}
    return await _scenes().update(scene_id, where={"status": Status.PROCESSING}, changes=changes) == 1


async def requeue_for_retry(*, scene_id: str, code: str, message: str) -> bool:
    """processing → queued after a transient error, keeping the error visible until the next attempt."""
    changes = {"status": Status.QUEUED, "stage": Scene.Stage.NONE, "progress": None, "error_code": code,
               "error_message": message, "updated_at": timezone.now()}
    return await _scenes().update(scene_id, where={"status": Status.PROCESSING}, changes=changes) == 1


async def exists(*, scene_id: str) -> bool:
    return await _scenes().read(scene_id) is not None
