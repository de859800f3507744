"""Where a client fetches media: links are signed for the address browsers reach the store at."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from scenes import links
from scenes.models import Scene


@pytest.fixture
def s3_settings(settings):
    settings.R2_BUCKET = "media"
    settings.R2_ENDPOINT_URL = "http://minio:9000"
    settings.R2_ACCESS_KEY_ID = "key"
    settings.R2_SECRET_ACCESS_KEY = "secret-123"
    settings.R2_REGION = "us-east-1"
    settings.R2_PUBLIC_BASE_URL = None
    links.store_client.cache_clear()
    yield settings
    links.store_client.cache_clear()


def test_links_are_signed_for_the_presign_endpoint_when_browsers_reach_the_store_elsewhere(s3_settings):
    s3_settings.R2_PRESIGN_ENDPOINT_URL = "http://localhost:9000"

    url = links.media_url(Scene(pk="a" * 24, storage_key="scenes/a/media.mp4"))

    assert urlsplit(url).netloc == "localhost:9000"
    assert "Signature=" in url


def test_the_app_itself_still_reaches_the_store_where_it_is(s3_settings):
    s3_settings.R2_PRESIGN_ENDPOINT_URL = "http://localhost:9000"

    assert links.store_client().meta.endpoint_url == "http://minio:9000"


def test_without_a_presign_endpoint_links_point_where_the_app_stores(s3_settings):
    s3_settings.R2_PRESIGN_ENDPOINT_URL = None

    url = links.media_url(Scene(pk="a" * 24, storage_key="scenes/a/media.mp4"))

    assert urlsplit(url).netloc == "minio:9000"
