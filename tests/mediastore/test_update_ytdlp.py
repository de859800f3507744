"""``make update-ytdlp``: bumps the pins, keeps them when the pipeline tests pass, puts them back when not."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from mediastore import update_ytdlp

PINS = "# runtime\naiobotocore==3.10.0\nyt-dlp==2026.10.26\nyt-dlp-ejs==0.8.0\nzope.event==6.2\n"


@pytest.fixture
def requirements(tmp_path: Path) -> Path:
    path = tmp_path / "base.txt"
    path.write_text(PINS)
    return path


class Runner:
    """Records the commands; answers the test run with ``tests_pass``."""

    def __init__(self, *, tests_pass: bool) -> None:
        self.tests_pass = tests_pass
        self.commands: list[list[str]] = []
        self.pins_at_install: list[str] = []

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(argv))
        if "pip" in argv:
            self.pins_at_install.append(Path(argv[-1]).read_text())
            return subprocess.CompletedProcess(argv, 0, "", "")
        code = 0 if self.tests_pass else 1
        out = "12 passed in 80s" if self.tests_pass else "FAILED tests/x.py::test_reddit\n1 failed, 11 passed"
        return subprocess.CompletedProcess(argv, code, out, "")


def _latest(versions: dict[str, str]):
    return lambda package: versions[package]


def test_a_newer_ytdlp_is_pinned_installed_and_kept_when_the_pipeline_tests_pass(requirements):
    run = Runner(tests_pass=True)

    outcome = update_ytdlp.update(requirements=requirements, run=run,
                                  latest=_latest({"yt-dlp": "2026.11.20", "yt-dlp-ejs": "0.8.0"}))

    assert outcome.code == 0
    assert "yt-dlp 2026.10.26 → 2026.11.20" in outcome.report
    assert "yt-dlp==2026.11.20\n" in requirements.read_text()
    assert "yt-dlp-ejs==0.8.0\n" in requirements.read_text()
    assert requirements.read_text().startswith("# runtime\naiobotocore==3.10.0\n")  # the rest untouched
    assert any("pytest" in command for command in run.commands[1])
    assert set(update_ytdlp.PIPELINE_TESTS) <= set(run.commands[1])


def test_failing_pipeline_tests_put_the_old_pins_back_and_reinstall_them(requirements):
    run = Runner(tests_pass=False)

    outcome = update_ytdlp.update(requirements=requirements, run=run,
                                  latest=_latest({"yt-dlp": "2026.11.20", "yt-dlp-ejs": "0.9.0"}))

    assert outcome.code == 1
    assert "FAILED tests/x.py::test_reddit" in outcome.report
    assert requirements.read_text() == PINS
    assert "yt-dlp==2026.10.26" in run.pins_at_install[-1]  # the old pins installed again


def test_nothing_newer_changes_nothing(requirements):
    run = Runner(tests_pass=True)

    outcome = update_ytdlp.update(requirements=requirements, run=run,
                                  latest=_latest({"yt-dlp": "2026.10.26", "yt-dlp-ejs": "0.8.0"}))

    assert outcome.code == 0
    assert "already the newest" in outcome.report
    assert run.commands == []
    assert requirements.read_text() == PINS


def test_the_real_requirements_pin_both_packages():
    pins = update_ytdlp.read_pins(update_ytdlp.REQUIREMENTS)

    assert {"yt-dlp", "yt-dlp-ejs", "deno"} <= set(pins)
