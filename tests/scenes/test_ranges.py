"""Local media answers byte ranges: 206 with the slice, 416 past the end, the whole file when If-Range is stale."""

from __future__ import annotations

from pathlib import Path

import pytest
from rest_framework.test import APIClient

from scenes.models import Scene
from tests.harness.tokens import api_token

pytestmark = pytest.mark.django_db

BODY = bytes(range(256)) * 40  # 10 240 bytes


@pytest.fixture
def media(alice, settings, tmp_path: Path) -> str:
    settings.R2_BUCKET = None
    settings.MEDIA_ROOT = tmp_path
    (tmp_path / "scenes" / "s").mkdir(parents=True)
    (tmp_path / "scenes" / "s" / "media.mp4").write_bytes(BODY)
    scene = Scene.objects.create(owner=alice, source_url="http://93.184.216.34/v.mp4", status="completed",
                                 storage_key="scenes/s/media.mp4", content_type="video/mp4")
    return f"/files/scenes/{scene.pk}/media"


@pytest.fixture
def api(alice) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token(alice)}")
    return client


def _body(response) -> bytes:
    return b"".join(response.streaming_content)


def test_the_whole_file_says_that_ranges_are_accepted(api, media):
    response = api.get(media)

    assert response.status_code == 200
    assert response["Accept-Ranges"] == "bytes"
    assert _body(response) == BODY


def test_a_range_gets_206_with_exactly_those_bytes(api, media):
    response = api.get(media, HTTP_RANGE="bytes=0-99")

    assert response.status_code == 206
    assert response["Content-Range"] == f"bytes 0-99/{len(BODY)}"
    assert response["Content-Length"] == "100"
    assert _body(response) == BODY[:100]


@pytest.mark.parametrize(("header", "first", "last"), [
    ("bytes=10000-", 10000, len(BODY) - 1),  # open-ended: to the end
    ("bytes=-240", len(BODY) - 240, len(BODY) - 1),  # the last 240 bytes
    ("bytes=10200-99999", 10200, len(BODY) - 1),  # past the end: cut at the end
])
def test_open_suffix_and_overlong_ranges(api, media, header, first, last):
    response = api.get(media, HTTP_RANGE=header)

    assert response.status_code == 206
    assert response["Content-Range"] == f"bytes {first}-{last}/{len(BODY)}"
    assert _body(response) == BODY[first:last + 1]


def test_a_range_past_the_end_is_416_with_the_size(api, media):
    response = api.get(media, HTTP_RANGE=f"bytes={len(BODY)}-")

    assert response.status_code == 416
    assert response["Content-Range"] == f"bytes */{len(BODY)}"


def test_a_stale_if_range_gets_the_whole_file(api, media):
    response = api.get(media, HTTP_RANGE="bytes=0-99", HTTP_IF_RANGE='"an-old-etag"')

    assert response.status_code == 200
    assert _body(response) == BODY


def test_a_matching_if_range_gets_the_range(api, media):
    first_byte = api.get(media, HTTP_RANGE="bytes=0-0")
    etag = first_byte["ETag"]
    _body(first_byte)  # read to the end: the slice's file closes with it

    response = api.get(media, HTTP_RANGE="bytes=5-9", HTTP_IF_RANGE=etag)

    assert response.status_code == 206
    assert _body(response) == BODY[5:10]


def test_several_ranges_or_garbage_get_the_whole_file(api, media):
    for header in ("bytes=0-1,5-6", "lines=1-2", "bytes=a-b"):
        response = api.get(media, HTTP_RANGE=header)
        assert response.status_code == 200, header
        assert _body(response) == BODY
