"""Tasks that exist only to prove the harness: loaded into test workers with ``-I``."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from celery import shared_task

from downloads import bridge
from downloads.asynctask import AsyncTask
from downloads.exceptions import UnsupportedUrlError
from mediastore.celery import app as celery_app

T = TypeVar("T")


@shared_task
def add(x: int, y: int) -> int:
    return x + y


@shared_task
def journal_sleep(journal: str, seconds: float = 0.0, until: float | None = None) -> int:
    """Write ``start <pid>`` and, after sleeping, ``done <pid>`` to the journal; return the pid.

    ``until`` (a wall-clock time) makes many tasks finish, and so acknowledge, in the same instant.

    Appends of a short line with O_APPEND are atomic, so concurrent or successive workers never mix lines.
    """
    pid = os.getpid()
    path = Path(journal)
    with path.open("a") as handle:
        handle.write(f"start {pid}\n")
    if until is not None:
        seconds = max(seconds, until - time.time())
    time.sleep(seconds)  # gevent-patched in the worker: yields to the other tasks
    with path.open("a") as handle:
        handle.write(f"done {pid}\n")
    return pid


# --- async tasks for the bridge ---------------------------------------------------------------------------



@celery_app.task(base=AsyncTask)
async def async_sleep(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@celery_app.task(base=AsyncTask)
async def async_subprocess(lines: list[str], exit_code: int) -> dict[str, object]:
    """A child that prints ``lines`` and exits with ``exit_code``; what came back, line by line."""
    script = "import sys\nfor line in sys.argv[2:]: print(line, flush=True)\nsys.exit(int(sys.argv[1]))"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(exit_code), *lines,
        stdout=asyncio.subprocess.PIPE, start_new_session=True,
    )
    assert process.stdout is not None
    received = [line.decode().rstrip("\n") async for line in process.stdout]
    return {"lines": received, "exit_code": await process.wait(), "pid": process.pid}


@celery_app.task(base=AsyncTask)
async def async_set_title(scene_id: str, title: str) -> int:
    from scenes.models import Scene

    return await Scene.objects.filter(pk=scene_id).aupdate(title=title)


@celery_app.task
def sync_set_title(scene_id: str, title: str) -> int:
    from scenes.models import Scene

    return Scene.objects.filter(pk=scene_id).update(title=title)


@celery_app.task(base=AsyncTask)
async def async_raise(kind: str) -> None:
    await asyncio.sleep(0)
    if kind == "ours":
        raise UnsupportedUrlError("nothing to download at http://example.invalid/")

    async def fail() -> None:
        await asyncio.sleep(0.01)
        raise UnsupportedUrlError("the first real error")

    async def wait_forever() -> None:
        await asyncio.sleep(60)

    async with asyncio.TaskGroup() as group:
        group.create_task(wait_forever())
        group.create_task(fail())


@celery_app.task(base=AsyncTask, soft_time_limit=1, time_limit=5)
async def async_soft_limited(journal: str) -> str:
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        _append(journal, f"cancelled: {bridge.cancel_reason()}")
        raise
    finally:
        _append(journal, "finally ran")
    return "not reached"


async def past_the_soft_limit(wait: Callable[[], Awaitable[T]]) -> T:
    """Await ``wait()`` and shrug off the soft limit, as code stuck in a library might: only the hard limit
    (or another cancellation) ends it."""
    while True:
        try:
            return await wait()
        except asyncio.CancelledError:
            if bridge.cancel_reason() != bridge.SOFT_LIMIT:
                raise
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()


@celery_app.task(base=AsyncTask, soft_time_limit=1, time_limit=2)
async def async_hard_limited(pid_file: str) -> None:
    """Starts a process tree (a shell with a background child), records the shell's pid, then hangs,
    shrugging off the soft limit as a stuck task would."""
    process = await asyncio.create_subprocess_exec("sh", "-c", "sleep 100 & sleep 100", start_new_session=True)
    _append(pid_file, str(process.pid))
    await past_the_soft_limit(process.wait)


@celery_app.task(base=AsyncTask)
async def async_s3_client_identity() -> list[int]:
    from downloads.storage import s3_client

    client = await s3_client()
    return [os.getpid(), id(client)]


def _append(path: str, line: str) -> None:
    with open(path, "a") as handle:
        handle.write(line + "\n")


@shared_task
def noop_sync() -> None:
    return None


@celery_app.task(base=AsyncTask)
async def noop_async() -> None:
    return None


STUBBORN_MARK = "stubborn=1"


def _install_stubborn_download() -> None:
    """Once per worker: a download whose URL carries ``STUBBORN_MARK`` shrugs off the soft limit (as code
    stuck in a library might); every other URL goes to the real yt-dlp. Installed once, not patched per
    task: concurrent patches undone in another order would leave the stub in place for everyone."""
    from downloads import ytdlp

    if getattr(ytdlp.download, "stubborn", False):
        return
    real = ytdlp.download

    async def download(url: str, *args: object, **kwargs: object) -> object:
        if STUBBORN_MARK not in url:
            return await real(url, *args, **kwargs)  # type: ignore[arg-type]
        return await past_the_soft_limit(lambda: asyncio.sleep(3600))

    download.stubborn = True  # type: ignore[attr-defined]
    ytdlp.download = download  # type: ignore[assignment]


@celery_app.task(base=AsyncTask, soft_time_limit=1, time_limit=3)
async def ingest_past_the_hard_limit(scene_id: str) -> str:
    """The real pipeline for a scene whose URL carries ``STUBBORN_MARK``, so the hard limit ends the job."""
    from downloads import pipeline

    _install_stubborn_download()
    return await pipeline.ingest(scene_id=scene_id)

