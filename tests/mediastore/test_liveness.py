"""A worker that stops taking work while tasks wait is reported; a busy or idle one is not."""

from __future__ import annotations

import json
import time

import pytest
import redis

from mediastore import liveness


def _state(**changes: object) -> dict[str, object]:
    now = time.time()
    return {"hostname": "celery@w1", "pid": 1, "at": now, "started": now - 1000, "last_received": now - 5,
            "active": 1, "concurrency": 4, "queued_since": now - 1000, **changes}


def test_a_worker_with_free_slots_that_takes_nothing_while_tasks_wait_is_stalled(settings):
    settings.MEDIA_WORKER_STALL_AFTER = 60

    verdict = liveness._judge(_state(last_received=time.time() - 300), queued=12, now=time.time())

    assert not verdict.healthy
    assert "stalled: 12 task(s) queued and 3 free slot(s)" in verdict.reason


def test_a_full_worker_is_not_stalled(settings):
    settings.MEDIA_WORKER_STALL_AFTER = 60

    verdict = liveness._judge(_state(last_received=time.time() - 300, active=4), queued=12, now=time.time())

    assert verdict.healthy


def test_an_idle_worker_with_an_empty_queue_is_healthy(settings):
    settings.MEDIA_WORKER_STALL_AFTER = 60

    assert liveness._judge(_state(last_received=None), queued=0, now=time.time()).healthy


def test_a_worker_that_stopped_reporting_is_gone():
    verdict = liveness._judge(_state(at=time.time() - 120), queued=0, now=time.time())

    assert not verdict.healthy
    assert "has not reported" in verdict.reason


def test_reports_go_through_the_broker(broker_url: str, settings):
    settings.MEDIA_WORKER_STALL_AFTER = 60
    reporter = liveness.Reporter(hostname="celery@w2", concurrency=2)
    client = redis.Redis.from_url(broker_url)
    client.lpush("celery", json.dumps({"queued": "task"}))
    reporter.report(active=0)
    stored = json.loads(client.get(liveness.KEY_PREFIX + "celery@w2"))
    assert stored["queued_since"] is not None  # the worker saw the task waiting
    stored["started"], stored["at"] = time.time() - 1000, time.time()
    stored["last_received"], stored["queued_since"] = time.time() - 600, time.time() - 600
    client.set(liveness.KEY_PREFIX + "celery@w2", json.dumps(stored))

    with pytest.raises(RuntimeError, match="celery@w2 stalled"):
        liveness.check_workers()
    reporter.forget()
    assert client.get(liveness.KEY_PREFIX + "celery@w2") is None
    client.close()


def test_a_worker_counts_only_the_queues_it_consumes(broker_url: str):
    # The webhooks worker takes no downloads: a downloads backlog is no sign that it stalled.
    reporter = liveness.Reporter(hostname="webhooks@w4", concurrency=2, queues=("webhooks",))
    client = redis.Redis.from_url(broker_url)
    client.lpush("celery", json.dumps({"queued": "download"}))

    reporter.report(active=0)
    assert json.loads(client.get(liveness.KEY_PREFIX + "webhooks@w4"))["queued_since"] is None
    client.lpush("webhooks", json.dumps({"queued": "delivery"}))
    reporter.report(active=0)
    assert json.loads(client.get(liveness.KEY_PREFIX + "webhooks@w4"))["queued_since"] is not None
    reporter.forget()
    client.close()


def test_a_worker_idle_for_long_whose_queue_just_filled_is_not_stalled(settings):
    # What the fault suite saw: an hour with nothing to do, then the sweeper re-sent 50 tasks a moment
    # before the check. The worker's last report was written before they arrived.
    settings.MEDIA_WORKER_STALL_AFTER = 20
    now = time.time()

    verdict = liveness._judge(_state(last_received=now - 3600, at=now - 5, queued_since=None), queued=50, now=now)

    assert verdict.healthy


def test_a_worker_that_saw_the_queue_waiting_since_its_last_task_is_stalled(settings):
    settings.MEDIA_WORKER_STALL_AFTER = 20
    now = time.time()

    verdict = liveness._judge(_state(last_received=now - 3600, queued_since=now - 30), queued=50, now=now)

    assert not verdict.healthy


def test_a_worker_whose_slots_were_all_busy_until_just_now_is_not_stalled(settings):
    settings.MEDIA_WORKER_STALL_AFTER = 60
    now = time.time()

    verdict = liveness._judge(_state(last_received=now - 600, last_full=now - 5, active=3), queued=12, now=now)

    assert verdict.healthy


def test_the_last_report_of_a_dead_worker_is_gone_not_stalled(settings):
    settings.MEDIA_WORKER_STALL_AFTER = 20
    now = time.time()
    # It reported 15 s ago, 5 s after its last task; it has been dead since.
    last_report = _state(at=now - 15, last_received=now - 20, started=now - 100)

    assert liveness._judge(last_report, queued=12, now=now).healthy
    assert "has not reported" in liveness._judge(last_report, queued=12, now=now + 20).reason


def test_a_broker_outage_restarts_the_count_of_how_long_tasks_have_waited():
    from unittest import mock

    reporter = liveness.Reporter(hostname="celery@w3", concurrency=2)
    reporter._client = mock.Mock(llen=mock.Mock(return_value=5))
    reporter.report(active=0)
    first_seen = reporter.queued_since
    reporter._client.llen.side_effect = redis.ConnectionError("refused")

    with pytest.raises(redis.ConnectionError):
        reporter.report(active=0)

    assert first_seen is not None
    assert reporter.queued_since is None
