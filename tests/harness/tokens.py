"""An API token for a test's user, made the way a person makes one (hashed at rest, shown once)."""

from __future__ import annotations

from typing import Any


def api_token(user: Any, name: str = "tests") -> str:
    from scenes.tokens import api_token_create

    return api_token_create(owner=user, name=name)[1]
