"""Every dependency is pinned, and dev and prod build on base."""

from __future__ import annotations

import re

import pytest

from tests.harness.services import REPO_ROOT

REQUIREMENTS = REPO_ROOT / "requirements"
PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[a-z0-9,_-]+\])?==[0-9][^\s;]*$")


def _lines(name: str) -> list[str]:
    text = (REQUIREMENTS / name).read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("name", ["base.txt", "prod.txt", "dev.txt"])
def test_every_package_is_pinned_exactly(name: str):
    unpinned = [line for line in _lines(name) if not line.startswith("-r ") and not PIN.match(line)]

    assert unpinned == []


def test_dev_and_prod_include_base():
    assert "-r base.txt" in _lines("prod.txt")
    assert "-r prod.txt" in _lines("dev.txt")


@pytest.mark.parametrize("package", ["yt-dlp", "prometheus_client"])
def test_what_the_worker_runs_is_pinned_in_base(package: str):
    # base is what web and worker import at run time; the worker serves its own metrics.
    assert any(line.startswith(f"{package}==") for line in _lines("base.txt"))
