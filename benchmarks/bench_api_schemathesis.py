"""A longer schemathesis run than the test suite's: 100 examples per operation against gunicorn.

The figure is failing checks (must be 0); the anchor is the number of operations exercised; the wall times
of this run and of a 12-example run (the suite's bound) are in the note.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import Result, gunicorn_server, scratch_dir

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance," \
         "response_headers_conformance"


def _schemathesis(port: int, token: str, examples: int, report: Path) -> tuple[int, float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), "run", f"http://127.0.0.1:{port}/api/schema/",
         "-H", f"Authorization: Token {token}", "-c", CHECKS, "-n", str(examples), "--no-color"],
        capture_output=True, text=True, timeout=1800, cwd=report.parent,
    )
    elapsed = time.perf_counter() - started
    report.write_text(done.stdout + done.stderr)
    return done.returncode, elapsed, done.stdout


def run(*, database_url: str) -> list[Result]:
    from django.contrib.auth import get_user_model

    from tests.harness.tokens import api_token

    user, _ = get_user_model().objects.get_or_create(username="bench-schemathesis")
    token = api_token(user)
    with scratch_dir("api-schemathesis") as tmp, gunicorn_server(database_url=database_url,
                                                                 workdir=Path(tmp)) as server:
        short_code, short_time, _ = _schemathesis(server.port, token, 12, Path(tmp) / "short.txt")
        code, elapsed, output = _schemathesis(server.port, token, 100, Path(tmp) / "long.txt")
    operations = re.search(r"(\d+) passed", output)
    failed = re.search(r"(\d+) failed", output)
    if code != 0 or short_code != 0:
        print(output[-3000:], file=sys.stderr)
    return [Result(
        benchmark="api_schemathesis",
        figure="operations with a failing check (100 examples each)",
        value=float(failed.group(1)) if failed else (0.0 if code == 0 else float("nan")),
        anchor="operations exercised",
        anchor_value=float(operations.group(1)) if operations else 0.0,
        unit="operations",
        note=f"exit {code}; 100 examples: {elapsed:.1f}s, 12 examples: {short_time:.1f}s",
    )]
