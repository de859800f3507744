"""The object store: S3 API (Cloudflare R2, MinIO, AWS) when ``R2_BUCKET`` is set, else a local folder.

Keys are deterministic per scene (``scenes/<id>/media.<ext>``, ``scenes/<id>/thumb.jpg``): a re-run
overwrites instead of adding a second copy. Uploads stream from disk in fixed-size parts, so memory does
not grow with the file; a multipart upload is aborted on any failure or cancellation.

A multipart upload declares ``R2_CHECKSUM_ALGORITHM`` (CRC32) when it starts, each part carries the CRC32
computed as it is read, and the completion lists them: the store then keeps a composite checksum built from
the parts' instead of reading the whole object again (moto's server, without one, copies and hashes the
whole object at completion). R2 accepts CRC32 as a COMPOSITE checksum only (FULL_OBJECT is for CRC64NVME):
"S3 API compatibility", Checksum Types, https://developers.cloudflare.com/r2/api/s3/api/ . Once an upload
is created with CRC32, each CompletedPart must carry its ChecksumCRC32 (AWS API_CompletedPart).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from io import BufferedReader
from pathlib import Path
from typing import Any, Protocol, TypeVar

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings

from downloads import bridge
from downloads.exceptions import StorageError

logger = logging.getLogger(__name__)

T = TypeVar("T")

PART_SIZE = 8 * 1024 * 1024  # S3's minimum is 5 MiB for every part but the last
PARTS_IN_FLIGHT = 4


def crc32_checksum(data: bytes) -> str:
    """S3's ``ChecksumCRC32``: base64 of the big-endian CRC-32 (zlib's polynomial)."""
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode("ascii")


def media_key(scene_id: str, extension: str) -> str:
    return f"scenes/{scene_id}/media.{extension.lstrip('.').lower() or 'bin'}"


def thumbnail_key(scene_id: str) -> str:
    return f"scenes/{scene_id}/thumb.jpg"


def scene_prefix(scene_id: str) -> str:
    return f"scenes/{scene_id}/"


def by_scene(items: Iterable[T], key: Callable[[T], str]) -> dict[str, list[T]]:
    """Stored things (keys, open uploads) grouped by the scene id in their ``scenes/<id>/…`` key."""
    grouped: dict[str, list[T]] = {}
    for item in items:
        parts = key(item).split("/")
        if len(parts) >= 3:
            grouped.setdefault(parts[1], []).append(item)
    return grouped


@dataclass(frozen=True)
class OpenUpload:
    """An upload that was started and neither completed nor aborted: a multipart upload on S3, a
    half-written ``.upload-*`` file in the local folder."""

    key: str
    upload_id: str
    initiated: dt.datetime


class Storage(Protocol):
    async def upload(self, path: Path, *, key: str, content_type: str) -> None: ...
    async def delete_prefix(self, prefix: str) -> int: ...
    async def keys(self, prefix: str) -> list[str]: ...
    async def open_uploads(self, prefix: str) -> list[OpenUpload]: ...
    async def abort_upload(self, upload: OpenUpload) -> None: ...


def s3_connection() -> dict[str, Any]:
    """Where and as whom to reach the store: one definition for the worker's async client and the web's
    sync one, so a presigned URL always points where the media went."""
    return {
        "endpoint_url": settings.R2_ENDPOINT_URL,
        "aws_access_key_id": settings.R2_ACCESS_KEY_ID,
        "aws_secret_access_key": settings.R2_SECRET_ACCESS_KEY,
        "region_name": settings.R2_REGION,
    }


def _new_s3_client() -> AbstractAsyncContextManager[Any]:
    config = AioConfig(
        connect_timeout=10,
        read_timeout=60,
        # botocore's own retries take transient 5xx and throttling; our task retries come on top.
        retries={"max_attempts": 3, "mode": "standard"},
        max_pool_connections=128,  # -c 100 uploads share one client
    )
    return get_session().create_client("s3", config=config, **s3_connection())  # type: ignore[no-any-return]


async def s3_client() -> Any:
    """The worker's one S3 client, shared by every task on its loop; closed at worker shutdown."""
    return await bridge.shared("s3", _new_s3_client)


def _storage_error(exc: Exception, action: str) -> StorageError:
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        code = exc.response.get("Error", {}).get("Code", "?")
        return StorageError(retryable=status >= 500 or status in {408, 429},
                            detail=f"The object store refused to {action}: {code} (HTTP {status}).")
    return StorageError(retryable=True,
                        detail=f"The object store could not be reached to {action}: {type(exc).__name__}.")


def _read_part(source: BufferedReader, checksummed: bool) -> tuple[bytes, str | None]:
    """The next part and, when asked, its CRC32, both in the reading thread: zlib releases the GIL on a
    large buffer, so 8 MiB of CRC does not hold the event loop."""
    chunk = source.read(PART_SIZE)
    return chunk, crc32_checksum(chunk) if checksummed and chunk else None


class S3Storage:
    def __init__(self, bucket: str) -> None:
        self.bucket = bucket

    async def upload(self, path: Path, *, key: str, content_type: str) -> None:
        client = await s3_client()
        upload_id, checksummed = await self._create(client, key=key, content_type=content_type)
        try:
            parts = await self._upload_parts(client, path, key=key, upload_id=upload_id, checksummed=checksummed)
            await client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                   MultipartUpload={"Parts": parts})
        except BaseException as exc:
            # Failure, soft limit or cancellation alike: an open multipart upload is billed storage.
            await asyncio.shield(self._abort(key, upload_id))
            error = bridge.first_real_error(exc)  # a part's failure arrives inside an ExceptionGroup
            if isinstance(error, ClientError | BotoCoreError):
                raise _storage_error(error, "store the media") from exc
            raise

    async def _create(self, client: Any, *, key: str, content_type: str) -> tuple[str, bool]:
        """Start the multipart upload; returns its id and whether it declared a checksum algorithm."""
        algorithm = settings.R2_CHECKSUM_ALGORITHM
        try:
            if algorithm:
                try:
                    created = await client.create_multipart_upload(Bucket=self.bucket, Key=key,
                                                                   ContentType=content_type,
                                                                   ChecksumAlgorithm=algorithm)
                    return created["UploadId"], True
                except ClientError as exc:
                    # A store that refuses the header outright still gets the media, the way it did before
                    # (R2 answered 501 NotImplemented to x-amz-checksum-* headers in January 2025, before it
                    # took them: github.com/f2face/cloudflare-r2/issues/12).
                    if exc.response.get("Error", {}).get("Code") != "NotImplemented":
                        raise
                    logger.warning("storage: the store refused ChecksumAlgorithm=%s; uploading without it "
                                   "(set R2_CHECKSUM_ALGORITHM=off to skip the attempt)", algorithm)
            created = await client.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType=content_type)
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error(exc, "start an upload") from exc
        return created["UploadId"], False

    async def _upload_parts(self, client: Any, path: Path, *, key: str, upload_id: str,
                            checksummed: bool) -> list[dict[str, Any]]:
        """Read parts in order and keep up to PARTS_IN_FLIGHT uploading: memory is bounded by that many
        parts, whatever the file's size."""
        slots = asyncio.Semaphore(PARTS_IN_FLIGHT)
        parts: list[dict[str, Any]] = []

        async def send(number: int, chunk: bytes, checksum: str | None) -> None:
            try:
                # Our own checksum in the header also stops botocore from computing one on the event loop.
                extra = {"ChecksumCRC32": checksum} if checksum else {}
                answer = await client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                  PartNumber=number, Body=chunk, **extra)
                parts.append({"ETag": answer["ETag"], "PartNumber": number, **extra})
            finally:
                slots.release()

        async with asyncio.TaskGroup() as group:
            with path.open("rb") as source:
                number = 1
                while True:
                    await slots.acquire()
                    chunk, checksum = await asyncio.to_thread(_read_part, source, checksummed)
                    if not chunk:
                        slots.release()
                        break
                    group.create_task(send(number, chunk, checksum))
                    number += 1
        return sorted(parts, key=lambda part: int(part["PartNumber"]))

    async def _abort(self, key: str, upload_id: str) -> None:
        try:
            client = await s3_client()
            await client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception:
            logger.exception("storage: could not abort multipart upload %s of %s", upload_id, key)

    async def open_uploads(self, prefix: str) -> list[OpenUpload]:
        client = await s3_client()
        found: list[OpenUpload] = []
        try:
            async for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                                        Prefix=prefix):
                found += [OpenUpload(key=u["Key"], upload_id=u["UploadId"], initiated=u["Initiated"])
                          for u in page.get("Uploads", [])]
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error(exc, "list open uploads") from exc
        return found

    async def abort_upload(self, upload: OpenUpload) -> None:
        client = await s3_client()
        try:
            await client.abort_multipart_upload(Bucket=self.bucket, Key=upload.key, UploadId=upload.upload_id)
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error(exc, "abort an upload") from exc

    async def keys(self, prefix: str) -> list[str]:
        client = await s3_client()
        found: list[str] = []
        try:
            async for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                found += [item["Key"] for item in page.get("Contents", [])]
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error(exc, "list objects") from exc
        return found

    async def delete_prefix(self, prefix: str) -> int:
        keys = await self.keys(prefix)
        client = await s3_client()
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            try:
                await client.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch]})
            except (ClientError, BotoCoreError) as exc:
                raise _storage_error(exc, "delete objects") from exc
        return len(keys)


class LocalStorage:
    """Objects as files under a folder (``MEDIA_ROOT``): the embedded default."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StorageError(f"refusing a key outside the media folder: {key!r}")
        return path

    async def upload(self, path: Path, *, key: str, content_type: str) -> None:
        await asyncio.to_thread(self._copy, path, self._path(key))

    @staticmethod
    def _copy(source: Path, target: Path) -> None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Write beside the target and rename: a reader never sees half a file, a crash leaves none.
            fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
            try:
                with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                    shutil.copyfileobj(src, out, PART_SIZE)
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StorageError(f"could not write to the media folder: {exc.strerror}", retryable=False) from exc

    async def open_uploads(self, prefix: str) -> list[OpenUpload]:
        base = self._path(prefix) if prefix else self.root

        def find() -> list[OpenUpload]:
            if not base.exists():
                return []
            return [OpenUpload(key=str(path.relative_to(self.root)), upload_id=path.name,
                               initiated=dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC))
                    for path in base.rglob(".upload-*") if path.is_file()]

        return await asyncio.to_thread(find)

    async def abort_upload(self, upload: OpenUpload) -> None:
        await asyncio.to_thread(self._path(upload.key).unlink, True)

    async def keys(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root

        def walk() -> list[str]:
            if not base.exists():
                return []
            return sorted(str(p.relative_to(self.root)) for p in base.rglob("*")
                          if p.is_file() and not p.name.startswith(".upload-"))

        return await asyncio.to_thread(walk)

    async def delete_prefix(self, prefix: str) -> int:
        keys = await self.keys(prefix)
        target = self._path(prefix)
        await asyncio.to_thread(shutil.rmtree, target, True)
        return len(keys)


def get_storage() -> Storage:
    if settings.R2_BUCKET:
        return S3Storage(settings.R2_BUCKET)
    return LocalStorage(Path(settings.MEDIA_ROOT))
