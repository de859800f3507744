"""YouTube-ready: yt-dlp, run exactly as the worker runs it, finds the pinned Deno runtime and yt-dlp-ejs."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

from downloads import ytdlp
from scenes.pipeline_check import _youtube_checks


def test_ytdlp_run_with_the_workers_argv_reports_the_deno_runtime_offline(tmp_path: Path):
    argv = ytdlp.build_argv("http://127.0.0.1:9/none.mp4", job_dir=tmp_path, max_filesize=1024)
    bootstrap_end = argv.index("-c") + 2
    argv = [*argv[:bootstrap_end], "-v", "--simulate", *argv[bootstrap_end:]]

    done = subprocess.run(argv, env=ytdlp.guard_env(), capture_output=True, text=True, timeout=120)

    runtimes = [line for line in done.stderr.splitlines() if line.startswith("[debug] JS runtimes:")]
    assert runtimes, done.stderr[-2000:]
    assert "deno-" in runtimes[0]
    assert "yt_dlp_ejs-" in done.stderr  # the challenge solver scripts, from the pinned package


def test_the_runtime_is_named_explicitly_not_searched_on_path(settings):
    settings.MEDIA_JS_RUNTIME = "/opt/deno/bin/deno"

    assert ytdlp.js_runtime_options() == ["--no-js-runtimes", "--js-runtimes", "deno:/opt/deno/bin/deno"]


def test_no_runtime_turns_every_runtime_off(settings):
    settings.MEDIA_JS_RUNTIME = "none"

    assert ytdlp.js_runtime_options() == ["--no-js-runtimes"]
    assert ytdlp.js_runtime_version() is None


def test_the_bundled_runtime_answers_with_its_version():
    assert (ytdlp.js_runtime_version() or "").startswith("deno ")


def _checks(version: str, runtime: str | None, today: dt.date) -> dict[str, tuple[str, str]]:
    info = {"versions": {"yt-dlp": version, "yt-dlp-ejs": "0.8.0"}, "js_runtime": runtime}
    return {check.name: (check.outcome, check.reason) for check in _youtube_checks(info, today=today)}


def test_check_pipeline_warns_about_an_old_ytdlp_and_a_missing_runtime():
    checks = _checks("2026.01.02", None, dt.date(2026, 11, 30))

    assert checks["yt-dlp age"][0] == "WARN"
    assert "332 days old" in checks["yt-dlp age"][1]
    assert "make update-ytdlp" in checks["yt-dlp age"][1]
    assert checks["JavaScript runtime"][0] == "WARN"


def test_check_pipeline_passes_a_recent_ytdlp_with_a_runtime():
    checks = _checks("2026.10.26", "deno 2.9.8 at /venv/bin/deno", dt.date(2026, 11, 30))

    assert checks["yt-dlp age"] == ("PASS", "yt-dlp 2026.10.26, 35 days old")
    assert checks["JavaScript runtime"] == ("PASS", "deno 2.9.8 at /venv/bin/deno (yt-dlp-ejs 0.8.0)")
