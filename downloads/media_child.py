"""What a downloaded file is, and a picture of it, in one child of the yt-dlp helper (``ytdlp_forkserver``).

ffprobe and the thumbnail's ffmpeg each start by linking Debian's 215 FFmpeg libraries: about 60 ms of CPU
apiece, most of a small clip's media work. The helper imports FFmpeg's libraries once (PyAV) and forks this
per job, so a job pays for the work alone (about 10 ms for a 2 MB clip). The rules are ffprobe's and
ffmpeg's (``downloads.media``): local files only, media demuxers only, no frame decoded before the picture's
size is checked against the pixel limit, the child's address space limited, the thumbnail best effort.

Protocol: one argument, a JSON object (``path``, ``thumbnail``: where to write the JPEG or null,
``max_pixels``, ``width``: the thumbnail's at most, ``memory``: bytes of address space or 0, ``demuxers``).
The first line on stdout is the probe, in ffprobe's JSON shape (``format`` and ``streams``), written before
any decoding: a crash while making the thumbnail loses the picture, not the probe. Then a line
``{"thumbnail": true}`` once the JPEG is written. Errors go to stderr, one line each; exit 1: not readable as
media, 3: no thumbnail.

Standard library and PyAV only: this runs without Django.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from typing import Any

NOT_MEDIA = 1
NO_THUMBNAIL = 3


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    if spec.get("memory"):
        resource.setrlimit(resource.RLIMIT_AS, (int(spec["memory"]), int(spec["memory"])))
    import av

    path = str(spec["path"])
    try:
        # file: and the demuxer allow-list, as ffprobe gets them: a "video" that is really a playlist must not
        # open the files or URLs it lists.
        container = av.open(f"file:{path}", container_options={
            "protocol_whitelist": "file", "format_whitelist": ",".join(spec["demuxers"])})
    except (av.FFmpegError, MemoryError, ValueError) as exc:
        print(_said(exc, path), file=sys.stderr)
        return NOT_MEDIA
    with container:
        probe = _probe(container, os.path.getsize(path))
        print(json.dumps(probe), flush=True)
        video = next((s for s in container.streams.video if not _attached_picture(s)), None)
        if spec.get("thumbnail") is None or video is None:
            return 0
        pixels = (video.codec_context.width or 0) * (video.codec_context.height or 0)
        if pixels > int(spec["max_pixels"]):
            return 0  # the worker fails the scene on the probe's size; nothing is decoded
        try:
            _thumbnail(container, video, duration=probe["format"].get("duration"), width=int(spec["width"]),
                       target=str(spec["thumbnail"]), max_pixels=int(spec["max_pixels"]))
        except (av.FFmpegError, MemoryError, ValueError, StopIteration) as exc:
            print(f"thumbnail: {_said(exc, path)}", file=sys.stderr)
            return NO_THUMBNAIL
    print(json.dumps({"thumbnail": True}), flush=True)
    return 0


def warm() -> None:
    """Import FFmpeg's libraries and every part of PyAV a job uses, in the helper before it forks: loaded in
    the child instead, PyAV's 48 extension modules cost about 45 ms of a job's CPU."""
    import av
    import av.container
    import av.filter
    import av.subtitles.stream
    import av.video

    av.codec.Codec("mjpeg", "w")  # the thumbnail's encoder, found once


def thumbnail_time(duration: float | None) -> float:
    """Where the thumbnail is sought, for both paths: a tenth of the way in, but always inside the media
    (short clips, unknown durations)."""
    return min(duration * 0.1, max(duration - 0.1, 0)) if duration else 0.0


def _said(exc: BaseException, path: str) -> str:
    """FFmpeg's reason as ffprobe words it (``file:<path>: Invalid data found…``), so the scene's detail is
    the same on both paths; with the file's name only, as the full path is nobody's business."""
    said = str(exc) or type(exc).__name__
    if isinstance(getattr(exc, "strerror", None), str):
        said = f"{exc.filename}: {exc.strerror}" if getattr(exc, "filename", None) else exc.strerror  # type: ignore[attr-defined]
    return said.replace(path, os.path.basename(path))[:300]


def _attached_picture(stream: Any) -> bool:
    import av

    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def _probe(container: Any, size: int) -> dict[str, Any]:
    streams = []
    for stream in container.streams:
        context = stream.codec_context
        described: dict[str, Any] = {
            "codec_type": stream.type,
            # ffprobe's codec_name is the codec's, not the decoder's (av1, not libdav1d)
            "codec_name": context.codec.canonical_name if context is not None else "",
            "disposition": {"attached_pic": int(_attached_picture(stream))},
        }
        if stream.type == "video":
            described["width"], described["height"] = context.width, context.height
        streams.append(described)
    duration = f"{container.duration / 1_000_000:.6f}" if container.duration is not None else None
    return {"format": {"duration": duration, "size": str(size)}, "streams": streams}


# What ffmpeg's autorotate inserts for a display matrix of this many degrees counter-clockwise, so a phone's
# upright video gets an upright thumbnail on both paths.
_UPRIGHT: dict[int, list[tuple[str, str | None]]] = {
    90: [("transpose", "cclock")], 180: [("hflip", None), ("vflip", None)], 270: [("transpose", "clock")]}


def _thumbnail(container: Any, video: Any, *, duration: str | None, width: int, target: str,
               max_pixels: int) -> None:
    """The keyframe at or before a tenth of the way in, turned upright, at most ``width`` pixels wide, as a
    JPEG: what ``media.thumbnail`` asks of ffmpeg, through the same filters."""
    import av

    at = thumbnail_time(float(duration) if duration else None)
    context = video.codec_context
    context.skip_frame = "NONKEY"
    context.thread_count = 1
    context.options = {"max_pixels": str(max_pixels)}
    if at > 0 and video.time_base:
        container.seek(int(at / video.time_base), stream=video, backward=True, any_frame=False)
    frame = next(container.decode(video))
    graph = av.filter.Graph()
    steps = [*_UPRIGHT.get(round(frame.rotation) % 360, []), ("scale", f"w='min({width},iw)':h=-2"),
             ("format", "yuvj420p")]
    previous = graph.add_buffer(template=video)
    for name, arguments in steps:
        node = graph.add(name, arguments)
        previous.link_to(node)
        previous = node
    previous.link_to(graph.add("buffersink"))
    graph.configure()
    graph.push(frame)
    picture = graph.pull()
    assert isinstance(picture, av.VideoFrame)
    with av.open(target, "w", format="image2") as output:
        stream = output.add_stream("mjpeg", rate=1)
        stream.width, stream.height, stream.pix_fmt = picture.width, picture.height, "yuvj420p"
        stream.codec_context.qmin = stream.codec_context.qmax = 4  # ffmpeg's -q:v 4
        for packet in stream.encode(picture):
            output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
