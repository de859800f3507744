"""mediastore's error tree. Every error a user or an operator can see is one of these.

Each class has a stable ``code`` (snake_case; part of the API and stored on failed scenes), a default
human message (what happened and what the person can do, in words a person understands), and ``retryable``
(whether trying again later may succeed). The technical reason (a tool's own words, without server paths)
goes in ``detail``, which is stored beside the message for engineers and never replaces it. Library
errors are translated into these at the boundary (``raise StorageError(...) from exc``), so no raw
traceback or stderr dump reaches a user.

The constructor takes the message as its only positional argument: Celery rebuilds a task's exception on
the client side as ``cls(*args)``, and this keeps that working.

=====================  =========  ==============================================================
code                   retryable  meaning
=====================  =========  ==============================================================
internal_error         no         a bug or an unexpected failure on our side
unsupported_url        no         nothing at the URL that yt-dlp can download
no_media               no         the page was read, but it holds no video or audio
not_found              no         the source answered 404 / gone
unavailable            no         private, removed, login or geo blocked
too_large              no         over ``MEDIA_MAX_FILESIZE``
too_long               no         over ``MEDIA_MAX_DURATION``
live_stream            no         live streams are refused
invalid_media          no         downloaded, but no audio or video stream in it
url_not_allowed        no         the source led to a host or address this server does not fetch
                                  from (a redirect, an embed, a manifest entry)
network_error          yes        the connection to the source failed
timeout                yes/no     the source stopped sending (retried), or was too slow overall: the
                                  download cap or the minimum throughput (not retried)
too_many_pixels        no         the video's width x height is over ``MEDIA_MAX_PIXELS``
storage_error          per case   the object store failed (5xx and timeouts retry, 4xx do not)
disk_full              yes        the worker's disk filled up during the job
temp_dir_unwritable    yes        the worker cannot create its temporary folder (``TMPDIR``)
worker_lost            no         the job's worker died on every allowed attempt (set by the
                                  lifecycle, not raised: a dead worker raises nothing)
worker_shutdown        yes        the worker shut down mid-job; the job is handed back, never
                                  shown as a failure
=====================  =========  ==============================================================
"""

from __future__ import annotations

from typing import ClassVar

# Outcomes that come from the source itself: running the same URL again under the same settings fails the
# same way, so operators' bulk re-queues skip them unless asked (``requeue_failed --include-permanent``).
PERMANENT_CODES = frozenset({"unsupported_url", "no_media", "not_found", "unavailable", "too_large", "too_long",
                             "live_stream", "invalid_media", "url_not_allowed", "too_many_pixels"})


class MediastoreError(Exception):
    code: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "Something went wrong on our side."
    retryable: ClassVar[bool] = False

    def __init__(self, message: str | None = None, *, detail: str = "") -> None:
        self.message = message or self.default_message
        self.detail = detail
        super().__init__(self.message)


class InternalError(MediastoreError):
    default_message = "Something went wrong on our side. Try again later; if it keeps failing, tell an operator."


class UnsupportedUrlError(MediastoreError):
    code = "unsupported_url"
    default_message = ("There is nothing we know how to download at this address. Check that it links to a post "
                       "or a video.")


class NotFoundError(MediastoreError):
    code = "not_found"
    default_message = "The server answered 404: the post or video may have been deleted, or the link is mistyped."


class UnavailableError(MediastoreError):
    code = "unavailable"
    default_message = "The media is private, removed, or not available to this server (a login or a region block)."


class TooLargeError(MediastoreError):
    code = "too_large"
    default_message = "The media is larger than this server accepts."


class TooLongError(MediastoreError):
    code = "too_long"
    default_message = "The media is longer than this server accepts."


class LiveStreamError(MediastoreError):
    code = "live_stream"
    default_message = "Live streams cannot be stored; try again when the stream has ended."


class NoMediaError(MediastoreError):
    code = "no_media"
    default_message = "The page has no video or audio we can download."


class InvalidMediaError(MediastoreError):
    code = "invalid_media"
    default_message = "The download is not audio or video this server can read."


class UrlNotAllowedError(MediastoreError):
    code = "url_not_allowed"
    default_message = "The source led to an address this server does not fetch from."


class NetworkError(MediastoreError):
    code = "network_error"
    default_message = "We could not connect to the source; it will be tried again."
    retryable = True


class DownloadTimeoutError(MediastoreError):
    code = "timeout"
    default_message = "The source stopped sending data; it will be tried again."
    retryable = True


class SlowSourceError(DownloadTimeoutError):
    """The download hit its overall time cap, or the source sent too little for too long: another attempt
    would hold a worker slot just as long, so it is not retried."""

    default_message = "The source was too slow, so the download was stopped."
    retryable = False


class TooManyPixelsError(MediastoreError):
    code = "too_many_pixels"
    default_message = "The video's picture is larger than this server accepts."


class StorageError(MediastoreError):
    code = "storage_error"
    default_message = "The media could not be stored. An operator can see why in the details."

    def __init__(self, message: str | None = None, retryable: bool = False, *, detail: str = "") -> None:
        super().__init__(message, detail=detail)
        self.retryable = retryable  # type: ignore[misc]  # per instance: 5xx yes, 4xx no


class DiskFullError(MediastoreError):
    code = "disk_full"
    default_message = "The worker's disk is full; the job will be tried again later."
    retryable = True


class TempDirError(MediastoreError):
    code = "temp_dir_unwritable"
    default_message = "The worker cannot create its temporary folder; an operator must check TMPDIR."
    retryable = True


class WorkerShutdownError(MediastoreError):
    code = "worker_shutdown"
    default_message = "The worker shut down while processing; the job was handed back to the queue."
    retryable = True


class RetryLater(Exception):
    """A transient failure with attempts left: the task should run again after ``countdown`` seconds.

    Without a countdown the task's own retry count sets an exponential backoff and its ``max_retries``
    caps the attempts (the download task counts attempts on the scene instead).
    """

    def __init__(self, error: MediastoreError, countdown: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.countdown = countdown


def _codes() -> list[str]:
    found, todo = {"internal_error", "worker_lost"}, list(MediastoreError.__subclasses__())
    while todo:
        cls = todo.pop()
        found.add(cls.code)
        todo.extend(cls.__subclasses__())
    return sorted(found)


# Every code a failed scene can carry (the API's enum of ``error_code``); "" while there is no error.
ERROR_CODES = tuple(_codes())
ERROR_CODE_CHOICES = [(code, code) for code in ("", *ERROR_CODES)]
