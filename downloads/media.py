"""What a downloaded file is (ffprobe) and a picture of it (ffmpeg): two async subprocesses, or one child of
the worker's yt-dlp helper that does both with FFmpeg's libraries (``downloads.media_child``)."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from downloads import ytdlp_helper
from downloads.egress import FFMPEG_INPUT_OPTIONS, MEDIA_DEMUXERS
from downloads.exceptions import InternalError, InvalidMediaError, TooManyPixelsError
from downloads.media_child import thumbnail_time
from downloads.subprocesses import captured, memory_limited, run_captured

logger = logging.getLogger(__name__)

PROBE_TIMEOUT = 60
THUMBNAIL_TIMEOUT = 60
THUMBNAIL_WIDTH = 640
THUMBNAIL_NAME = "thumb.jpg"  # in the job's folder
CONTENT_TYPES = {
    "mp4": "video/mp4", "m4v": "video/mp4", "mov": "video/quicktime", "webm": "video/webm",
    "mkv": "video/x-matroska", "m4a": "audio/mp4", "mp3": "audio/mpeg", "ogg": "audio/ogg",
    "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac", "wav": "audio/wav",
}


@dataclass(frozen=True)
class MediaInfo:
    duration: float | None
    width: int | None
    height: int | None
    size_bytes: int
    video_codec: str
    audio_codec: str
    content_type: str

    @property
    def has_video(self) -> bool:
        return bool(self.video_codec)


def _parse_probe(data: dict[str, Any], path: Path, size_bytes: int) -> MediaInfo:
    streams = data.get("streams") or []
    video = next((s for s in streams if s.get("codec_type") == "video"
                  and not (s.get("disposition") or {}).get("attached_pic")), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if video is None and audio is None:
        raise InvalidMediaError()
    duration_text = (data.get("format") or {}).get("duration")
    try:
        duration = float(duration_text) if duration_text is not None else None
    except ValueError:
        duration = None
    extension = path.suffix.lstrip(".").lower()
    content_type = CONTENT_TYPES.get(extension, "application/octet-stream")
    if video is None and content_type == "video/mp4":
        content_type = "audio/mp4"
    return MediaInfo(
        duration=duration,
        width=int(video["width"]) if video and video.get("width") else None,
        height=int(video["height"]) if video and video.get("height") else None,
        size_bytes=size_bytes,
        video_codec=str(video.get("codec_name", "")) if video else "",
        audio_codec=str(audio.get("codec_name", "")) if audio else "",
        content_type=content_type,
    )


async def probe(path: Path) -> MediaInfo:
    """ffprobe ``path``; ``InvalidMediaError`` when it holds neither audio nor video."""
    if not path.is_absolute():  # job paths come from mkdtemp; absolute, so never mistaken for an option
        raise InternalError(f"refusing to probe a relative path: {path}")
    # file: and the demuxer allow-list: a "video" that is really a playlist must not make ffprobe open the
    # files or URLs it lists, and random bytes must not pass as some raw audio codec.
    code, stdout, stderr = await run_captured(
        memory_limited([settings.FFPROBE_PATH, *FFMPEG_INPUT_OPTIONS, "-v", "error", "-print_format", "json",
                        "-show_format", "-show_streams", f"file:{path}"]),
        limit=PROBE_TIMEOUT,
    )
    if code != 0:
        reason = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        # ffprobe names the file by its full path: the detail gets the file's name only.
        said = reason[0][:300].replace(str(path), path.name)
        logger.warning("ffprobe could not read %s: %s", path.name, said)
        raise InvalidMediaError(detail=f"ffprobe: {said}")
    try:
        data = json.loads(stdout)
    except ValueError as exc:
        raise InternalError("ffprobe answered something that is not JSON") from exc
    return _described(data, path)


def _described(data: dict[str, Any], path: Path) -> MediaInfo:
    """The probe's answer (ffprobe's JSON, from either path) read, within the pixel limit."""
    info = _parse_probe(data, path, int((data.get("format") or {}).get("size") or 0))
    # Before any frame is decoded: an 8192x8192 picture made the thumbnail's ffmpeg take 734 MB.
    pixels = (info.width or 0) * (info.height or 0)
    if pixels > settings.MEDIA_MAX_PIXELS:
        raise TooManyPixelsError(f"The video is {info.width}x{info.height}; this server accepts at most "
                                 f"{settings.MEDIA_MAX_PIXELS} pixels per picture.")
    return info


async def examine(path: Path, *, into: Path) -> tuple[MediaInfo, Path | None]:
    """What ``path`` is and a thumbnail of it (or None): in one child of the yt-dlp helper where the worker
    has one (``downloads.media_child``), else ffprobe then ffmpeg. The same rules and answers either way."""
    if ytdlp_helper.in_use():
        try:
            return await _examine_forked(path, into=into)
        except ytdlp_helper.HelperUnavailable as exc:
            logger.warning("%s; this job runs ffprobe and ffmpeg", exc)
    info = await probe(path)
    return info, await thumbnail(path, info, into=into)


async def _examine_forked(path: Path, *, into: Path) -> tuple[MediaInfo, Path | None]:
    if not path.is_absolute():
        raise InternalError(f"refusing to probe a relative path: {path}")
    target = into / THUMBNAIL_NAME
    spec = {"path": str(path), "thumbnail": str(target), "max_pixels": settings.MEDIA_MAX_PIXELS,
            "width": THUMBNAIL_WIDTH, "memory": settings.MEDIA_CHILD_MEMORY or 0, "demuxers": list(MEDIA_DEMUXERS)}
    helper = await ytdlp_helper.helper()
    process = await helper.spawn([json.dumps(spec)], env={}, program="media")
    try:
        code, stdout, stderr = await captured(process, limit=PROBE_TIMEOUT + THUMBNAIL_TIMEOUT)
    finally:
        process.close()
    said = stderr.decode("utf-8", "replace").strip().splitlines()
    lines = stdout.splitlines()
    if not lines:  # no probe: not media (or the child died reading it, as ffprobe would have)
        reason = (said[-1:] or [f"exit {code}"])[0][:300]
        logger.warning("probe could not read %s: %s", path.name, reason)
        raise InvalidMediaError(detail=f"ffprobe: {reason}")
    try:
        data = json.loads(lines[0])
        made = len(lines) > 1 and json.loads(lines[1]) == {"thumbnail": True}
    except ValueError as exc:
        raise InternalError("the media child answered something that is not JSON") from exc
    info = _described(data, path)
    if not info.has_video:
        return info, None
    if not made or not await asyncio.to_thread(_nonempty_file, target):
        logger.warning("thumbnail: none for %s (exit %s): %s", path.name, code, " / ".join(said)[-300:])
        return info, None
    return info, target


async def thumbnail(path: Path, info: MediaInfo, *, into: Path) -> Path | None:
    """A JPEG from inside the video, or None: never fails the scene (audio only, odd streams, ffmpeg errors)."""
    if not info.has_video:
        return None
    # The keyframe at or before the thumbnail's time. Keyframes only, and no decoding up to the exact time:
    # a small clip's thumbnail then costs ffmpeg's start and one frame (about 40 ms less CPU a job), and a
    # keyframe at or before the time always exists, where one after it may not (a clip with a single
    # keyframe). -copyts: with timestamps shifted by the seek, that keyframe would fall before zero and be
    # dropped.
    at = thumbnail_time(info.duration)
    target = into / THUMBNAIL_NAME
    argv = [settings.FFMPEG_PATH, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-threads", "1", "-skip_frame", "nokey", "-noaccurate_seek", "-ss", f"{at:.3f}", "-copyts",
            *FFMPEG_INPUT_OPTIONS, "-i", f"file:{path}", "-frames:v", "1",
            "-vf", f"scale='min({THUMBNAIL_WIDTH},iw)':-2", "-q:v", "4", str(target)]
    try:
        code, _, stderr = await run_captured(memory_limited(argv), limit=THUMBNAIL_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        logger.warning("thumbnail: ffmpeg did not run for %s: %s", path.name, exc)
        return None
    if code != 0 or not await asyncio.to_thread(_nonempty_file, target):
        logger.warning("thumbnail: none for %s (ffmpeg exit %s): %s", path.name, code,
                       stderr.decode("utf-8", "replace").strip()[-300:])
        return None
    return target


def _nonempty_file(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0
