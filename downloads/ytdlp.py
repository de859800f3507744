"""yt-dlp as an async subprocess: the argument list, progress parsing, our own limits, and the verdict.

Facts measured with yt-dlp 2026.10.26 that shape this module:

- Exit code 0 is not success: a file over ``--max-filesize`` is skipped with exit 0 and no result. So
  success is ours to decide: exit 0, exactly one result line, and the file on disk.
- ``--max-filesize`` is not enforced when the server sends no Content-Length, nor for HLS: the size limit
  is enforced here too, from progress lines and from the job folder's size, by killing the process group.
- Without ``--`` a "URL" such as ``--exec=touch /tmp/x`` ran a command. Every URL goes after ``--``;
  ``--ignore-config``, no ``--exec``, no plugins, no external downloaders.
- ``--print`` puts yt-dlp in quiet mode: our machine-readable lines on stdout, warnings/errors on stderr.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import re
import stat
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from downloads import egress, ytdlp_guard, ytdlp_helper
from downloads.exceptions import (
    DiskFullError,
    DownloadTimeoutError,
    InternalError,
    InvalidMediaError,
    LiveStreamError,
    MediastoreError,
    NetworkError,
    NoMediaError,
    NotFoundError,
    SlowSourceError,
    TooLargeError,
    TooLongError,
    UnavailableError,
    UnsupportedUrlError,
    UrlNotAllowedError,
)
from downloads.subprocesses import kill_group

logger = logging.getLogger(__name__)

PROGRESS_MARK = "[mediastore-progress]"
INFO_MARK = "[mediastore-info]"
RESULT_MARK = "[mediastore-result]"
POSTPROCESS_MARK = "[mediastore-postprocess]"
OUTPUT_TEMPLATE = "media.%(ext)s"
STDERR_TAIL_LINES = 20
LINE_LIMIT = 8 * 1024 * 1024  # yt-dlp's lines carry titles and JSON; asyncio's default 64 KiB was fatal
_WATCH_INTERVAL = 0.5
# Control characters, and the invisible ones that reorder or hide text (bidi overrides and isolates,
# zero-width characters, line/paragraph separators, the byte-order mark): a title cannot spoof its neighbours.
_CONTROL_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
_REPO_ROOT = str(Path(__file__).resolve().parents[1])


@dataclass(frozen=True)
class Progress:
    downloaded_bytes: int | None
    total_bytes: int | None
    percent: float | None
    stage: str  # "downloading" or "postprocessing"
    # yt-dlp's total is exact for one HTTP file with a Content-Length; for HLS and DASH it is an estimate
    # (bandwidth x duration), which may be far from the bytes that really come.
    total_is_estimate: bool = False


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    title: str
    info: dict[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[Progress], Awaitable[None]]


_INTERPRETER = (sys.executable, "-s", "-c")


def build_argv(url: str, *, job_dir: Path, max_filesize: int) -> list[str]:
    """The whole command line; ``url`` is untrusted and only ever follows ``--``."""
    progress = (f"download:{PROGRESS_MARK} %(progress.status)s %(progress.downloaded_bytes)s "
                "%(progress.total_bytes)s %(progress.total_bytes_estimate)s")
    # yt-dlp runs inside ytdlp_guard, which applies the address policy to every connection it opens.
    return [
        *_INTERPRETER, ytdlp_guard.bootstrap(_REPO_ROOT),
        "--ignore-config", "--no-plugin-dirs", "--no-cache-dir", "--no-playlist", "-I", "1",
        # --no-quiet undoes the quiet mode --print implies: the line that says a file was skipped for
        # --max-filesize (exit 0, no result) is only printed then.
        "--color", "never", "--newline", "--no-simulate", "--no-quiet", "--no-mtime",
        "--progress", "--progress-template", progress,
        "--progress-template", f"postprocess:{POSTPROCESS_MARK} %(progress.postprocessor)s %(progress.status)s",
        "--print", f"pre_process:{INFO_MARK} %(.{{id,title,duration,is_live,live_status,extractor}})j",
        "--print", f"after_move:{RESULT_MARK} %(.{{filepath,title,fulltitle,duration,ext}})j",
        "-P", str(job_dir), "-o", OUTPUT_TEMPLATE, "--restrict-filenames",
        "--max-filesize", str(max_filesize),
        "--socket-timeout", f"{settings.MEDIA_SOCKET_TIMEOUT:g}",
        "--retries", "2", "--fragment-retries", "2", "--extractor-retries", "1",
        "--use-extractors", ",".join(settings.MEDIA_YTDLP_EXTRACTORS),
        # Python's own downloaders only: ffmpeg as a downloader would open URLs outside the guard.
        "--downloader", "native", "--hls-prefer-native",
        "-f", "bv*+ba/b", "--merge-output-format", "mp4",
        "--ffmpeg-location", settings.FFMPEG_PATH,
        *js_runtime_options(),
        "--", url,
    ]


def js_runtime_version() -> str | None:
    """``deno 2.9.8`` (the runtime's name and version, as it answers), or None when there is none that runs."""
    import subprocess

    runtime = settings.MEDIA_JS_RUNTIME
    if not runtime or runtime == "none":
        return None
    try:
        done = subprocess.run([runtime, "--version"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    first = (done.stdout.strip().splitlines() or [""])[0]
    return f"{first} at {runtime}" if first else None


def js_runtime_options() -> list[str]:
    """The JavaScript runtime, named explicitly: yt-dlp's own search would take whatever is on PATH."""
    runtime = settings.MEDIA_JS_RUNTIME
    if not runtime or runtime == "none":
        return ["--no-js-runtimes"]
    name = Path(runtime).name.split(".")[0]
    return ["--no-js-runtimes", "--js-runtimes", f"{name}:{runtime}"]


def _number(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None  # "NA" for unknown fields


def parse_progress(line: str) -> Progress | None:
    if line.startswith(PROGRESS_MARK):
        parts = line[len(PROGRESS_MARK):].split()
        if len(parts) < 4:
            return None
        downloaded, exact = _number(parts[1]), _number(parts[2])
        total = exact or _number(parts[3])
        percent = min(100.0, downloaded * 100 / total) if downloaded is not None and total else None
        return Progress(downloaded_bytes=downloaded, total_bytes=total, percent=percent, stage="downloading",
                        total_is_estimate=not exact)
    if line.startswith(POSTPROCESS_MARK):
        return Progress(downloaded_bytes=None, total_bytes=None, percent=None, stage="postprocessing")
    return None


def clean(text: str, limit: int = 500) -> str:
    """Untrusted text (yt-dlp output, titles) made safe to store and show: no control characters, bounded."""
    text = _CONTROL_CHARS.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


_ERROR_PATTERNS: list[tuple[re.Pattern[str], type[MediastoreError]]] = [
    (re.compile(r"No space left on device|Errno 28\b", re.I), DiskFullError),
    # yt-dlp's own refusal of file: URLs in a manifest or a page: a source pointing at the worker's files.
    # (Its advice, an option that turns the refusal off, is not for users: the default message is used.)
    (re.compile(r"file:// URLs are disabled|unsupported url scheme", re.I), UrlNotAllowedError),
    (re.compile(r"HTTP Error 404|404: Not Found|HTTP Error 410", re.I), NotFoundError),
    (re.compile(r"Unsupported URL", re.I), UnsupportedUrlError),
    (re.compile(r"No media found|No video formats found|no suitable formats|Requested format is not available",
                re.I), NoMediaError),
    (re.compile(r"larger than max-filesize|File is larger than|" + ytdlp_guard.MANIFEST_TOO_LARGE, re.I),
     TooLargeError),
    (re.compile(r"live event|is live|is a live stream|premieres in", re.I), LiveStreamError),
    (re.compile(r"private video|video unavailable|has been removed|sign in|log ?in|members[- ]only|"
                r"not available in your country|geo.?restrict|HTTP Error 403|age[- ]restricted", re.I),
     UnavailableError),
    (re.compile(r"timed out|timeout", re.I), DownloadTimeoutError),
    (re.compile(r"connection (refused|reset|aborted)|name or service not known|temporary failure in name "
                r"resolution|network is unreachable|no route to host|ssl|remote end closed|incomplete read|"
                r"HTTP Error 5\d\d", re.I), NetworkError),
]


def _without_paths(text: str) -> str:
    """Our folders are not the user's business: a path under the temp folder becomes its file name."""
    return re.sub(re.escape(tempfile.gettempdir().rstrip("/")) + r"""/[^\s'"]*""",
                  lambda match: Path(match.group(0)).name, text)


def classify_error(stderr_lines: list[str]) -> MediastoreError:
    """yt-dlp's ERROR lines → our error: its human message for the person, yt-dlp's reason (cleaned, without
    our paths) as the detail for engineers."""
    errors = [line for line in stderr_lines if line.startswith("ERROR:")]
    reason = _without_paths(clean((errors[-1] if errors else (stderr_lines[-1] if stderr_lines else ""))
                                  .removeprefix("ERROR:").strip()))
    for pattern, error_type in _ERROR_PATTERNS:
        if pattern.search(reason):
            return error_type(detail=reason)
    return InternalError("The download failed for a reason we did not recognise. Try again later; if it keeps "
                         "failing, tell an operator.", detail=reason or "yt-dlp failed without saying why")


def _media_file(path: Path, *, job_dir: Path) -> Path:
    """The result, when it is a regular file with a media extension inside the job folder; refused before any
    tool reads it otherwise (a symlink or a playlist would make ffprobe read what it points to)."""
    try:
        inside = path.parent.resolve(strict=True) == job_dir.resolve(strict=True)
        regular = stat.S_ISREG(path.lstat().st_mode)
    except OSError as exc:
        raise InternalError("yt-dlp reported a file that is not there.") from exc
    extension = path.suffix.lstrip(".").lower()
    if not inside or not regular or extension not in egress.MEDIA_EXTENSIONS:
        logger.warning("refused a download result: %s (inside the job folder: %s, regular file: %s)",
                       path.name, inside, regular)
        raise InvalidMediaError(f"The source gave a file that is not audio or video (.{clean(extension, 20)}).")
    return path


class _Run:
    """State of one yt-dlp run, filled from its output."""

    def __init__(self, *, max_filesize: int, on_progress: ProgressCallback | None) -> None:
        self.max_filesize = max_filesize
        self.on_progress = on_progress
        self.results: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}
        self.stderr: list[str] = []
        self.refused: list[str] = []  # what ytdlp_guard refused, in its words
        self.not_media: list[str] = []
        self.verdict: MediastoreError | None = None  # a limit we enforced, which decides the outcome
        self.received = 0  # the most bytes yt-dlp said it had, for the throughput check
        self.postprocessing = False  # all received: merging and fixing up are local work, not throughput

    async def read_stdout(self, stream: asyncio.StreamReader, kill: Callable[[MediastoreError], None]) -> None:
        async for raw in _lines(stream):
            line = raw.decode("utf-8", "replace").strip().replace("\r", "")
            if "larger than max-filesize" in line:
                self.verdict = self.verdict or TooLargeError(
                    f"The media is larger than {self.max_filesize} bytes, the most this server accepts.")
            elif line.startswith(RESULT_MARK):
                self.results.append(json.loads(line[len(RESULT_MARK):]))
            elif line.startswith(INFO_MARK):
                self.info = json.loads(line[len(INFO_MARK):])
                self._check_info(kill)
            elif (progress := parse_progress(line)) is not None:
                # The limit holds on real bytes: an exact total, or what has really arrived.
                total = None if progress.total_is_estimate else progress.total_bytes
                if total is not None and total > self.max_filesize:
                    kill(TooLargeError(f"The media is {total} bytes; this server accepts at most "
                                       f"{self.max_filesize}."))
                elif (progress.downloaded_bytes or 0) > self.max_filesize:
                    kill(TooLargeError(f"The download passed {self.max_filesize} bytes, the most this server "
                                       "accepts."))
                self.received = max(self.received, progress.downloaded_bytes or 0)
                self.postprocessing = self.postprocessing or progress.stage == "postprocessing"
                if self.on_progress is not None:
                    await self.on_progress(progress)

    def _check_info(self, kill: Callable[[MediastoreError], None]) -> None:
        if self.info.get("is_live") or self.info.get("live_status") in {"is_live", "is_upcoming"}:
            kill(LiveStreamError())
        duration = self.info.get("duration")
        if isinstance(duration, int | float) and duration > settings.MEDIA_MAX_DURATION:
            kill(TooLongError(f"The media lasts {duration:.0f} s; this server accepts at most "
                              f"{settings.MEDIA_MAX_DURATION:.0f} s."))

    async def read_stderr(self, stream: asyncio.StreamReader) -> None:
        async for raw in _lines(stream):
            line = clean(raw.decode("utf-8", "replace"), limit=2000)
            if line.startswith(ytdlp_guard.REFUSED_MARK):
                self.refused.append(line[len(ytdlp_guard.REFUSED_MARK):].strip())
            elif line.startswith(ytdlp_guard.NOT_MEDIA_MARK):
                self.not_media.append(line[len(ytdlp_guard.NOT_MEDIA_MARK):].strip())
            elif line:
                self.stderr.append(line)
                del self.stderr[:-STDERR_TAIL_LINES]


def guard_env(policy: egress.Policy | None = None) -> dict[str, str]:
    """The environment yt-dlp runs in: ours, plus the policy (the settings' unless given) and the media tools
    for ytdlp_guard."""
    return {**os.environ, ytdlp_guard.POLICY_ENV: (policy or egress.settings_policy()).to_json(),
            ytdlp_guard.TOOLS_ENV: os.pathsep.join([settings.FFMPEG_PATH, settings.FFPROBE_PATH]),
            ytdlp_guard.MEMORY_ENV: str(settings.MEDIA_CHILD_MEMORY),
            ytdlp_guard.MANIFEST_ENV: str(settings.MEDIA_MAX_MANIFEST)}


async def _lines(stream: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The stream's lines. One longer than the reader's limit (a title of megabytes) is dropped, not fatal."""
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # over LINE_LIMIT: asyncio has discarded it
            logger.warning("yt-dlp wrote a line over %d bytes; skipped", LINE_LIMIT)
            continue
        if not line:
            return
        yield line


def _folder_size(folder: Path) -> int:
    total = 0
    for entry in folder.rglob("*"):
        # yt-dlp deletes fragments and parts while we look: a file gone between listing and stat is 0 bytes.
        with contextlib.suppress(FileNotFoundError):
            if entry.is_file():
                total += entry.stat().st_size
    return total


class _Throughput:
    """Bytes that really arrived over the last ``window`` seconds, against ``minimum`` bytes per second."""

    def __init__(self, *, minimum: int, window: float) -> None:
        self.minimum, self.window = minimum, window
        self.samples: collections.deque[tuple[float, int]] = collections.deque()
        self.high = 0

    def too_slow(self, now: float, seen: int) -> int | None:
        """The bytes of the last window when that is too few, else None. ``seen`` may go down (yt-dlp
        deletes parts after merging): progress is the high-water mark."""
        self.high = max(self.high, seen)
        self.samples.append((now, self.high))
        if not self.minimum or now - self.samples[0][0] < self.window:
            return None
        while len(self.samples) > 1 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()
        got = self.high - self.samples[0][1]
        return got if got < self.minimum * self.window else None


async def download(url: str, *, job_dir: Path, on_progress: ProgressCallback | None = None,
                   policy: egress.Policy | None = None) -> DownloadResult:
    """Download ``url`` into ``job_dir`` under ``policy`` (the settings' unless given); raise one of our errors
    on any failure."""
    max_filesize = settings.MEDIA_MAX_FILESIZE
    run = _Run(max_filesize=max_filesize, on_progress=on_progress)
    argv = build_argv(url, job_dir=job_dir, max_filesize=max_filesize)
    started = time.monotonic()
    process = await _start(argv, env=guard_env(policy))
    # With the line at its exit, a job that hangs shows where: whether yt-dlp ever started.
    logger.info("yt-dlp %d started for %s", process.pid, clean(url, 200))

    def kill(verdict: MediastoreError) -> None:
        if run.verdict is None:
            run.verdict = verdict
        kill_group(process.pid)  # yt-dlp and the ffmpeg it started

    throughput = _Throughput(minimum=settings.MEDIA_MIN_THROUGHPUT, window=settings.MEDIA_THROUGHPUT_WINDOW)

    async def watch_folder() -> None:
        # --max-filesize is blind to chunked responses and HLS: measure what actually lands on disk. The
        # same measure catches a source that drips bytes to hold the worker's slot.
        while True:
            await asyncio.sleep(_WATCH_INTERVAL)
            try:
                size = await asyncio.to_thread(_folder_size, job_dir)
            except OSError:
                # Never the end of the watch (and with it of the size limit): try again next round.
                logger.warning("size watch of %s failed; trying again", job_dir.name, exc_info=True)
                continue
            if size > max_filesize:
                kill(TooLargeError(f"The download passed {max_filesize} bytes, the most this server accepts."))
                return
            got = None if run.postprocessing else throughput.too_slow(time.monotonic(), max(size, run.received))
            if got is not None:
                kill(SlowSourceError(f"The source sent {got} bytes in {throughput.window:g} s; this server needs "
                                     f"at least {throughput.minimum} bytes per second."))
                return

    assert process.stdout is not None
    assert process.stderr is not None
    watcher = asyncio.create_task(watch_folder())
    try:
        async with asyncio.timeout(settings.MEDIA_DOWNLOAD_TIMEOUT):
            await asyncio.gather(run.read_stdout(process.stdout, kill), run.read_stderr(process.stderr))
            returncode = await process.wait()
    except TimeoutError:
        kill(SlowSourceError(f"The download took longer than {settings.MEDIA_DOWNLOAD_TIMEOUT:g} s."))
        returncode = await process.wait()
    finally:
        watcher.cancel()
        if process.returncode is None:  # cancelled (soft or hard limit): leave nothing running
            kill(DownloadTimeoutError())
            await asyncio.shield(process.wait())
        if isinstance(process, ytdlp_helper.ForkedProcess):
            process.close()
    logger.info("yt-dlp exited %s after %.1fs for %s", returncode, time.monotonic() - started, clean(url, 200))
    return _verdict(run, returncode, url, job_dir=job_dir)


async def _start(argv: list[str], *, env: dict[str, str]) -> asyncio.subprocess.Process | ytdlp_helper.ForkedProcess:
    """yt-dlp as a child of the worker's helper, which has imported it already (MEDIA_YTDLP_HELPER, in the
    worker), or as a plain subprocess; the same program and arguments either way."""
    if ytdlp_helper.in_use():
        try:
            helper = await ytdlp_helper.helper()
            return await helper.spawn(argv[len(_INTERPRETER) + 1:], env=env)
        except ytdlp_helper.HelperUnavailable as exc:
            logger.warning("%s; this job starts yt-dlp as a plain subprocess", exc)
    try:
        return await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True, env=env, limit=LINE_LIMIT,
        )
    except OSError as exc:
        raise InternalError(f"could not start yt-dlp: {exc.strerror}") from exc


def _verdict(run: _Run, returncode: int, url: str, *, job_dir: Path) -> DownloadResult:
    if run.verdict is not None:
        raise run.verdict
    if returncode != 0 and run.not_media:
        logger.warning("yt-dlp's ffmpeg refused a file that is not media for %s: %s", clean(url, 200),
                       run.not_media[0])
        raise InvalidMediaError("The source gave a file that is not audio or video.")
    if returncode != 0 and run.refused:
        logger.warning("yt-dlp refused by the address policy for %s: %s", clean(url, 200), run.refused[0])
        raise UrlNotAllowedError(f"The source led to {run.refused[0]}; this server does not fetch from there.")
    if returncode != 0:
        error = classify_error(run.stderr)
        logger.warning("yt-dlp failed (%s) for %s; stderr tail: %s", error.code, clean(url, 200),
                       " | ".join(run.stderr[-5:]))
        raise error
    if len(run.results) != 1:
        if any("max-filesize" in line or "larger than" in line for line in run.stderr):
            raise TooLargeError()
        raise InternalError(f"yt-dlp finished but reported {len(run.results)} files instead of one.")
    result = run.results[0]
    path = _media_file(Path(str(result.get("filepath", ""))), job_dir=job_dir)
    # Some extractors shorten "title" (a trailing "..."); "fulltitle" is whole.
    title = str(result.get("fulltitle") or result.get("title") or "")
    return DownloadResult(path=path, title=clean(better_title(title, url), 500), info=run.info)


# File names that say nothing about what a manifest holds: HLS's index.m3u8, DASH's manifest.mpd, …
_GENERIC_NAMES = frozenset({"index", "master", "playlist", "manifest", "main", "stream", "streams", "chunklist",
                            "prog_index", "media", "video", "videos", "hls", "dash", "live", "output", "out"})


def better_title(title: str, url: str) -> str:
    """yt-dlp's generic extractor names an untitled source after its file (``index``); then the last path
    segment that means something (``/shows/episode-12/hls/index.m3u8`` → ``episode-12``), or the host."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    segments = [unquote(segment) for segment in parts.path.split("/") if segment]
    stem = Path(segments[-1]).stem if segments else ""
    if not title or title != stem or stem.lower() not in _GENERIC_NAMES:
        return title
    for segment in reversed(segments[:-1]):
        if Path(segment).stem.lower() not in _GENERIC_NAMES:
            return segment
    return parts.hostname or title
