"""S3Storage.upload against the harness's real S3 server (moto's standalone server): the checksum declared
when the multipart upload starts ends up on the stored object, and the plain path still stores the bytes."""

from __future__ import annotations

import base64
import os
import zlib
from pathlib import Path

import pytest

from downloads import bridge, storage
from tests.harness.services import r2_env

PART = 5 * 1024 * 1024  # S3's smallest part: three parts from a 12 MiB file without a large fixture


@pytest.fixture
def s3_settings(settings, s3_endpoint: str, s3_bucket, monkeypatch: pytest.MonkeyPatch):
    _, bucket = s3_bucket
    for name, value in r2_env(endpoint=s3_endpoint, bucket=bucket).items():
        setattr(settings, name, value)
    monkeypatch.setattr(storage, "PART_SIZE", PART)
    return settings


@pytest.fixture
def media(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(2 * PART + 1234)
    path = tmp_path / "media.mp4"
    path.write_bytes(data)
    return path, data


async def _upload(bucket: str, path: Path, key: str) -> None:
    async with bridge.shared_clients_closed():
        await storage.S3Storage(bucket).upload(path, key=key, content_type="video/mp4")


def _composite_crc32(data: bytes) -> str:
    """What S3 keeps for a CRC32 multipart upload: the CRC32 of the parts' CRC32s, end to end."""
    crcs = b"".join(zlib.crc32(data[i:i + PART]).to_bytes(4, "big") for i in range(0, len(data), PART))
    return base64.b64encode(zlib.crc32(crcs).to_bytes(4, "big")).decode()


async def test_declared_crc32_is_stored_with_the_object(s3_settings, s3_bucket, media):
    client, bucket = s3_bucket
    path, data = media
    s3_settings.R2_CHECKSUM_ALGORITHM = "CRC32"

    await _upload(bucket, path, "scenes/a/media.mp4")

    head = client.head_object(Bucket=bucket, Key="scenes/a/media.mp4", ChecksumMode="ENABLED")
    # AWS writes the composite as "<base64>-<parts>"; moto leaves the suffix off.
    assert head["ChecksumCRC32"].split("-")[0] == _composite_crc32(data)
    assert head.get("ChecksumType", "COMPOSITE") == "COMPOSITE"
    assert client.get_object(Bucket=bucket, Key="scenes/a/media.mp4")["Body"].read() == data
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")


async def test_without_an_algorithm_the_plain_upload_still_stores_the_bytes(s3_settings, s3_bucket, media):
    client, bucket = s3_bucket
    path, data = media
    s3_settings.R2_CHECKSUM_ALGORITHM = ""

    await _upload(bucket, path, "scenes/b/media.mp4")

    head = client.head_object(Bucket=bucket, Key="scenes/b/media.mp4")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")
    assert client.get_object(Bucket=bucket, Key="scenes/b/media.mp4")["Body"].read() == data
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
