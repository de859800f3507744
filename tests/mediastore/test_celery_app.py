"""Celery configuration that the worker relies on."""

from __future__ import annotations

from types import SimpleNamespace

from django.conf import settings

from mediastore import celery_app
from mediastore.celery import _size_broker_pool, broker_pool_size


def test_broker_pool_follows_command_line_concurrency():
    conf = SimpleNamespace(worker_concurrency=100, broker_transport_options={"max_connections": 120, "x": 1})

    _size_broker_pool(conf=conf, options={"concurrency": 500})

    assert conf.broker_transport_options == {"max_connections": broker_pool_size(500), "x": 1}
    assert broker_pool_size(500) > 500


def test_broker_pool_is_never_shrunk():
    conf = SimpleNamespace(worker_concurrency=4, broker_transport_options={"max_connections": 120})

    _size_broker_pool(conf=conf, options={"concurrency": 4})

    assert conf.broker_transport_options["max_connections"] == 120


def test_time_limits_end_a_task_before_the_broker_hands_it_to_another_worker():
    options = celery_app.conf.broker_transport_options

    assert celery_app.conf.task_soft_time_limit < celery_app.conf.task_time_limit < options["visibility_timeout"]


def test_tasks_are_acknowledged_late_one_at_a_time_in_json():
    conf = celery_app.conf

    assert (conf.task_acks_late, conf.worker_prefetch_multiplier) == (True, 1)
    assert conf.accept_content == ["json"]
    assert conf.broker_url == settings.CELERY_BROKER_URL or conf.broker_url.startswith("redis://127.0.0.1:")


def test_one_result_backend_serves_every_thread_of_a_process():
    # Under ASGI each request's sync part runs in a new thread: a backend per thread was built per publish.
    import threading

    seen = []
    thread = threading.Thread(target=lambda: seen.append(celery_app.backend))
    thread.start()
    thread.join()

    assert seen == [celery_app.backend]


def test_broker_poll_outlasts_the_gevent_loop_timeout():
    # The gevent worker polls with a 2 s timeout; only a BRPOP that waits longer lets a poll come back
    # empty, which is when kombu restores a dead worker's unacked messages.
    assert celery_app.conf.broker_transport_options["polling_interval"] > 2


def test_broker_retry_sleep_yields_to_other_greenlets_in_a_gevent_worker():
    # `celery -P gevent` imports kombu.utils.functional while patch_all() runs, before `time` is patched: its
    # retry loop (every broker reconnect) kept the real time.sleep and froze the worker while Redis was down.
    import subprocess
    import sys

    script = (
        "import sys; sys.argv = ['celery', '-A', 'mediastore', 'worker', '-P', 'gevent']\n"
        "from celery import maybe_patch_concurrency; maybe_patch_concurrency()\n"
        "import gevent, mediastore\n"
        "from kombu.utils import functional\n"
        "ticks = []\n"
        "def tick():\n"
        "    while True: ticks.append(1); gevent.sleep(0.05)\n"
        "gevent.spawn(tick); gevent.sleep(0)\n"
        "functional.sleep(0.5)\n"
        "assert len(ticks) >= 5, ticks\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=settings.BASE_DIR)
    assert done.returncode == 0, done.stderr[-2000:]


def test_publishing_reuses_one_redis_client_per_channel_and_pool(broker_url):
    # kombu built a redis-py client for every message published: a quarter of a store request's publish.
    from unittest import mock

    import redis
    from kombu import Producer
    from kombu.transport import redis as kombu_redis

    def sync_clients(create_client: mock.Mock) -> int:  # the BRPOP side has an asynchronous client of its own
        return sum(not call.kwargs.get("asynchronous") for call in create_client.call_args_list)

    made = mock.patch.object(kombu_redis.Channel, "_create_client", autospec=True,
                             side_effect=kombu_redis.Channel._create_client)
    with made as create_client, celery_app.connection_for_write() as connection:
        channel = connection.channel()
        producer = Producer(channel, routing_key="probe")
        for n in range(3):
            producer.publish({"n": n}, routing_key="probe")
        per_pool = sync_clients(create_client)
        channel._disconnect_pools()  # as after a fork or a reconnect: a new pool needs a client of its own
        producer.publish({"n": 3}, routing_key="probe")
        after_new_pool = sync_clients(create_client)
        channel.close()

    assert (per_pool, after_new_pool) == (1, 2)
    assert redis.Redis.from_url(broker_url).llen("probe") == 4


def test_celery_reads_djangos_settings_once_not_at_every_lookup():
    # Publishing a task looks up about seven settings, each under up to four names in each source; through
    # Django's lazy settings object every miss cost two exceptions (a sixth of a store request).
    from unittest import mock

    from django.conf import LazySettings

    with mock.patch.object(LazySettings, "__getattr__", autospec=True,
                           side_effect=LazySettings.__getattr__) as read:
        eager, queue, acks_late = (celery_app.conf.task_always_eager, celery_app.conf.task_default_queue,
                                   celery_app.conf.task_acks_late)

    assert (eager, queue, acks_late) == (False, "celery", settings.CELERY_TASK_ACKS_LATE)
    assert read.call_count == 0


def test_a_worker_start_warns_of_no_deprecated_setting():
    # Under the CELERY namespace, the names Celery 3 also had (CELERY_ACCEPT_CONTENT, …) were taken for its old
    # ones: every worker's start logged five deprecation warnings for settings written the new way.
    assert celery_app.conf.task_serializer == settings.CELERY_TASK_SERIALIZER  # configured by now

    assert celery_app.conf.deprecated_settings == set()
    assert celery_app.conf.maybe_warn_deprecated_settings() is False
