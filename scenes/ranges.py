"""Byte ranges for files the app serves itself (local media): seeking in a ``<video>`` needs them, and Safari on
iOS generally plays no video without them. One range per request (a browser asks for one); several ranges,
a malformed header or an ``If-Range`` that no longer matches get the whole file, as RFC 9110 allows."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from django.http import FileResponse, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.utils.http import http_date, parse_http_date_safe

CHUNK = 256 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _etag(stat: os.stat_result) -> str:
    return f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'


def _wanted(request: HttpRequest, stat: os.stat_result) -> tuple[int, int] | str | None:
    """(first, last) byte to send, None for the whole file, or "unsatisfiable"."""
    header = request.headers.get("Range", "").strip().replace(" ", "")
    match = _RANGE.match(header)
    if not match or (not match.group(1) and not match.group(2)):
        return None
    if_range = request.headers.get("If-Range")
    if if_range:
        modified = parse_http_date_safe(if_range)
        fresh = if_range == _etag(stat) or (modified is not None and modified >= int(stat.st_mtime))
        if not fresh:
            return None
    size = stat.st_size
    first_text, last_text = match.groups()
    if not first_text:  # "-N": the last N bytes
        length = int(last_text)
        if length == 0:
            return "unsatisfiable"
        return max(0, size - length), size - 1
    first = int(first_text)
    last = min(int(last_text), size - 1) if last_text else size - 1
    if first >= size or last < first:
        return "unsatisfiable"
    return first, last


def _slice(path: Path, first: int, last: int) -> Iterator[bytes]:
    with path.open("rb") as source:
        source.seek(first)
        remaining = last - first + 1
        while remaining > 0:
            chunk = source.read(min(CHUNK, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk


def file_response(request: HttpRequest, path: Path, *, content_type: str) -> HttpResponseBase:
    """The file, or the one range of it the request asks for (206), with the validators that make ranges
    safe to combine (``ETag``, ``Last-Modified``)."""
    stat = path.stat()
    wanted = _wanted(request, stat)
    response: HttpResponseBase
    if wanted == "unsatisfiable":
        response = HttpResponse(status=416)
        response["Content-Range"] = f"bytes */{stat.st_size}"
    elif isinstance(wanted, tuple):
        first, last = wanted
        response = StreamingHttpResponse(_slice(path, first, last), status=206, content_type=content_type)
        response["Content-Range"] = f"bytes {first}-{last}/{stat.st_size}"
        response["Content-Length"] = str(last - first + 1)
    else:
        response = FileResponse(path.open("rb"), content_type=content_type)
    response["Accept-Ranges"] = "bytes"
    response["ETag"] = _etag(stat)
    response["Last-Modified"] = http_date(stat.st_mtime)
    return response
