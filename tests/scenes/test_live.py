"""Live push without a web server: what transitions add to the Redis stream, and how one process's hub fans
it out (filtering, order, resume, slow subscribers), against the harness's real Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model

from scenes import lifecycle, live, live_hub, services
from scenes.lifecycle import Announcement
from scenes.models import Scene
from tests.harness import scene_states
from tests.harness.processes import silent_port
from tests.scenes.conftest import PUBLIC_URL


def _entries(url: str) -> list[tuple[str, dict[str, Any]]]:
    client = redis.Redis.from_url(url)
    try:
        return [(entry_id.decode(), json.loads(fields[b"event"])) for entry_id, fields in client.xrange(live.STREAM)]
    finally:
        client.close()


@pytest.fixture
def owner(db):
    return get_user_model().objects.create_user("live-owner")


# --- What transitions publish ---------------------------------------------------------------------------


def test_a_web_transition_is_added_to_the_stream_as_the_api_shows_it(owner, broker_url,
                                                                     django_capture_on_commit_callbacks):
    scene = services.scene_create(owner=owner, source_url=PUBLIC_URL)

    with django_capture_on_commit_callbacks(execute=True):
        services.scene_cancel(scene=scene)

    [(_, event)] = _entries(broker_url)
    assert {k: event[k] for k in ("id", "transition", "status", "owner_id", "project_id")} == {
        "id": scene.pk, "transition": "cancel", "status": "cancelled", "owner_id": owner.pk, "project_id": None}
    assert event["scene"]["status"] == "cancelled"
    assert event["scene"]["error_message"] == lifecycle.CANCELLED_MESSAGE


def test_a_worker_progress_write_is_added_to_the_stream(owner, broker_url):
    scene = services.scene_create(owner=owner, source_url=PUBLIC_URL)
    scene_states.start(scene_id=scene.pk)

    async_to_sync(lifecycle.heartbeat)(scene_id=scene.pk, attempt=1, stage=Scene.Stage.DOWNLOADING, progress=42)

    transitions = [(event["transition"], event["scene"]["progress"]) for _, event in _entries(broker_url)]
    assert transitions == [("claim", 0), ("progress", 42)]


@pytest.fixture
def silent_redis() -> Iterator[str]:
    """A Redis that hangs."""
    with silent_port() as port:
        yield f"redis://127.0.0.1:{port}/0"


def test_a_hanging_redis_costs_one_short_timeout_and_then_nothing(owner, settings, silent_redis):
    settings.REDIS_URL = silent_redis
    scenes = [services.scene_create(owner=owner, source_url=PUBLIC_URL) for _ in range(11)]
    started = time.monotonic()
    live.publish(lifecycle.snapshot(scenes[0], "cancel"))
    first = time.monotonic() - started

    started = time.monotonic()
    for scene in scenes[1:]:
        live.publish(lifecycle.snapshot(scene, "cancel"))
    then = time.monotonic() - started

    assert live.TIMEOUT * 0.8 <= first < live.TIMEOUT * 3
    # Each publish that still tried Redis would wait out the timeout; ten together stay under one.
    assert then < live.TIMEOUT / 2, f"10 publishes took {then:.3f}s while Redis hangs"


def test_the_breaker_lets_publishing_try_again_after_its_cooldown():
    now = [100.0]
    breaker = live.Breaker(cooldown=5, clock=lambda: now[0])
    breaker.failed(ConnectionError("refused"))

    closed_at_once = breaker.allows()
    now[0] += 5

    assert (closed_at_once, breaker.allows()) == (False, True)


# --- The hub ------------------------------------------------------------------------------------------------


def _announcement(scene_id: str, *, owner_id: int, project_id: str | None = None,
                  transition: str = "complete") -> Announcement:
    return Announcement(scene_id=scene_id, transition=transition, status="completed", owner_id=owner_id,
                        project_id=project_id, scene={"id": scene_id, "status": "completed"})


def _add(url: str, *announcements: Announcement) -> list[str]:
    client = redis.Redis.from_url(url)
    try:
        return [client.xadd(live.STREAM, live.entry(a)).decode() for a in announcements]  # type: ignore[arg-type]
    finally:
        client.close()


async def _aadd(url: str, *announcements: Announcement) -> list[str]:
    return await asyncio.to_thread(_add, url, *announcements)


@pytest.fixture
async def hub(broker_url: str) -> AsyncIterator[live_hub.Hub]:
    current = live_hub.Hub(broker_url)
    await current.start()
    try:
        yield current
    finally:
        await current.aclose()


async def _received(subscriber: live_hub.Subscriber, count: int) -> list[live_hub.Event]:
    events: list[live_hub.Event] = []
    async with asyncio.timeout(5):
        while len(events) < count:
            events += await subscriber.next()
    return events


async def test_each_subscriber_gets_only_what_its_scope_admits(hub, broker_url):
    alice, bob = hub.subscribe(live_hub.Scope(owner_id=1))[0], hub.subscribe(live_hub.Scope(owner_id=2))[0]
    alices_project = hub.subscribe(live_hub.Scope(owner_id=1, project_id="p1"))[0]
    one_scene = hub.subscribe(live_hub.Scope(owner_id=None, scene_id="s3"))[0]

    await _aadd(broker_url, _announcement("s1", owner_id=1), _announcement("s2", owner_id=2),
                _announcement("s3", owner_id=1, project_id="p1"))

    assert [e.scene_id for e in await _received(alice, 2)] == ["s1", "s3"]
    assert [e.scene_id for e in await _received(bob, 1)] == ["s2"]
    assert [e.scene_id for e in await _received(alices_project, 1)] == ["s3"]
    assert [e.scene_id for e in await _received(one_scene, 1)] == ["s3"]


async def test_events_arrive_in_stream_order_with_their_stream_ids(hub, broker_url):
    subscriber, _ = hub.subscribe(live_hub.Scope(owner_id=None))

    ids = await _aadd(broker_url, *[_announcement(f"s{i}", owner_id=1) for i in range(50)])

    assert [event.id for event in await _received(subscriber, 50)] == ids


async def test_a_progress_write_is_a_progress_event_and_every_other_change_a_scene_event(hub, broker_url):
    subscriber, _ = hub.subscribe(live_hub.Scope(owner_id=None))

    await _aadd(broker_url, _announcement("s1", owner_id=1, transition="progress"), _announcement("s1", owner_id=1))

    frames = [event.frame.decode() for event in await _received(subscriber, 2)]
    assert [line for f in frames for line in f.splitlines() if line.startswith("event:")] == [
        "event: progress", "event: scene"]
    assert json.loads(frames[0].splitlines()[2].removeprefix("data: ")) == {
        "transition": "progress", "scene": {"id": "s1", "status": "completed"}}


async def test_replay_gives_what_came_after_an_id_up_to_the_subscribers_start(hub, broker_url):
    await hub.aclose()  # the reader starts again below, after the events to replay
    seen, *missed = await _aadd(broker_url, *[_announcement(f"s{i}", owner_id=1) for i in range(4)])
    await _aadd(broker_url, _announcement("other", owner_id=2))
    await hub.start()
    _, position = hub.subscribe(live_hub.Scope(owner_id=1))
    await _aadd(broker_url, _announcement("live", owner_id=1))  # after the position: the reader's, not replay's

    replayed = [event.id async for event in hub.replay(live_hub.Scope(owner_id=1), after=seen, until=position)]

    assert replayed == missed


async def test_a_subscriber_that_falls_behind_is_dropped_and_told_to_resume(broker_url):
    current = live_hub.Hub(broker_url)
    await current.start()
    try:
        slow, _ = current.subscribe(live_hub.Scope(owner_id=None))
        await _aadd(broker_url, *[_announcement(f"s{i}", owner_id=1) for i in range(live_hub.CLIENT_BUFFER + 1)])
        async with asyncio.timeout(5):
            while slow.ended is None:  # noqa: ASYNC110 - looked at from outside: taking its events would let it keep up
                await asyncio.sleep(0.01)

        assert (slow.ended, current.subscribers, await slow.next()) == (live_hub.LAGGED, 0, [])
    finally:
        await current.aclose()


async def test_trimmed_events_are_reported_lost_to_a_client_that_resumes_before_them(hub, broker_url):
    first, *_ = await _aadd(broker_url, *[_announcement(f"s{i}", owner_id=1) for i in range(5)])
    client = redis.asyncio.Redis.from_url(broker_url)
    await client.xtrim(live.STREAM, maxlen=2, approximate=False)
    await client.aclose()

    assert await hub.lost_after(first) is True
    assert await hub.lost_after(_ids_now(broker_url)) is False


def _ids_now(url: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        return client.xrevrange(live.STREAM, count=1)[0][0].decode()
    finally:
        client.close()
