"""Fixtures shared by the worker tests of ``downloads``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.hostile import HostileSite
from tests.harness.media import MediaFiles


@pytest.fixture
def site(media_files: MediaFiles) -> Iterator[HostileSite]:
    """A site on the allowed loopback address whose answers a test chooses (see tests/harness/hostile.py)."""
    hostile = HostileSite(media_files.root)
    yield hostile
    hostile.stop()
