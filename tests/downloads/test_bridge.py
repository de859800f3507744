"""The bridge and AsyncTask outside a worker: the same task code under plain asyncio and plain sync calls."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from unittest import mock

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from downloads import bridge
from downloads.exceptions import NotFoundError, UnsupportedUrlError
from tests.harness.tasks import async_raise, async_sleep


async def test_async_task_is_awaited_in_plain_asyncio():
    assert await async_sleep(0.01) == 0.01


def test_async_task_runs_to_completion_for_a_sync_caller():
    assert async_sleep(0.01) == 0.01


def test_errors_of_an_async_task_reach_a_sync_caller():
    with pytest.raises(UnsupportedUrlError, match="nothing to download"):
        async_raise("ours")


def test_soft_limit_cancels_the_run_and_tells_it_why():
    seen: list[str] = []

    async def body() -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            seen.append(str(bridge.cancel_reason()))
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
            await asyncio.sleep(0.01)  # cleanup may still await
            return "cleaned up"
        finally:
            seen.append("finally")
        return "not reached"

    started = time.monotonic()
    result = bridge.run(body(), soft_limit=0.2)

    assert result == "cleaned up"
    assert seen == [bridge.SOFT_LIMIT, "finally"]
    assert time.monotonic() - started < 2


def test_soft_limit_stops_every_task_of_a_task_group():
    stopped: list[str] = []

    async def child(name: str) -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            stopped.append(name)
            raise

    async def body() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(child("a"))
            group.create_task(child("b"))

    started = time.monotonic()
    with pytest.raises(SoftTimeLimitExceeded):
        bridge.run(body(), soft_limit=0.2)

    assert sorted(stopped) == ["a", "b"]
    assert time.monotonic() - started < 2


def test_plain_cancellation_is_not_mistaken_for_the_soft_limit():
    async def body() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().call_later(0.05, task.cancel)
        await asyncio.sleep(5)

    with pytest.raises(bridge.RunCancelled):
        bridge.run(body(), soft_limit=10)


def test_first_real_error_skips_cancellations_in_a_group():
    group = BaseExceptionGroup("tasks", [asyncio.CancelledError(), ExceptionGroup("inner", [NotFoundError("gone")])])

    assert str(bridge.first_real_error(group)) == "gone"


def test_first_real_error_of_a_plain_error_is_itself():
    error = NotFoundError("gone")

    assert bridge.first_real_error(error) is error


async def test_shared_object_is_made_once_and_closed_with_the_loop():
    events: list[str] = []

    @asynccontextmanager
    async def factory():
        events.append("opened")
        yield object()
        events.append("closed")

    first = await bridge.shared("thing", factory)
    second = await bridge.shared("thing", factory)
    await bridge.close_shared()

    assert first is second
    assert events == ["opened", "closed"]


async def test_shared_object_made_once_under_concurrent_first_use():
    opened = 0

    @asynccontextmanager
    async def factory():
        nonlocal opened
        opened += 1
        await asyncio.sleep(0.01)
        yield object()

    async with bridge.shared_clients_closed():
        results = await asyncio.gather(*(bridge.shared("raced", factory) for _ in range(10)))

    assert opened == 1
    assert len({id(result) for result in results}) == 1


def test_kill_process_groups_kills_the_whole_tree(tmp_path: Path):
    shell = subprocess.Popen(["sh", "-c", "sleep 100 & echo $! > child; wait"], cwd=tmp_path, start_new_session=True)
    child_file = tmp_path / "child"
    deadline = time.monotonic() + 5
    while not (child_file.exists() and child_file.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    child = int(child_file.read_text())

    bridge.kill_process_groups({shell.pid})

    assert shell.wait(timeout=5) == -signal.SIGKILL
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            break
        time.sleep(0.02)
    else:
        pytest.fail("the background child survived")


def test_kill_process_groups_ignores_processes_already_gone():
    finished = subprocess.Popen(["true"])
    finished.wait()

    bridge.kill_process_groups({finished.pid})  # no error


async def test_mongo_database_is_refused_on_sqlite():
    from scenes.rows import mongo_database

    with pytest.raises(RuntimeError, match="MongoDB"):
        await mongo_database()


async def test_mongo_client_is_shared_and_uses_the_backend_connection_parameters(settings):
    from scenes import rows

    settings.DATABASE_IS_MONGODB = True
    client = mock.MagicMock()
    client.__aenter__.return_value = client
    params = {"host": "mongodb://db.example/media", "serverSelectionTimeoutMS": 5000}
    with (
        mock.patch("pymongo.AsyncMongoClient", return_value=client) as client_class,
        mock.patch.object(rows.connections["default"], "get_connection_params", return_value=params),
        mock.patch.dict(rows.connections["default"].settings_dict, {"NAME": "media"}),
    ):
        async with bridge.shared_clients_closed():
            first = await rows.mongo_database()
            second = await rows.mongo_database()

    client_class.assert_called_once_with(**params)
    assert first is second is client.__getitem__.return_value
    client.__getitem__.assert_called_with("media")
    client.__aexit__.assert_awaited_once()


def test_a_reaped_child_is_forgotten_so_a_hard_limit_cannot_kill_a_reused_pid():
    subprocess_module = bridge._native_subprocess_module()
    state = bridge._RunState()
    token = bridge._run_state.set(state)
    try:
        running = subprocess_module.Popen(["sleep", "5"])
        finished = subprocess_module.Popen(["true"])
        finished.wait()

        assert state.children == {running.pid}
    finally:
        running.kill()
        running.wait()
        bridge._run_state.reset(token)
    assert state.children == set()


def _probe(source: str) -> subprocess.CompletedProcess[str]:
    """``source`` run by a Python of its own (where it may monkey-patch), which must succeed."""
    done = subprocess.run([os.environ.get("PYTHON", sys.executable), "-c", source],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    return done


_NATIVE_LOCKS_PROBE = """
import gevent.monkey
gevent.monkey.patch_all()
import _thread, logging, sys
old = logging.StreamHandler(sys.stderr)
assert not isinstance(old.lock, _thread.RLock)  # patched: a gevent-backed lock
from downloads import bridge
bridge.native_logging_locks()
new = logging.StreamHandler(sys.stderr)
assert isinstance(old.lock, _thread.RLock), type(old.lock)
assert isinstance(new.lock, _thread.RLock), type(new.lock)
assert isinstance(logging._lock, _thread.RLock), type(logging._lock)
logging.getLogger("probe").addHandler(new)
logging.getLogger("probe").warning("still logs")
print("ok")
"""


def test_logging_locks_are_native_in_a_patched_worker():
    # A greenlet waiting on a gevent-backed handler lock that a native thread releases can stay parked for
    # good (gevent/gevent#2013): the consumer greenlet of the worker did, in "Task ... received".
    done = _probe(_NATIVE_LOCKS_PROBE)
    assert done.stdout.strip() == "ok"
    assert "still logs" in done.stderr


_NATIVE_METRIC_LOCKS_PROBE = """
import gevent.monkey
gevent.monkey.patch_all()
from gevent.monkey import get_original
native = type(get_original("_thread", "allocate_lock")())
from prometheus_client import REGISTRY, Counter, Histogram
early = Histogram("probe_early_seconds", "made before", ["stage"])
early.labels(stage="a")
plain = Counter("probe_plain_total", "unlabelled, made before")
assert type(plain._value._lock) is not native  # patched: a gevent-backed lock
from downloads import bridge
bridge.native_metric_locks()
late = Counter("probe_late_total", "made after", ["x"])
child = early.labels(stage="a")
locks = {"registry": REGISTRY._lock, "early": early._lock, "early sum": child._sum._lock,
         "plain": plain._value._lock, "late": late._lock, "late child": late.labels(x="1")._value._lock,
         **{f"bucket {i}": bucket._lock for i, bucket in enumerate(child._buckets)}}
gevent_backed = {name: type(lock).__name__ for name, lock in locks.items() if type(lock) is not native}
assert not gevent_backed, gevent_backed
print("ok")
"""


def test_metric_locks_are_native_in_a_patched_worker():
    # The pipeline counts on the loop thread while the metrics server's greenlets read the same values: a
    # gevent-backed lock shared by a native thread and greenlets can park its waiter for good (as logging's did).
    done = _probe(_NATIVE_METRIC_LOCKS_PROBE)
    assert done.stdout.strip() == "ok"


_OFF_THE_HUB_PROBE = """
import gevent.monkey
gevent.monkey.patch_all()
import asyncio, os, socket, gevent
from gevent._hub_local import get_hub_if_exists
from downloads import bridge
{here}
async def on_loop_and_pool():
    return here(), await asyncio.get_running_loop().run_in_executor(None, here)

loop = bridge.bridge.start()
print(*asyncio.run_coroutine_threadsafe(on_loop_and_pool(), loop).result(10))
"""


def _on_loop_and_pool(here: str) -> list[str]:
    """What ``here()`` (its source) returns on the loop thread and on a native pool thread of a patched worker."""
    return _probe(_OFF_THE_HUB_PROBE.format(here=here)).stdout.split()


def test_os_close_closes_at_once_on_the_loop_thread_and_the_pool():
    # gevent defers a close to the calling thread's hub, and these threads' hubs never run: the worker kept the
    # pidfd of every subprocess it reaped and the directory fds of every job folder it removed.
    here = """
def here():
    gevent.get_hub()  # this thread now has a hub that never runs, as any patched primitive used here gives it
    read, write = os.pipe()
    os.close(write)
    os.set_blocking(read, False)
    try:
        return "closed" if os.read(read, 1) == b"" else "data?"
    except BlockingIOError:
        return "still-open"
    finally:
        os.close(read)
"""
    assert _on_loop_and_pool(here) == ["closed", "closed"]


def test_name_resolution_on_the_loop_thread_and_the_pool_makes_no_hub():
    # The worker checks a source URL's addresses on a pool thread; gevent's resolver gave that thread a hub
    # (and a thread pool of its own) that never runs.
    here = """
def here():
    socket.getaddrinfo("127.0.0.1", 80, proto=socket.IPPROTO_TCP)
    return "no-hub" if get_hub_if_exists() is None else "hub"
"""
    assert _on_loop_and_pool(here) == ["no-hub", "no-hub"]


def test_a_native_socketpair_is_made_of_native_sockets_and_makes_no_hub():
    # The yt-dlp helper's control socket lives on the loop thread; a gevent socket there gave it a hub.
    here = """
def here():
    ours, theirs = bridge.native_socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        native = gevent.monkey.get_original("socket", "socket")
        ours.sendall(b"x")
        kinds = "native" if type(ours) is native and type(theirs) is native and theirs.recv(1) == b"x" else "gevent"
    return kinds + ("" if get_hub_if_exists() is None else "+hub")
"""
    assert _on_loop_and_pool(here) == ["native", "native"]
