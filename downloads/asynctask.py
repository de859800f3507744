"""``AsyncTask``: a Celery task base whose body is ``async def``.

    @celery_app.task(base=AsyncTask)
    async def download_media_task(mongo_db_id: str) -> None: ...

In the gevent worker, and for any synchronous caller (eager mode, a management command), calling the task
runs its coroutine to completion through the bridge and returns the result. Called from async code (a
test with pytest-asyncio), it returns the coroutine, to be awaited like any other.

The body runs on the bridge's loop thread, where Celery's request context (``self.request``) is not
available; what a body needs from it is passed in by the task's signature instead.

Time limits are the worker's own. Celery 5.7 copies the *sender's* configured limits into every message,
so the web's ``CELERY_TASK_*`` would decide what the worker enforces; ``WorkerLimitsRequest`` ignores the
message's limits and uses the task's (a decorator's, else the worker's configuration).
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from celery import Task
from celery.worker.request import Request

from downloads import bridge
from downloads.exceptions import RetryLater


class WorkerLimitsRequest(Request):
    """A request whose time limits are never the message's: ``execute_using_pool`` then falls back to the
    task's own, which the worker bound from its configuration."""

    @property
    def time_limits(self) -> tuple[float | None, float | None]:
        return (None, None)

    @time_limits.setter
    def time_limits(self, _: Any) -> None:
        pass


class AsyncTask(Task):  # type: ignore[type-arg]
    abstract = True
    Request = "downloads.asynctask:WorkerLimitsRequest"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        soft_limit = self._soft_time_limit()  # read before Task.__call__ pushes a request of its own
        body = super().__call__(*args, **kwargs)
        if not inspect.iscoroutine(body):
            return body
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            return body  # an async caller awaits it
        try:
            return bridge.run(body, soft_limit=soft_limit)
        except RetryLater as later:
            # Retrying needs Celery's request context, which only this (sync) side has.
            if later.countdown is not None:
                raise self.retry(exc=later.error, countdown=later.countdown, max_retries=None) from later
            backoff = min(300.0, 2.0 ** (self.request.retries + 1))
            raise self.retry(exc=later.error, countdown=backoff) from later

    def _soft_time_limit(self) -> float | None:
        # The task's own (a decorator's), else this process's configuration; never the message's.
        soft = self.soft_time_limit or self.app.conf.task_soft_time_limit
        return float(soft) if soft else None
