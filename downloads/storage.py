"""The object store: S3 API (Cloudflare R2, MinIO, AWS) when ``R2_BUCKET`` is set, else a local folder."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from django.conf import settings

from downloads import bridge


def _new_s3_client() -> AbstractAsyncContextManager[Any]:
    config = AioConfig(
        connect_timeout=10,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
        # Enough connections for -c 100 uploads sharing one client.
        max_pool_connections=128,
    )
    return get_session().create_client(  # type: ignore[no-any-return]
        "s3",
        endpoint_url=settings.R2_ENDPOINT_URL,
        aws_access_key_id=settings.R2_ACCESS_KEY_ID,
        aws_secret_access_key=settings.R2_SECRET_ACCESS_KEY,
        region_name=settings.R2_REGION,
        config=config,
    )


async def s3_client() -> Any:
    """The worker's one S3 client, shared by every task on its loop; closed at worker shutdown."""
    return await bridge.shared("s3", _new_s3_client)
