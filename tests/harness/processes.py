"""Start and stop the real services tests talk to: free loopback ports, owned process groups."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], *, timeout: float, interval: float = 0.05, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise TimeoutError(f"gave up after {timeout:.1f}s waiting for {what}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class ServiceProcess:
    """A child process in its own session, its output in a log file; ``stop`` ends the whole group."""

    def __init__(self, argv: Sequence[str], *, log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=cwd, start_new_session=True,
            )
        except BaseException:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole group at once: a crash, not a shutdown. Descendants that lead sessions of their own
        (the worker's yt-dlp and ffmpeg) are outside the group and go by name."""
        descendants = descendants_of(self.process.pid)
        self._signal_group(signal.SIGKILL)
        for pid in descendants:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._log.close()

    def stop(self, *, grace: float = 15.0) -> None:
        if self.alive():
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)
        # Whatever the main process left behind in its group goes too.
        self._signal_group(signal.SIGKILL)
        if self.alive():
            self.process.wait(timeout=10)
        self._log.close()

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    state: str  # "Z" for a zombie
    ppid: int
    pgrp: int
    cmdline: str


def process_table() -> list[ProcessInfo]:
    """Every process /proc shows now (those that vanish while it is read are skipped)."""
    table = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        table.append(ProcessInfo(pid=int(entry.name), state=fields[0], ppid=int(fields[1]), pgrp=int(fields[2]),
                                 cmdline=cmdline))
    return table


def open_fds(pid: int) -> list[str]:
    """What each of ``pid``'s open fds refers to (``pipe:[…]``, ``socket:[…]``, ``anon_inode:[pidfd]``, a path, …);
    ``OSError`` when ``pid`` is gone (an fd closed while they are read is skipped)."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            found.append(os.readlink(fd))
    return found


def descendants_of(pid: int, *, table: list[ProcessInfo] | None = None) -> list[int]:
    """The pids of every process below ``pid`` (children, theirs, …), whatever session or group they are in;
    from ``table`` when given (one snapshot for several questions), else from /proc now."""
    children: dict[int, list[int]] = {}
    for info in process_table() if table is None else table:
        children.setdefault(info.ppid, []).append(info.pid)
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), ()):
            found.append(child)
            queue.append(child)
    return found


def _live_helpers(table: list[ProcessInfo], parent: int) -> list[int]:
    return [p.pid for p in table if p.ppid == parent and p.state != "Z" and "ytdlp_forkserver" in p.cmdline]


def ytdlp_helpers(parent: int, *, table: list[ProcessInfo] | None = None) -> list[int]:
    """The live yt-dlp helper processes that ``parent`` (a worker, or a test's own process) started; from
    ``table`` when given, else from /proc now."""
    return _live_helpers(process_table() if table is None else table, parent)


def ytdlp_jobs(worker_pid: int) -> dict[int, str]:
    """The live yt-dlp job processes of a worker, pid → command line, on either path: its own subprocesses
    (``ytdlp_guard`` in the command line) or the children its yt-dlp helper forked (which carry the helper's)."""
    table = [p for p in process_table() if p.state != "Z"]
    helpers = set(_live_helpers(table, worker_pid))
    return {p.pid: p.cmdline for p in table
            if (p.ppid == worker_pid and "ytdlp_guard" in p.cmdline) or p.ppid in helpers}


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A loopback port that takes connections and never answers (a server that hangs); closed after."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]
