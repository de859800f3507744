"""What a file is and its thumbnail, for real on clips ffmpeg makes here, on both paths: ffprobe and ffmpeg as
subprocesses, and one child of the yt-dlp helper (``downloads.media_child``, FFmpeg's libraries in PyAV)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from unittest import mock

import pytest

from downloads import egress, media, ytdlp_helper
from downloads.exceptions import InvalidMediaError, TooManyPixelsError
from downloads.ytdlp_helper import Helper
from tests.harness.services import REPO_ROOT


@contextlib.asynccontextmanager
async def _examining(way: str) -> AsyncIterator[None]:
    """``media.examine`` on one path: ffprobe and ffmpeg (``plain``), or a helper of the test's own."""
    if way == "plain":
        with mock.patch.object(ytdlp_helper, "in_use", return_value=False):
            yield
        return
    async with Helper.running() as helper:

        async def running() -> Helper:
            return helper

        with (mock.patch.object(ytdlp_helper, "in_use", return_value=True),
              mock.patch.object(ytdlp_helper, "helper", running)):
            yield
        assert helper.starts == 1  # the helper did the work, not the fallback


@pytest.fixture(params=["plain", "helper"])
async def way(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    async with _examining(request.param):
        yield request.param


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args], check=True, timeout=60)


def _clip(path: Path, *, size: str = "320x240", seconds: int = 3, gop: int = 25, audio: bool = False,
          codecs: tuple[str, ...] = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")) -> Path:
    sound = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"] if audio else []
    _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25", *sound, "-t", str(seconds), *codecs,
            "-g", str(gop), str(path))
    return path


def _size_of(picture: Path) -> str:
    done = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "stream=width,height",
                           "-of", "csv=p=0", str(picture)], capture_output=True, text=True, check=True, timeout=30)
    return done.stdout.strip()


def _width_of(picture: Path) -> int:
    return int(_size_of(picture).split(",")[0])


async def test_a_clip_whose_only_keyframe_is_its_first_frame_still_gets_a_thumbnail(way: str, tmp_path: Path):
    # Keyframes only are decoded: the one at or before a tenth of the way in must be taken, since there is
    # none after it here.
    clip = _clip(tmp_path / "one-keyframe.mp4", seconds=6, gop=1000)

    _, picture = await media.examine(clip, into=tmp_path)

    assert picture is not None
    assert _width_of(picture) == 320


async def test_a_wide_video_gets_a_thumbnail_640_pixels_wide(way: str, tmp_path: Path):
    clip = _clip(tmp_path / "wide.mp4", size="1280x720")

    _, picture = await media.examine(clip, into=tmp_path)

    assert picture is not None
    assert _width_of(picture) == 640


async def test_a_video_shot_upright_on_a_phone_gets_an_upright_thumbnail(way: str, tmp_path: Path):
    # A phone stores its picture sideways with a display matrix; ffmpeg turns it, and so must the child.
    sideways = _clip(tmp_path / "sideways.mp4")
    turned = tmp_path / "turned.mp4"
    _ffmpeg("-i", str(sideways), "-c", "copy", "-metadata:s:v", "rotate=90", str(turned))

    _, picture = await media.examine(turned, into=tmp_path)

    assert picture is not None
    assert _size_of(picture) == "240,320"


@pytest.mark.parametrize(("name", "codecs"), [
    ("h264-aac.mp4", ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac")),
    ("vp9-opus.webm", ("-c:v", "libvpx-vp9", "-deadline", "realtime", "-c:a", "libopus")),
])
async def test_both_ways_describe_a_file_alike(name: str, codecs: tuple[str, ...], tmp_path: Path):
    clip = _clip(tmp_path / name, size="320x180", seconds=2, audio=True, codecs=codecs)
    described = {}
    for way in ("plain", "helper"):
        async with _examining(way):
            described[way], _ = await media.examine(clip, into=tmp_path)

    assert described["helper"] == described["plain"]
    assert (described["helper"].width, described["helper"].height) == (320, 180)


async def test_audio_has_no_thumbnail(way: str, tmp_path: Path):
    audio = tmp_path / "sound.m4a"
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=220:sample_rate=44100", "-t", "2", "-c:a", "aac", str(audio))

    info, picture = await media.examine(audio, into=tmp_path)

    assert (info.audio_codec, info.video_codec, info.content_type) == ("aac", "", "audio/mp4")
    assert picture is None


async def test_bytes_that_are_not_media_are_invalid_media_with_ffmpeg_s_reason_and_no_path(way: str,
                                                                                         tmp_path: Path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(bytes(range(256)) * 400)

    with pytest.raises(InvalidMediaError) as error:
        await media.examine(junk, into=tmp_path)

    assert error.value.detail == "ffprobe: file:junk.mp4: Invalid data found when processing input"


async def test_a_list_of_other_files_named_like_a_video_is_not_read(way: str, tmp_path: Path):
    # A concat list naming a file beside it, as FFmpeg's concat demuxer deems safe: only the demuxer
    # allow-list keeps it from being read as the other file's media.
    _clip(tmp_path / "private.mp4")
    playlist = tmp_path / "download.mp4"
    playlist.write_text("ffconcat version 1.0\nfile 'private.mp4'\n")

    with pytest.raises(InvalidMediaError):
        await media.examine(playlist, into=tmp_path)


async def test_a_picture_over_the_pixel_limit_fails_before_any_thumbnail(way: str, tmp_path: Path, settings):
    settings.MEDIA_MAX_PIXELS = 320 * 240 - 1
    clip = _clip(tmp_path / "big.mp4")

    with pytest.raises(TooManyPixelsError):
        await media.examine(clip, into=tmp_path)
    assert not (tmp_path / "thumb.jpg").exists()


def test_the_helper_s_warm_up_imports_everything_a_media_job_uses(tmp_path: Path):
    # Each module a forked child imports itself costs every job (PyAV's 48 took 45 ms of a 2 MB clip's CPU).
    clip = _clip(tmp_path / "clip.mp4", audio=True, codecs=("-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"))
    spec = {"path": str(clip), "thumbnail": str(tmp_path / "thumb.jpg"), "max_pixels": 10**8, "width": 640,
            "memory": 0, "demuxers": list(egress.MEDIA_DEMUXERS)}
    program = ("import json, os, sys; from downloads import ytdlp_forkserver, media_child; ytdlp_forkserver._warm(); "
               "before = set(sys.modules); code = media_child.main([sys.argv[1]]); "
               "print(json.dumps({'code': code, 'imported': sorted(set(sys.modules) - before)}))")
    done = subprocess.run([sys.executable, "-c", program, json.dumps(spec)], capture_output=True, text=True,
                          check=True, timeout=120, cwd=REPO_ROOT)

    assert json.loads(done.stdout.splitlines()[-1]) == {"code": 0, "imported": []}


def test_the_media_child_runs_within_the_memory_limit_it_is_given(tmp_path: Path):
    clip = _clip(tmp_path / "clip.mp4")
    limit = 3 * 1024**3
    spec = {"path": str(clip), "thumbnail": None, "max_pixels": 10**8, "width": 640, "memory": limit,
            "demuxers": list(egress.MEDIA_DEMUXERS)}
    program = ("import json, resource, sys; from downloads import media_child; code = media_child.main([sys.argv[1]]); "
               "print(json.dumps({'code': code, 'limit': resource.getrlimit(resource.RLIMIT_AS)}))")
    done = subprocess.run([sys.executable, "-c", program, json.dumps(spec)], capture_output=True, text=True,
                          check=True, timeout=120, cwd=REPO_ROOT)

    assert json.loads(done.stdout.splitlines()[-1]) == {"code": 0, "limit": [limit, limit]}


async def test_the_helper_path_gives_the_child_the_worker_s_memory_limit(tmp_path: Path, settings):
    settings.MEDIA_CHILD_MEMORY = 123456789
    spawned = mock.AsyncMock(side_effect=ytdlp_helper.HelperUnavailable("stop here"))
    with (mock.patch.object(ytdlp_helper, "in_use", return_value=True),
          mock.patch.object(ytdlp_helper, "helper", mock.AsyncMock(return_value=mock.Mock(spawn=spawned))),
          mock.patch.object(media, "probe", mock.AsyncMock(side_effect=InvalidMediaError())),
          pytest.raises(InvalidMediaError)):
        await media.examine(tmp_path / "clip.mp4", into=tmp_path)

    (spec,) = spawned.await_args.args[0]
    assert json.loads(spec)["memory"] == 123456789
