"""Cancels reach the worker running a scene through a Redis channel, within a second or two.

The web marks the scene (``scenes.lifecycle.cancel``) and then publishes its id on ``CHANNEL``. Each worker
listens (``listen``, on the bridge's loop for the worker's life) and cancels the run that has the scene,
if it is one of its own (``cancellable``): its subprocess groups are killed at once, and the pipeline
writes ``cancelled``. A message that is lost (Redis down, a worker reconnecting) costs only time: every
write of the run is conditional on no cancel waiting, so the run's next heartbeat finds it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings

from downloads import bridge

logger = logging.getLogger(__name__)

CHANNEL = "mediastore:cancel"
RECONNECT_DELAYS = (0.5, 1.0, 2.0, 5.0)

# The runs of this worker process, by scene id (touched on the loop thread only).
_runs: dict[str, bridge.RunHandle] = {}


@contextmanager
def cancellable(scene_id: str) -> Iterator[None]:
    """While inside, a cancel message for ``scene_id`` cancels the current run."""
    handle = bridge.current_run()
    if handle is not None:
        _runs[scene_id] = handle
    try:
        yield
    finally:
        if handle is not None and _runs.get(scene_id) is handle:
            del _runs[scene_id]


def cancel_local(scene_id: str) -> bool:
    """Cancel this process's run of ``scene_id``; False when it has none."""
    handle = _runs.get(scene_id)
    if handle is None:
        return False
    logger.info("cancel %s: stopping its run", scene_id)
    handle.cancel(bridge.CANCELLED)
    return True


def publish(*, scene_id: str) -> None:
    """From the web, after the cancel is committed. A Redis that does not answer loses only time."""
    import redis

    try:
        with redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2) as client:
            client.publish(CHANNEL, scene_id)
    except (redis.RedisError, ValueError) as exc:  # ValueError: a broker URL that is not Redis (tests)
        logger.warning("cancel %s: not announced to the workers (%s); the run's next heartbeat finds it",
                       scene_id, exc)


async def listen() -> None:
    """Forever: subscribe and cancel the runs named; reconnects after a Redis outage."""
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    failures = 0
    while True:
        try:
            client = aioredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, health_check_interval=15)
            async with client, client.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(CHANNEL)
                failures = 0
                async for message in pubsub.listen():
                    data = message.get("data")
                    if isinstance(data, bytes):
                        cancel_local(data.decode("ascii", "replace"))
        except (RedisError, OSError) as exc:
            delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
            failures += 1
            if failures == 1:
                logger.warning("cancel listener: %s; reconnecting", exc)
            await asyncio.sleep(delay)
