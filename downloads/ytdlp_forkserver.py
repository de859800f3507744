"""The yt-dlp helper process: yt-dlp (and FFmpeg's libraries) imported once, one forked child per job.

Importing yt-dlp and its extractors is most of a small job's CPU (``yt-dlp --version`` alone costs 0.47 s).
The worker cannot fork itself safely (gevent, threads), so it starts this single-threaded process once
(``downloads.ytdlp_helper``); it imports yt-dlp and forks a child per job, which runs exactly what a plain
subprocess would (``ytdlp_guard.main`` with today's argument list), so every job is still its own process:

- the child starts its own session, so the worker kills its whole process group as before (time limits,
  cancel, the size limit), and the ffmpeg it starts is in that group;
- the worker's pipes become the child's stdin/stdout/stderr (passed over the control socket with
  SCM_RIGHTS), so progress lines and errors arrive as before;
- the guard (address policy, process and manifest limits, memory limit) is installed in the child, per job,
  with the job's own policy; nothing of it is installed here, so no job's policy leaks into another's.

It also forks the job's media child (``downloads.media_child``: the probe and the thumbnail with PyAV),
which would otherwise be two ffmpeg processes that each spend most of their CPU linking FFmpeg's libraries.

Protocol, one JSON object per ``SOCK_SEQPACKET`` message on the control socket: this process says
``{"ready": pid}`` once it has imported what jobs need and takes them; the worker sends
``{"job": n, "program": "ytdlp" or "media", "argv": [...], "env": {...}}`` with three file descriptors
(stdin, stdout, stderr); this process answers ``{"job": n, "pid": p}`` once forked (or
``{"job": n, "error": "..."}``), and ``{"pid": p, "code": c}`` when the child has exited (``c`` as
``Popen.returncode``: negative for a signal). When the worker goes away (the socket closes), every child
still running is killed with its group: nobody would read it any more.

Standard library, yt-dlp and PyAV only, like the guard: this runs without Django.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import selectors
import signal
import socket
import sys
import traceback
from typing import Any

MAX_MESSAGE = 1 << 20


def _warm() -> None:
    """Import what every job needs, so children start with it in memory (shared copy-on-write)."""
    import yt_dlp
    import yt_dlp.downloader
    import yt_dlp.extractor
    import yt_dlp.networking
    import yt_dlp.postprocessor
    from yt_dlp.extractor import gen_extractor_classes

    import downloads.ytdlp_guard  # noqa: F401 - imported for the children

    with contextlib.suppress(ImportError):  # without PyAV a media job fails in its child, and says why
        from downloads import media_child

        media_child.warm()

    gen_extractor_classes()  # the lazy extractor classes' module
    with contextlib.suppress(Exception):
        yt_dlp.YoutubeDL({"quiet": True, "no_warnings": True}).close()  # networking handlers, options parsing
    with contextlib.suppress(Exception):
        # The date formats every job tries on a Last-Modified header: each is a regex that strptime builds
        # on first use (about 35 ms of a small job's CPU when every child built them again).
        from yt_dlp.utils import unified_strdate, unified_timestamp

        unified_timestamp("Mon, 30 Nov 2026 23:12:41 GMT")
        unified_strdate("Mon, 30 Nov 2026 23:12:41 GMT")
    gc.freeze()  # what is warm now stays out of the collector's way, so children do not copy its pages


_warmed_extractors: set[str] = set()


def _warm_extractors(argv: list[str]) -> None:
    """Import the real classes of the extractors a job may use (``--use-extractors``), once per list: the
    lazy ones import their module in every child otherwise (the generic one pulls in YouTube's, about 50 ms)."""
    names = next((argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--use-extractors"), None)
    if names is None or names in _warmed_extractors:
        return
    _warmed_extractors.add(names)
    with contextlib.suppress(Exception):  # a job whose extractors cannot load says so itself, in its child
        import yt_dlp

        with yt_dlp.YoutubeDL({"quiet": True, "no_warnings": True,
                               "allowed_extractors": names.split(",")}) as ydl:
            for key in list(ydl._ies):
                ydl.get_info_extractor(key)
    gc.freeze()


PROGRAMS = ("ytdlp", "media")


def _child(program: str, argv: list[str], env: dict[str, str], fds: list[int]) -> None:
    """In the forked child: become the job's process and never return."""
    code = 1
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # as a plain subprocess of the worker has it
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the control socket and wake-up pipe are not the job's
        # Each line as it is written, as the progress and result lines must reach the worker while the job
        # runs; a plain subprocess gets this from PYTHONUNBUFFERED or its own flushes.
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        os.environ.clear()
        os.environ.update(env)
        if program == "media":
            from downloads.media_child import main
        else:
            sys.argv = ["yt-dlp", *argv]
            from downloads.ytdlp_guard import main
        code = main(argv)
    except BaseException:  # the job's own failure, reported where a plain subprocess would report it
        with contextlib.suppress(Exception):
            os.write(2, traceback.format_exc().encode("utf-8", "replace"))
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)


def _send(control: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the worker is gone: the loop sees the closed socket next
        control.send(json.dumps(message).encode())


def serve(control_fd: int) -> int:
    control = socket.socket(fileno=control_fd)
    control.setblocking(True)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    os.set_blocking(wake_read, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so SIGCHLD is delivered and wakes the loop
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when this ends (the socket closing)
    children: set[int] = set()
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    _send(control, {"ready": os.getpid()})
    try:
        while True:
            for key, _ in selector.select():
                if key.fileobj is control:
                    if not _take_request(control, children):
                        return 0
                else:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_read, 4096)
            _reap(control, children)
    finally:
        for pid in children:  # the worker is gone: end what it can no longer watch
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)


def _take_request(control: socket.socket, children: set[int]) -> bool:
    try:
        data, fds, _flags, _address = socket.recv_fds(control, MAX_MESSAGE, 3)
    except InterruptedError:
        return True
    if not data:
        for fd in fds:
            os.close(fd)
        return False
    job = None
    try:
        request = json.loads(data)
        job = request["job"]
        if len(fds) != 3:
            raise ValueError(f"expected 3 file descriptors, got {len(fds)}")
        program = str(request.get("program", "ytdlp"))
        if program not in PROGRAMS:
            raise ValueError(f"no such program: {program}")
        argv = [str(a) for a in request["argv"]]
        if program == "ytdlp":
            _warm_extractors(argv)
        pid = os.fork()
        if pid == 0:
            _child(program, argv, {str(k): str(v) for k, v in request["env"].items()}, fds)
        children.add(pid)
        _send(control, {"job": job, "pid": pid})
    except Exception as exc:
        _send(control, {"job": job, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        for fd in fds:  # the child has its copies; ours would keep the worker's pipes from ever ending
            os.close(fd)
    return True


def _reap(control: socket.socket, children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        _send(control, {"pid": pid, "code": os.waitstatus_to_exitcode(status)})


def bootstrap(root: str, control_fd: int, *, extractors: str = "") -> str:
    """The ``-c`` program of the helper, with the repository importable whatever the working folder;
    ``extractors``: the jobs' ``--use-extractors``, imported before the first job asks for them."""
    chosen = ["--use-extractors", extractors] if extractors else []
    return (f"import sys; sys.path.insert(0, {root!r}); from downloads import ytdlp_forkserver as s; "
            f"s._warm(); s._warm_extractors({chosen!r}); sys.exit(s.serve({control_fd}))")
