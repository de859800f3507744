"""Users and a URL shared by the API and page tests."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

PUBLIC_URL = "http://93.184.216.34/video.mp4"  # a global address: resolving it needs no DNS


@pytest.fixture
def alice(db):
    return get_user_model().objects.create_user("alice", password="alice-pass-123")


@pytest.fixture
def bob(db):
    return get_user_model().objects.create_user("bob", password="bob-pass-123")
