"""Faults the fault suite plants inside a worker, loaded with ``-I benchmarks.fault_hooks``.

Each is switched on by a mark in the scene's URL (the media server ignores query strings it does not
know), so one worker runs faulty and healthy scenes side by side:

- ``stubborn=1``: the download shrugs off the soft limit (as code stuck in a library might), so the hard
  limit is what ends the job;
- ``pause_complete=1``: the job waits 5 s between storing the media and writing ``completed``, so the
  suite can kill the worker in that window;
- ``kill_worker=1``: the job kills its own worker (as one that runs it out of memory would), every time.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from downloads import ytdlp
from scenes import lifecycle
from scenes.rows import scene_rows
from tests.harness.tasks import past_the_soft_limit

STUBBORN = "stubborn=1"
PAUSE_COMPLETE = "pause_complete=1"
KILL_WORKER = "kill_worker=1"

_real_download = ytdlp.download
_real_complete = lifecycle.complete


async def _download(url: str, *args: Any, **kwargs: Any) -> Any:
    if KILL_WORKER in url:
        os.kill(os.getpid(), signal.SIGKILL)
    if STUBBORN in url:
        return await past_the_soft_limit(lambda: asyncio.sleep(3600))
    return await _real_download(url, *args, **kwargs)


async def _complete(*, scene_id: str, attempt: int, fields: dict[str, Any]) -> bool:
    row = await scene_rows().read(scene_id)
    if row is not None and PAUSE_COMPLETE in row["source_url"]:
        await asyncio.sleep(5)
    return await _real_complete(scene_id=scene_id, attempt=attempt, fields=fields)


ytdlp.download = _download  # type: ignore[assignment]
lifecycle.complete = _complete  # type: ignore[assignment]
