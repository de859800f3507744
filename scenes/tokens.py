"""API tokens for people: made and revoked by their owner (the tokens page, the API, ``create_token``), stored
hashed, shown once.

A token is ``mst_`` and 43 characters of ``secrets.token_urlsafe(32)``. The database keeps its SHA-256 digest
and its first characters (to tell tokens apart in a list); a leaked database or backup reveals no usable
token. Requests send it as DRF's did: ``Authorization: Token <token>``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from typing import Any

from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.utils import timezone
from rest_framework import authentication, exceptions

from scenes.models import ApiToken

PREFIX = "mst_"
SHOWN = 12  # characters of the token kept in clear to name it (the "mst_" and 8 random ones)
# A token's last use is written at most this often: not a database write on every request.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def api_token_create(*, owner: User, name: str) -> tuple[ApiToken, str]:
    """A new token for ``owner``: the row, and the token itself, which is not kept anywhere."""
    token = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken.objects.create(owner=owner, name=name.strip() or "token", prefix=token[:SHOWN],
                                  digest=digest(token))
    return row, token


def api_token_revoke(*, token: ApiToken) -> ApiToken:
    """From now on the token authenticates nobody; the row stays, so the owner sees what was revoked."""
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    token.refresh_from_db()
    return token


def api_token_list(*, owner: User | None) -> QuerySet[ApiToken]:
    """Newest first; ``owner=None`` means every owner (staff)."""
    tokens = ApiToken.objects.select_related("owner").order_by("-created_at")
    return tokens if owner is None else tokens.filter(owner=owner)


class ApiTokenAuthentication(authentication.TokenAuthentication):
    """DRF's header (``Token <token>``), checked against the stored digests."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        row = ApiToken.objects.select_related("owner").filter(digest=digest(key), revoked_at__isnull=True).first()
        if row is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        if not row.owner.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        now = timezone.now()
        if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)
        return row.owner, row
