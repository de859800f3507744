"""The media fixtures are what the pipeline tests claim they are."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request

import boto3
import pytest

from tests.harness.media import STALL_BYTES, MediaServer


def _stream_types(url: str) -> list[str]:
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type", "-of", "json", url],
        capture_output=True, text=True, check=True, timeout=60,
    )
    return sorted(stream["codec_type"] for stream in json.loads(probe.stdout)["streams"])


def test_direct_mp4_has_video_and_audio(media_server: MediaServer):
    assert _stream_types(media_server.url("video.mp4")) == ["audio", "video"]


def test_audio_file_has_only_audio(media_server: MediaServer):
    assert _stream_types(media_server.url("audio.m4a")) == ["audio"]


def test_hls_playlist_lists_segments(media_server: MediaServer):
    with urllib.request.urlopen(media_server.url("hls/index.m3u8"), timeout=10) as response:
        playlist = response.read().decode()

    assert playlist.startswith("#EXTM3U")
    assert playlist.count(".ts") >= 3


def test_dash_manifest_has_separate_video_and_audio_sets(media_server: MediaServer):
    with urllib.request.urlopen(media_server.url("dash/manifest.mpd"), timeout=10) as response:
        manifest = response.read().decode()

    assert manifest.count("<AdaptationSet") == 2
    assert 'contentType="video"' in manifest
    assert 'contentType="audio"' in manifest


@pytest.mark.parametrize(("page", "marker"), [("video-page.html", '<video controls src="/video.mp4">'),
                                              ("og-page.html", 'property="og:video"')])
def test_html_pages_point_at_the_video(media_server: MediaServer, page: str, marker: str):
    with urllib.request.urlopen(media_server.url(page), timeout=10) as response:
        assert marker in response.read().decode()


def test_unknown_path_is_404(media_server: MediaServer):
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(media_server.url("missing.mp4"), timeout=10)

    error.value.close()
    assert error.value.code == 404


def _read_until_timeout(response, into: bytearray) -> None:
    while chunk := response.read1(65536):
        into += chunk


def test_stalling_response_stops_after_some_bytes(media_server: MediaServer):
    received = bytearray()
    with urllib.request.urlopen(media_server.url("stall.mp4"), timeout=2) as response:
        announced = int(response.headers["Content-Length"])
        with pytest.raises((TimeoutError, socket.timeout)):
            _read_until_timeout(response, received)

    assert len(received) == STALL_BYTES < announced


def test_large_file_is_served_with_and_without_content_length(media_server: MediaServer):
    size = media_server.files.large.stat().st_size
    with urllib.request.urlopen(media_server.url("large.mp4"), timeout=10) as response:
        assert int(response.headers["Content-Length"]) == size
    with urllib.request.urlopen(media_server.url("large-chunked.mp4"), timeout=10) as response:
        assert response.headers["Content-Length"] is None
        assert len(response.read()) == size


def test_throttled_file_arrives_at_the_requested_rate(media_server: MediaServer):
    rate = 4 * 1024 * 1024  # the file takes about 1.5 s at this rate: long enough to measure
    started = time.monotonic()
    with urllib.request.urlopen(media_server.url(f"throttled.mp4?rate={rate}"), timeout=30) as response:
        size = len(response.read())
    elapsed = time.monotonic() - started

    expected = size / rate
    assert expected * 0.9 <= elapsed <= expected * 2 + 1


def test_s3_server_stores_and_returns_objects(s3_endpoint: str):
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    client.create_bucket(Bucket="harness-check")

    client.put_object(Bucket="harness-check", Key="a/b.txt", Body=b"payload")

    body = client.get_object(Bucket="harness-check", Key="a/b.txt")["Body"]
    assert body.read() == b"payload"
    body.close()
    client.close()
