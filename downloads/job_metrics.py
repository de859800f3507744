"""How the worker counts its ingest runs (the metrics are defined in ``mediastore.metrics``): started, in
progress, ended by outcome and error code; each stage's duration; the bytes of completed media.

Outcomes: what ``pipeline.ingest`` returns for a claimed scene (``completed``, ``failed``, ``cancelled``,
``deleted``, ``moved``), ``retry`` (queued again: a transient error or a hand-back at shutdown), and
``interrupted`` (cancelled for no recorded reason) or ``error`` (an exception nobody expected). The error code
is kept for ``failed`` and ``retry`` only. Runs that claimed nothing are not counted: no job ran.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

from downloads import bridge
from downloads.exceptions import DownloadTimeoutError, RetryLater
from mediastore import metrics

_WITH_ERROR_CODE = {"failed", "retry"}


class Run:
    def __init__(self) -> None:
        self.outcome: str | None = None
        self.error_code = ""

    def ended(self, outcome: str) -> str:
        self.outcome = outcome
        return outcome


_current: contextvars.ContextVar[Run | None] = contextvars.ContextVar("mediastore_job_metrics", default=None)


@contextmanager
def run() -> Iterator[Run]:
    """Around one claimed run; pass its outcome through ``Run.ended``."""
    counted = metrics.worker()
    current = Run()
    token = _current.set(current)
    counted.jobs_started.inc()
    counted.active_jobs.inc()
    outcome = "error"
    try:
        yield current
        outcome = current.outcome or "error"
    except RetryLater as later:
        outcome, current.error_code = "retry", later.error.code
        raise
    except asyncio.CancelledError:
        # The hard limit fails the scene as a timeout on its way out (pipeline._cancelled).
        if bridge.cancel_reason() == bridge.HARD_LIMIT:
            outcome, current.error_code = "failed", DownloadTimeoutError.code
        else:
            outcome = "interrupted"
        raise
    finally:
        _current.reset(token)
        counted.active_jobs.dec()
        code = current.error_code if outcome in _WITH_ERROR_CODE else ""
        counted.jobs_finished.labels(outcome=outcome, error_code=code).inc()


def error(code: str) -> None:
    """The current run is failing with ``code`` (it may still end otherwise: retried, moved)."""
    current = _current.get()
    if current is not None:
        current.error_code = code


def stage_done(stage: str, seconds: float) -> None:
    metrics.worker().stage_seconds.labels(stage=stage).observe(seconds)


def ingested(size_bytes: int) -> None:
    metrics.worker().ingested_bytes.inc(size_bytes)
