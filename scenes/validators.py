"""Media URLs from users: what we accept before anything is stored.

The rules live in ``downloads.egress`` (one policy for submit and for every connection the worker opens);
this module applies them with the operator's settings: ``MEDIA_ALLOWED_NETWORKS`` and ``MEDIA_ALLOWED_HOSTS``.
"""

from __future__ import annotations

from downloads.egress import InvalidUrl, Resolver, UrlNotAllowed, check_url, settings_policy
from downloads.egress import UrlRefused as UrlRejected

__all__ = ["InvalidUrl", "UrlNotAllowed", "UrlRejected", "validate_media_url"]


def validate_media_url(url: str, *, resolve: Resolver | None = None) -> str:
    """Return the URL (stripped) when it may be ingested; raise ``InvalidUrl`` or ``UrlNotAllowed``."""
    return check_url(url, policy=settings_policy(), resolve=resolve)
