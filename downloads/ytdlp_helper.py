"""The worker's side of the yt-dlp helper (``downloads.ytdlp_forkserver``): one per worker process, started
when an ingest worker is ready (or on first use), started again when it has died; each job is a child it
forks, owned here like a subprocess.

``spawn`` returns a ``ForkedProcess`` with what ``downloads.ytdlp`` uses of ``asyncio.subprocess.Process``:
``pid`` (the leader of the job's own process group), ``stdout``/``stderr`` stream readers, ``wait()`` and
``returncode``. The child is recorded in the current run like a subprocess (``bridge.own_child``), so the hard
limit, cancel and shutdown kill its group as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from django.conf import settings

from downloads import bridge, ytdlp_forkserver
from downloads.subprocesses import kill_group

logger = logging.getLogger(__name__)

_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
SHARED_KEY = "ytdlp-helper"
# How long a job waits for the helper: for it to be ready (its imports: about 1 s, far longer on a loaded
# machine), then for it to take the job and fork its child (milliseconds, even behind a hundred others). A helper
# that has not answered by then is stuck; waiting on would hold the job until the task's time limit, hours away.
START_TIMEOUT = 120.0
FORK_TIMEOUT = 60.0
# A job still waiting for the helper to be ready after this long says so: a slow start is not a silent one.
START_NOTICE = 10.0


class HelperUnavailable(OSError):
    """The helper could not be started or stopped while a job was being handed to it."""


class ForkedProcess:
    def __init__(self, *, pid: int, stdout: asyncio.StreamReader, stderr: asyncio.StreamReader,
                 exited: asyncio.Future[int], transports: list[asyncio.BaseTransport]) -> None:
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr
        self._exited = exited
        self._transports = transports

    @property
    def returncode(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        try:
            return await asyncio.shield(self._exited)
        finally:
            if self._exited.done():
                self.close()

    def close(self) -> None:
        for transport in self._transports:
            transport.close()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():  # a level-triggered poll may call again before the waiter runs
        waiter.set_result(None)


class Helper:
    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._control: socket.socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._started: asyncio.Lock | None = None
        self._ready: asyncio.Event | None = None  # the running helper has imported what jobs need
        self._sending: asyncio.Lock | None = None
        self._room: asyncio.Future[None] | None = None  # the sender waiting for room on the socket
        # job number -> the child's pid and its exit code to come: together, as a child may have exited (and
        # its exit been read) before the job that started it runs again
        self._forks: dict[int, asyncio.Future[tuple[int, asyncio.Future[int]]]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}  # pid -> its exit code
        self._jobs = 0
        self._closing = False
        self.starts = 0

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls) -> AsyncIterator[Helper]:
        helper = cls()
        try:
            yield helper
        finally:
            await helper.aclose()

    async def spawn(self, argv: list[str], *, env: dict[str, str], program: str = "ytdlp") -> ForkedProcess:
        """Start ``argv`` as a forked child with ``env``: the arguments of ``ytdlp_guard.main`` (``program``
        ``ytdlp``) or of ``media_child.main`` (``media``)."""
        loop = asyncio.get_running_loop()
        control, ready = await self._ensure_started()
        self._jobs += 1
        job = self._jobs
        forked: asyncio.Future[tuple[int, asyncio.Future[int]]] = loop.create_future()
        self._forks[job] = forked
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        stdin = os.open(os.devnull, os.O_RDONLY)
        theirs = [stdin, out_write, err_write]
        waited = f"was not ready within {START_TIMEOUT:g} s"
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await self._wait_ready(ready)
            waited = f"did not take a job within {FORK_TIMEOUT:g} s"
            async with asyncio.timeout(FORK_TIMEOUT):
                try:
                    message = json.dumps({"job": job, "program": program, "argv": argv, "env": env}).encode()
                    await self._send(control, message, theirs)
                finally:  # the child has its own copies: ours would keep the pipes from ending
                    for fd in theirs:
                        os.close(fd)
                    theirs = []
                pid, exited = await forked
        except BaseException as exc:
            self._forks.pop(job, None)
            if forked.done() and not forked.cancelled():
                forked.exception()  # seen: the job fails for its own reason, raised below
            for fd in (*theirs, out_read, err_read):
                os.close(fd)
            if isinstance(exc, TimeoutError):
                await asyncio.shield(self._stop_stuck(control, waited))
                raise HelperUnavailable(f"the yt-dlp helper {waited}; it is stopped, and the next job starts a new "
                                        "one") from exc
            raise
        exited.add_done_callback(bridge.own_child(pid))
        from downloads.ytdlp import LINE_LIMIT

        streams: list[asyncio.StreamReader] = []
        transports: list[asyncio.BaseTransport] = []
        for fd in (out_read, err_read):
            reader = asyncio.StreamReader(limit=LINE_LIMIT, loop=loop)
            protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
            transport, _ = await loop.connect_read_pipe(lambda p=protocol: p, os.fdopen(fd, "rb", buffering=0))  # type: ignore[misc]
            streams.append(reader)
            transports.append(transport)
        return ForkedProcess(pid=pid, stdout=streams[0], stderr=streams[1], exited=exited, transports=transports)

    async def _wait_ready(self, ready: asyncio.Event) -> None:
        try:
            async with asyncio.timeout(START_NOTICE):
                await ready.wait()
        except TimeoutError:
            pid = self._process.pid if self._process is not None else None
            logger.warning("yt-dlp helper %s is not ready after %g s; a job waits for it up to %g s, then runs "
                           "yt-dlp as a subprocess of its own", pid, START_NOTICE, START_TIMEOUT)
            await ready.wait()

    async def _stop_stuck(self, control: socket.socket, waited: str) -> None:
        """End the helper behind ``control``, which does not answer, unless it has ended already. Once its
        reader has seen the socket close, the children it reported are killed and the other jobs waiting for it
        fail over to plain subprocesses; the next job starts a new helper."""
        process, reader = self._process, self._reader
        if self._control is not control or process is None or reader is None:
            return
        logger.warning("yt-dlp helper %d %s; killing it", process.pid, waited)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await self._end_reader()

    async def _end_reader(self) -> None:
        """Shut our end of the socket, so the reader sees the end now whatever the helper does, and wait for it:
        on its way out it ends the helper's jobs."""
        if self._control is not None:
            with contextlib.suppress(OSError):
                self._control.shutdown(socket.SHUT_RDWR)
        if self._reader is not None:
            await asyncio.wait([self._reader])

    async def start(self) -> None:
        """Start the helper now if it is not running (the worker does at start-up, so its first job does not
        wait for yt-dlp and FFmpeg's libraries to be imported)."""
        await self._ensure_started()

    async def _send(self, control: socket.socket, message: bytes, fds: list[int]) -> None:
        loop = asyncio.get_running_loop()
        if self._sending is None:
            self._sending = asyncio.Lock()
        # One job at a time waits for room on the socket: asyncio keeps a single writer callback per socket, the
        # last one added, so of several jobs waiting at once only the last would ever have been woken.
        async with self._sending:
            while True:
                try:
                    socket.send_fds(control, [message], fds)
                    return
                except BlockingIOError:
                    room = self._room = loop.create_future()
                    loop.add_writer(control, _wake, room)
                    try:
                        await room
                    finally:
                        self._room = None
                        with contextlib.suppress(ValueError):  # closed meanwhile (the helper was lost)
                            loop.remove_writer(control)
                except OSError as exc:
                    raise HelperUnavailable(f"the yt-dlp helper is not taking jobs: {exc}") from exc

    async def _ensure_started(self) -> tuple[socket.socket, asyncio.Event]:
        if self._started is None:
            self._started = asyncio.Lock()
        async with self._started:
            if self._control is None or self._process is None or self._process.returncode is not None:
                if self._reader is not None and not self._reader.done():
                    # The helper has exited, but its reader has not seen the socket close yet. It ends that
                    # helper's jobs when it does: let it, before the new helper has jobs it would end too.
                    await self._end_reader()
                # In a context of its own: the helper is the worker's, not a child of the run that needed it
                # first (whose hard limit would kill it).
                start = asyncio.get_running_loop().create_task(self._start(), context=contextvars.Context())
                await asyncio.shield(start)
            assert self._control is not None
            assert self._ready is not None
            return self._control, self._ready

    async def _start(self) -> None:
        ours, theirs = bridge.native_socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-s", "-c", ytdlp_forkserver.bootstrap(
                    _REPO_ROOT, theirs.fileno(), extractors=",".join(settings.MEDIA_YTDLP_EXTRACTORS)),
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                # Outside the worker's process group: a Ctrl-C to the group is the worker's to handle (it hands
                # running jobs back on a warm shutdown), and would otherwise kill the helper and its jobs under
                # it. The helper ends when the worker's end of the socket closes, however the worker ends.
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            raise HelperUnavailable(f"could not start the yt-dlp helper: {exc.strerror}") from exc
        finally:
            theirs.close()
        ours.setblocking(False)
        ready = asyncio.Event()
        self._process, self._control, self._ready = process, ours, ready
        self.starts += 1
        self._reader = asyncio.get_running_loop().create_task(self._read(ours, process, ready), name="yt-dlp helper")
        logger.info("yt-dlp helper %d started (start %d)", process.pid, self.starts)

    async def _read(self, control: socket.socket, process: asyncio.subprocess.Process, ready: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await loop.sock_recv(control, ytdlp_forkserver.MAX_MESSAGE):
                message = json.loads(data)
                if "ready" in message:
                    ready.set()
                else:
                    self._dispatch(message)
        except OSError:
            pass
        finally:
            self._lost(control, process)
            ready.set()  # the jobs waiting for it go on to find it gone

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "job" in message:
            forked = self._forks.pop(message["job"], None)
            if "pid" in message:
                pid = int(message["pid"])
                exited = self._exits[pid] = asyncio.get_running_loop().create_future()
                if forked is not None and not forked.done():
                    forked.set_result((pid, exited))
                else:
                    # Its job stopped waiting after the request was sent (a cancel, a time limit): nobody would
                    # read this child's output or kill it on a cancel, and it would download on regardless.
                    logger.warning("yt-dlp %d: its job %s was given up before the fork was answered; killed",
                                   pid, message["job"])
                    kill_group(pid)
            elif forked is not None and not forked.done():
                forked.set_exception(HelperUnavailable(f"the yt-dlp helper could not fork: {message.get('error')}"))
        elif "pid" in message:
            ended = self._exits.pop(int(message["pid"]), None)
            if ended is not None and not ended.done():
                ended.set_result(int(message["code"]))

    def _lost(self, control: socket.socket, process: asyncio.subprocess.Process) -> None:
        """The helper is gone (or being closed): its children are orphans nobody reports on; end them."""
        if self._control is control:
            self._control = None
        if self._room is not None and not self._room.done():
            self._room.set_exception(HelperUnavailable("the yt-dlp helper stopped"))
        with contextlib.suppress(ValueError):
            asyncio.get_running_loop().remove_writer(control)  # while it has a number to forget it by
        control.close()
        running = sum(not exited.done() for exited in self._exits.values())
        if not self._closing:
            logger.warning("yt-dlp helper %d stopped; %d running jobs are killed, the next job starts a new one",
                           process.pid, running)
        for pid, exited in self._exits.items():
            if not exited.done():
                kill_group(pid)
                exited.set_result(-9)
        self._exits.clear()
        for forked in self._forks.values():
            if not forked.done():
                forked.set_exception(HelperUnavailable("the yt-dlp helper stopped"))
        self._forks.clear()

    async def aclose(self) -> None:
        self._closing = True
        if self._control is not None:
            self._control.shutdown(socket.SHUT_RDWR)  # the helper reads the end, kills its children, exits
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._process is not None and self._process.returncode is None:
            try:
                await asyncio.wait_for(self._process.wait(), 5)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()


def in_use() -> bool:
    """Whether jobs go to the helper here: the setting is on and this is the worker's long-lived loop (a
    command's or a test's ``asyncio.run`` would start a helper for a single job)."""
    return bool(settings.MEDIA_YTDLP_HELPER) and bridge.on_worker_loop()


async def helper() -> Helper:
    """The running loop's helper."""
    return await bridge.shared(SHARED_KEY, Helper.running)


async def start_early() -> None:
    """Start the worker's helper before any job needs it (the first job waited 0.5 s for it); a helper that
    cannot start is only logged here, as the first job tries again and falls back to plain subprocesses."""
    if not in_use():
        return
    try:
        await (await helper()).start()
    except HelperUnavailable as exc:
        logger.warning("%s; the first job tries again", exc)
