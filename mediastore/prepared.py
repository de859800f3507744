"""A count run on every store request, with the statement the ORM makes for it kept, not made again each time.

Building and compiling a queryset is most of a small count's CPU: 206 µs for the owner's active count against
20 µs for running its statement (SQLite, a warm connection), and about 400 µs against 100 µs inside a request.
So ``PreparedCount`` lets the ORM run the count once per database, with a placeholder for the one value that
changes, captures the statement it executed (``connection.execute_wrapper``, Django's own hook) and from then on
runs that statement with the placeholder's parameter replaced. The SQL stays the ORM's, whatever the database;
nothing here writes SQL. MongoDB has no SQL cursor: there it is the ORM's count, as before.

The store request's two writes are kept the same way, for the same reason: under ASGI every request runs in a
new thread with a new database connection, and (counted by callgrind, ``bench_api_instructions``'s driver) the
ORM's ``create`` of a scene cost 1.6 M instructions and Celery's ``apply_async`` 1.6 M, of 18.8 M for the whole
store request against 13.5 M for ``GET /me``.

- ``PreparedInsert``: the INSERT the ORM compiles for a model, kept per database after the ORM's own first
  ``save``; later rows go with the parameters the fields themselves make (``pre_save``, ``get_db_prep_save``),
  as the ORM's compiler makes them.
- ``KeptMessage``: a task's ``apply_async`` for the one plain call the services make, with the message Celery
  builds kept per process after Celery's own first publish; later messages are that one with the task id and
  the argument put in. Any other call, or any setting under which Celery's message would differ (eager mode,
  sent events, publish signals, a parent task), goes Celery's whole way.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, NamedTuple

from celery import Task, signals
from celery.utils.saferepr import saferepr
from django.db import connections, router
from django.db.models import Model, QuerySet
from django.db.models.signals import post_save, pre_save

logger = logging.getLogger(__name__)


class _Statement(NamedTuple):
    sql: str
    params: tuple[Any, ...]
    key_at: int  # which of the parameters is the key's


class PreparedCount:
    """``queryset.filter(<field>=key).count()``, the ORM's statement made once per database.

    ``placeholder`` must be a value of the field's type that no row has and that none of the queryset's own
    parameters equals: it is how the key is found among them. The key goes to the database as it is, not
    through the field's conversions: give it as the column holds it (an integer id), never None."""

    def __init__(self, queryset: QuerySet[Any], *, field: str, placeholder: Any) -> None:
        self._queryset = queryset
        self._field = field
        self._placeholder = placeholder
        self._statements: dict[str, _Statement] = {}
        self._lock = threading.Lock()

    def __call__(self, key: Any) -> int:
        alias = self._queryset.db
        connection = connections[alias]
        if connection.vendor == "mongodb":
            return self._queryset.filter(**{self._field: key}).count()
        statement = self._statements.get(alias) or self._prepare(alias)
        params = list(statement.params)
        params[statement.key_at] = key
        with connection.cursor() as cursor:
            cursor.execute(statement.sql, params)
            row = cursor.fetchone()
        return int(row[0])

    def _prepare(self, alias: str) -> _Statement:
        with self._lock:
            if alias in self._statements:
                return self._statements[alias]
            executed: list[tuple[str, tuple[Any, ...]]] = []

            def capture(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
                executed.append((sql, tuple(params or ())))
                return execute(sql, params, many, context)

            with connections[alias].execute_wrapper(capture):
                self._queryset.filter(**{self._field: self._placeholder}).using(alias).count()
            if len(executed) != 1:
                raise TypeError(f"the count ran {len(executed)} statements, not one: {executed!r}")
            sql, params = executed[0]
            at = [i for i, value in enumerate(params) if value == self._placeholder]
            if len(at) != 1:
                raise TypeError(f"the placeholder {self._placeholder!r} is {len(at)} of the count's parameters "
                                f"{params!r}, not one")
            statement = self._statements[alias] = _Statement(sql, params, at[0])
            return statement


class PreparedInsert:
    """``model.objects.create(**values)``, with the INSERT statement the ORM compiles kept per database.

    The first row of each database is the ORM's own ``save(force_insert=True)``; the statement it executed is
    kept (``connection.execute_wrapper``). Every later row runs that statement with the parameters the model's
    fields make for it, as ``SQLInsertCompiler`` makes them. Not for a model with ``pre_save``/``post_save``
    receivers (those rows go the ORM's way) or one whose rows take database defaults or expressions."""

    def __init__(self, model: type[Model]) -> None:
        self._model = model
        self._fields = model._meta.local_concrete_fields
        self._statements: dict[str, str] = {}

    def __call__(self, **values: Any) -> Any:
        instance = self._model(**values)
        alias = router.db_for_write(self._model, instance=instance)
        connection = connections[alias]
        sql = self._statements.get(alias)
        if (sql is None or connection.vendor == "mongodb" or pre_save.has_listeners(self._model)
                or post_save.has_listeners(self._model)):
            self._save(instance, alias)
            return instance
        params = [field.get_db_prep_save(field.pre_save(instance, True), connection=connection)
                  for field in self._fields]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
        instance._state.adding = False
        instance._state.db = alias
        return instance

    def _save(self, instance: Model, alias: str) -> None:
        connection = connections[alias]
        if connection.vendor == "mongodb" or alias in self._statements:
            instance.save(force_insert=True, using=alias)
            return
        executed: list[str] = []

        def capture(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            executed.append(sql)
            return execute(sql, params, many, context)

        with connection.execute_wrapper(capture):
            instance.save(force_insert=True, using=alias)
        if len(executed) == 1 and executed[0].lstrip().upper().startswith("INSERT"):
            self._statements.setdefault(alias, executed[0])
        else:  # never kept: every row goes the ORM's way
            logger.warning("%s: the ORM's insert ran %r, not one INSERT; rows are not inserted with a kept "
                           "statement", self._model.__name__, executed)


class _Kept(NamedTuple):
    pid: int  # a forked process sends with its own origin header, so it keeps a message of its own
    publish: dict[str, Any]  # ``Producer.publish``'s keyword arguments as Celery gave them, less the per-call ones
    headers: dict[str, Any]
    embed: dict[str, Any]


class _Recorder:
    """A producer that records what Celery publishes through it, then publishes it."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self.published: list[tuple[Any, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    def publish(self, body: Any, **kwargs: Any) -> Any:
        self.published.append((body, kwargs))
        return self._producer.publish(body, **kwargs)


class KeptMessage(Task):  # type: ignore[type-arg]
    """A task base whose plain ``apply_async(args=…, task_id=…, retry=False)`` sends Celery's own message
    without Celery building it again: 0.46 against 0.29 ms of CPU on a new thread, as every ASGI request's is.

    Celery's first such publish in a process is recorded; later ones copy it and put in what changes from
    call to call (the task id, as ``id``, ``root_id`` and ``correlation_id``; the argument and its repr; the
    thread's ``reply_to``). ``tests/mediastore/test_prepared.py`` compares the two messages whole, so a Celery
    that adds a field of its own fails there. The queue is not declared again on each publish: the message goes
    to Celery's default exchange ('', straight to the queue its routing key names), which reads no binding.
    """

    abstract = True
    _kept: _Kept | None = None
    _unkeepable = False  # Celery's first message was not the expected one

    def apply_async(self, args: Any = None, kwargs: Any = None, task_id: str | None = None, producer: Any = None,
                    link: Any = None, link_error: Any = None, shadow: Any = None, **options: Any) -> Any:
        if (options != {"retry": False} or kwargs or task_id is None or not isinstance(args, list)
                or producer is not None or link is not None or link_error is not None or shadow is not None
                or not self._message_can_be_kept()):
            return super().apply_async(args, kwargs, task_id, producer, link, link_error, shadow, **options)
        kept = self._kept
        if kept is None or kept.pid != os.getpid():
            return self._send_and_keep(args, task_id)
        if self.typing:
            self.__header__(*args)  # type: ignore[attr-defined]  # the argument check Celery makes before it sends
        app = self.app
        headers = {**kept.headers, "id": task_id, "root_id": task_id,
                   "argsrepr": saferepr(args, app.amqp.argsrepr_maxsize)}
        with app.producer_or_acquire() as pooled:
            pooled.publish((args, {}, kept.embed), headers=headers, correlation_id=task_id,
                           reply_to=app.thread_oid, **kept.publish)
        return self.AsyncResult(task_id)

    def _message_can_be_kept(self) -> bool:
        app = self.app
        return not (self._unkeepable or app.conf.task_always_eager or app.conf.task_send_sent_event
                    or app.current_worker_task or signals.before_task_publish.receivers
                    or signals.after_task_publish.receivers)

    def _send_and_keep(self, args: list[Any], task_id: str) -> Any:
        with self.app.producer_or_acquire() as pooled:
            recorder = _Recorder(pooled)
            result = super().apply_async(args, task_id=task_id, producer=recorder, retry=False)  # type: ignore[arg-type]
        kept = _keepable(recorder.published, args, task_id)
        if kept is None:
            logger.warning("%s: Celery's message is not the expected one; each publish goes Celery's whole way",
                           self.name)
            self._unkeepable = True
        else:
            self._kept = kept
        return result


def _keepable(published: list[tuple[Any, dict[str, Any]]], args: list[Any], task_id: str) -> _Kept | None:
    """The message to keep, if it is one message whose per-call fields are the ones ``apply_async`` fills in."""
    if len(published) != 1:
        return None
    body, kwargs = published[0]
    headers = kwargs.get("headers") or {}
    if not (isinstance(body, tuple) and len(body) == 3 and list(body[0]) == args and body[1] == {}
            and headers.get("id") == task_id and headers.get("root_id") == task_id
            and headers.get("parent_id") is None and kwargs.get("correlation_id") == task_id
            and kwargs.get("exchange") == "" and kwargs.get("retry") is False):
        return None
    rest = {key: value for key, value in kwargs.items()
            if key not in ("headers", "correlation_id", "reply_to", "declare")}
    return _Kept(pid=os.getpid(), publish=rest, headers=dict(headers), embed=dict(body[2]))
