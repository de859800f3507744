"""How an ingest run is counted: started, active while it runs, finished by outcome and error code."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from downloads import bridge, job_metrics
from downloads.exceptions import NetworkError, RetryLater


def _finished(outcome: str, error_code: str = "") -> float:
    return REGISTRY.get_sample_value("mediastore_jobs_finished_total",
                                     {"outcome": outcome, "error_code": error_code}) or 0.0


def _value(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_a_completed_run_is_counted_as_started_and_completed():
    started, completed = _value("mediastore_jobs_started_total"), _finished("completed")

    with job_metrics.run() as run:
        run.ended("completed")

    assert _value("mediastore_jobs_started_total") == started + 1
    assert _finished("completed") == completed + 1


def test_a_run_is_active_until_it_ends():
    before = _value("mediastore_worker_active_jobs")

    with job_metrics.run() as run:
        during = _value("mediastore_worker_active_jobs")
        run.ended("completed")

    assert during == before + 1
    assert _value("mediastore_worker_active_jobs") == before


def test_a_failed_run_carries_its_error_code():
    before = _finished("failed", "too_large")

    with job_metrics.run() as run:
        job_metrics.error("too_large")
        run.ended("failed")

    assert _finished("failed", "too_large") == before + 1


def test_a_retried_run_carries_the_error_it_is_retried_for():
    before = _finished("retry", "network_error")

    with pytest.raises(RetryLater), job_metrics.run():
        raise RetryLater(NetworkError(), countdown=1)

    assert _finished("retry", "network_error") == before + 1


def test_a_run_that_ends_without_failing_drops_the_error_code():
    # A failure whose write found the scene taken over ends as "moved": no failure of this run to count.
    before = _finished("moved")

    with job_metrics.run() as run:
        job_metrics.error("network_error")
        run.ended("moved")

    assert _finished("moved") == before + 1
    assert _finished("moved", "network_error") == 0


def test_a_run_stopped_by_the_hard_limit_counts_as_failed_timeout():
    before = _finished("failed", "timeout")
    state = bridge._RunState()
    state.reason = bridge.HARD_LIMIT
    token = bridge._run_state.set(state)
    try:
        with pytest.raises(asyncio.CancelledError), job_metrics.run():
            raise asyncio.CancelledError
    finally:
        bridge._run_state.reset(token)

    assert _finished("failed", "timeout") == before + 1


def test_a_run_cancelled_for_no_recorded_reason_counts_as_interrupted():
    before = _finished("interrupted")

    with pytest.raises(asyncio.CancelledError), job_metrics.run():
        raise asyncio.CancelledError

    assert _finished("interrupted") == before + 1


def test_a_run_that_raises_unexpectedly_counts_as_error():
    before = _finished("error")

    with pytest.raises(RuntimeError), job_metrics.run():
        raise RuntimeError("a bug")

    assert _finished("error") == before + 1
