"""Owning child processes: each starts its own session, and ending it ends its whole process group."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
from typing import Protocol

from django.conf import settings


def kill_group(pid: int) -> None:
    """SIGKILL ``pid`` with its process group when it leads one (``start_new_session=True``)."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)


@functools.cache
def _prlimit() -> str | None:
    return shutil.which("prlimit")  # a PATH search: once per process, not per ffprobe/ffmpeg run


def memory_limited(argv: list[str]) -> list[str]:
    """``argv`` under ``MEDIA_CHILD_MEMORY`` of address space, through util-linux's prlimit (an exec, not a
    preexec_fn: the loop thread must not run Python between fork and exec)."""
    prlimit = _prlimit()
    if prlimit is None or not settings.MEDIA_CHILD_MEMORY:
        return argv
    return [prlimit, f"--as={settings.MEDIA_CHILD_MEMORY}", "--", *argv]


class OwnedProcess(Protocol):
    """A child whose output and exit this process reads: an asyncio subprocess, or a child of the yt-dlp
    helper (``ytdlp_helper.ForkedProcess``)."""

    @property
    def pid(self) -> int: ...

    @property
    def stdout(self) -> asyncio.StreamReader | None: ...

    @property
    def stderr(self) -> asyncio.StreamReader | None: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...


async def run_captured(argv: list[str], *, limit: float) -> tuple[int, bytes, bytes]:
    """Run ``argv`` to completion within ``limit`` seconds; return exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )
    return await captured(process, limit=limit)


async def captured(process: OwnedProcess, *, limit: float) -> tuple[int, bytes, bytes]:
    """Read ``process``'s stdout and stderr to the end and wait for its exit, within ``limit`` seconds.

    On timeout or cancellation the process group is killed and reaped before the error propagates.
    """
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        async with asyncio.timeout(limit):
            stdout, stderr = await asyncio.gather(process.stdout.read(), process.stderr.read())
            code = await process.wait()
    finally:
        if process.returncode is None:
            kill_group(process.pid)
            await asyncio.shield(process.wait())
    return code, stdout, stderr
