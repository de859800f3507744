"""Fixes to Celery 5.7 / kombu 5.7 on Redis, for the ``-P gevent`` worker and for publishing; applied by
``mediastore.celery``.

A Redis restart (or any broker error while a task acknowledges) left the worker running but deaf: queue not
empty, pool slots free, no BRPOP pending, ``inspect ping`` unanswered.

1. kombu's Redis ``QoS.ack``/``reject`` (kombu/transport/redis.py, ``QoS.ack`` and ``QoS.reject``) talk to
   Redis *before* releasing the prefetch slot (``virtual.QoS.ack``). When Redis cannot be reached the error
   skips the release; Celery logs "Couldn't ack" and carries on, but the channel still counts the message as
   in flight. Once ``prefetch_count`` (= ``-c``) slots are lost, ``QoS.can_consume()`` is False for good:
   the poller never sends BRPOP again, so it never touches the dead socket, never raises, and the consumer is
   never restarted, which is the only thing that would have reset the channel. Fewer lost slots leave the
   worker running at reduced concurrency. Here the slot is released whatever Redis answers: the message is
   still in Redis's unacked hash (if Redis kept it) and comes back after the visibility timeout, which
   ``acks_late`` tasks must tolerate anyway.

2. Celery's ``gPidbox.loop`` (celery/worker/pidbox.py), the remote-control greenlet of green pools, has no
   error handling: a ``ConnectionError`` from ``drain_events`` ends the greenlet, and only a consumer restart
   spawns it again. kombu reconnects the consumer's BRPOP connection silently, so no restart comes, and
   ``inspect ping``/``shutdown`` go unanswered for the life of the worker. Here the loop reconnects itself.

3. kombu's ``retry_over_time`` (kombu/utils/functional.py, behind every ``Connection.ensure_connection``: the
   consumer's and the pidbox's reconnects) sleeps with ``from time import sleep``, bound when the module is
   imported. ``celery -P gevent`` imports it *while* ``gevent.monkey.patch_all()`` runs, before ``time`` is
   patched (gevent's ``_patch_existing_locks`` calls ``isinstance`` on every object, which makes one of
   celery's lazy proxies import celery._state → celery.utils → kombu.utils), so it keeps the real
   ``time.sleep``: while the broker is down each retry froze the whole worker for 2, 4, 6, 8, 10 … s, and
   task greenlets (their ORM writes, their time limits) stood still. Here the name looks ``time.sleep`` up at
   each call, so it is gevent's sleep once patched.

4. kombu's Redis ``Channel.conn_or_acquire`` (behind ``_put``: every task published) builds a new redis-py
   client each time, and redis-py 8 copies its 170 response callbacks into a case-insensitive dict for each
   one: 0.7 M instructions, a quarter of publishing a task from a store request. The client holds no state
   of its own (each command takes a connection from the channel's pool), so here one client per channel and
   pool serves every publish; a new pool (after a fork or a reconnect) gets a new client.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)

_PIDBOX_RECONNECT_DELAY = 1.0


def _patch_redis_qos() -> None:
    from kombu.transport import redis as kombu_redis
    from kombu.transport import virtual

    qos_class: Any = kombu_redis.QoS
    if getattr(qos_class, "_mediastore_patched", False):
        return

    def ack(self: Any, delivery_tag: Any) -> None:
        try:
            self._remove_from_indices(delivery_tag).execute()
        finally:
            virtual.QoS.ack(self, delivery_tag)

    def reject(self: Any, delivery_tag: Any, requeue: bool = False) -> None:
        try:
            if requeue:
                self.restore_by_tag(delivery_tag, leftmost=True)
            else:
                self._remove_from_indices(delivery_tag).execute()
        finally:
            virtual.QoS.ack(self, delivery_tag)

    qos_class.ack = ack
    qos_class.reject = reject
    qos_class._mediastore_patched = True


def _patch_gpidbox() -> None:
    from celery.worker import pidbox

    gpidbox: Any = pidbox.gPidbox
    if getattr(gpidbox, "_mediastore_patched", False):
        return

    def loop(self: Any, c: Any) -> None:
        # celery's gPidbox.loop, with the connection (re)made inside a retry loop.
        resets = [self._resets]
        shutdown = self._node_shutdown = threading.Event()
        stopped = self._node_stopped = threading.Event()
        try:
            while not shutdown.is_set() and c.connection:
                try:
                    with c.connection_for_read() as connection:
                        logger.info("pidbox: Connected to %s.", connection.as_uri())
                        self._do_reset(c, connection)
                        while not shutdown.is_set() and c.connection:
                            if resets[0] < self._resets:
                                resets[0] += 1
                                self._do_reset(c, connection)
                            with contextlib.suppress(TimeoutError):  # socket.timeout is TimeoutError
                                connection.drain_events(timeout=1.0)
                except c.connection_errors as exc:
                    logger.warning("pidbox: connection lost (%r); reconnecting in %.0f s", exc,
                                   _PIDBOX_RECONNECT_DELAY)
                    shutdown.wait(_PIDBOX_RECONNECT_DELAY)  # gevent-patched: cooperative
        finally:
            stopped.set()

    gpidbox.loop = loop
    gpidbox._mediastore_patched = True


def _cooperative_sleep(seconds: float) -> None:
    time.sleep(seconds)  # looked up at call time: gevent's sleep in a patched worker


def _patch_retry_sleep() -> None:
    from kombu.utils import functional

    functional.sleep = _cooperative_sleep  # type: ignore[attr-defined]  # bound by "from time import sleep"


def _patch_publish_client() -> None:
    from kombu.transport import redis as kombu_redis

    channel_class: Any = kombu_redis.Channel
    if getattr(channel_class, "_mediastore_client_patched", False):
        return

    @contextlib.contextmanager
    def conn_or_acquire(self: Any, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool
        cached = self.__dict__.get("_mediastore_client")
        if cached is None or cached.connection_pool is not pool:
            cached = self.__dict__["_mediastore_client"] = self._create_client()
        yield cached

    channel_class.conn_or_acquire = conn_or_acquire
    channel_class._mediastore_client_patched = True


def apply() -> None:
    _patch_redis_qos()
    _patch_publish_client()
    _patch_gpidbox()
    _patch_retry_sleep()
