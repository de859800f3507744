"""A fingerprint of the settings web and worker must share: hashed per name, never shown in clear."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import connections


def config_fingerprint() -> dict[str, str]:
    """The effective values (what this process really uses), so equivalent spellings compare equal."""
    database = connections["default"].settings_dict
    from mediastore.celery import app

    values = {
        "DATABASE_URL": f"{database['ENGINE']}|{database.get('HOST') or ''}",
        "DATABASE_NAME": str(database["NAME"]),
        "CELERY_BROKER_URL": str(app.conf.broker_url),
        "CELERY_RESULT_BACKEND": str(app.conf.result_backend),
        "R2_ENDPOINT_URL": str(settings.R2_ENDPOINT_URL or ""),
        "R2_ACCESS_KEY_ID": str(settings.R2_ACCESS_KEY_ID or ""),
        "R2_SECRET_ACCESS_KEY": str(settings.R2_SECRET_ACCESS_KEY or ""),
        "R2_BUCKET": str(settings.R2_BUCKET or ""),
        "R2_PUBLIC_BASE_URL": str(settings.R2_PUBLIC_BASE_URL or ""),
        # The worker enforces its own limits (downloads.asynctask); web and worker still should agree.
        "CELERY_TASK_TIME_LIMIT": str(settings.CELERY_TASK_TIME_LIMIT),
        "CELERY_TASK_SOFT_TIME_LIMIT": str(settings.CELERY_TASK_SOFT_TIME_LIMIT),
        "MEDIA_STALE_AFTER": str(settings.MEDIA_STALE_AFTER),
        "MEDIA_MAX_ATTEMPTS": str(settings.MEDIA_MAX_ATTEMPTS),
        # The worker lets check_pipeline's sample past the address policy only on the origin it knows.
        "PIPELINE_CHECK_SAMPLE_ORIGIN": str(settings.PIPELINE_CHECK_SAMPLE_ORIGIN or ""),
    }
    return {name: hashlib.sha256(value.encode()).hexdigest()[:16] for name, value in values.items()}
