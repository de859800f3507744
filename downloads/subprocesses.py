"""Owning child processes: each starts its own session, and ending it ends its whole process group."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal

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


async def run_captured(argv: list[str], *, limit: float) -> tuple[int, bytes, bytes]:
    """Run ``argv`` to completion within ``limit`` seconds; return exit code, stdout and stderr.

    On timeout or cancellation the process group is killed and reaped before the error propagates.
    """
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )
    try:
        async with asyncio.timeout(limit):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            kill_group(process.pid)
            await asyncio.shield(process.wait())
    assert process.returncode is not None
    return process.returncode, stdout, stderr
