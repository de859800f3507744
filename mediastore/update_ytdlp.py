"""``make update-ytdlp``: move yt-dlp (and yt-dlp-ejs, which follows it) to the newest release, prove the
pipeline still works with it, and say what happened.

1. Ask PyPI for the newest releases; nothing newer than the pins → say so, exit 0.
2. Write the new pins into ``requirements/base.txt`` and install them.
3. Run the pipeline tests (real yt-dlp, ffmpeg, worker, media server; no internet needed).
4. Passed: keep the pins (commit them). Failed: put the old pins back, reinstall them, exit 1 with the
   failing tests' summary. Sites change often, so this is meant to be run (or proposed by Dependabot, see
   ``.github/dependabot.yml``) every week or two.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO_ROOT / "requirements" / "base.txt"
PACKAGES = ("yt-dlp", "yt-dlp-ejs")
PIPELINE_TESTS = ("tests/downloads/test_ytdlp_runtime.py", "tests/downloads/test_pipeline_worker.py",
                  "tests/downloads/test_egress_worker.py", "tests/downloads/test_limits_worker.py")


def pypi_latest(package: str) -> str:
    with urllib.request.urlopen(f"https://pypi.org/pypi/{package}/json", timeout=30) as response:
        return str(json.load(response)["info"]["version"])


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)$", line.strip())
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def write_pins(path: Path, new: dict[str, str]) -> None:
    lines = []
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==", line.strip())
        name = match.group(1).lower().replace("_", "-") if match else None
        lines.append(f"{match.group(1)}=={new[name]}" if match and name in new else line)
    path.write_text("\n".join(lines) + "\n")


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


@dataclass(frozen=True)
class Outcome:
    code: int
    report: str


def update(*, requirements: Path = REQUIREMENTS, latest: Callable[[str], str] = pypi_latest,
           run: Callable[[Sequence[str]], subprocess.CompletedProcess[str]] | None = None,
           python: str = sys.executable) -> Outcome:
    run = run or (lambda argv: subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True))
    old = read_pins(requirements)
    newest = {package: latest(package) for package in PACKAGES}
    bumps = {package: version for package, version in newest.items()
             if package in old and _key(version) > _key(old[package])}
    if not bumps:
        return Outcome(0, "update-ytdlp: already the newest: " + ", ".join(f"{p} {old.get(p)}" for p in PACKAGES))
    change = ", ".join(f"{p} {old[p]} → {v}" for p, v in bumps.items())
    write_pins(requirements, bumps)
    install = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(requirements)]
    installed = run(install)
    tests = run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *PIPELINE_TESTS]) \
        if installed.returncode == 0 else installed
    summary = (tests.stdout.strip().splitlines() or [""])[-1]
    if installed.returncode == 0 and tests.returncode == 0:
        return Outcome(0, f"update-ytdlp: {change}; pipeline tests passed ({summary}). Commit requirements/base.txt.")
    write_pins(requirements, {p: old[p] for p in bumps})
    run(install)
    failed = [line for line in tests.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    what = "the install failed" if installed.returncode else f"pipeline tests failed ({summary})"
    return Outcome(1, "\n".join([f"update-ytdlp: {change}: {what}; the old pins are back.", *failed[:20],
                                 *([installed.stderr.strip()[-2000:]] if installed.returncode else [])]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only say whether a newer release exists")
    args = parser.parse_args(argv)
    if args.check:
        old = read_pins(REQUIREMENTS)
        for package in PACKAGES:
            print(f"{package}: pinned {old.get(package)}, newest {pypi_latest(package)}")
        return 0
    outcome = update()
    print(outcome.report)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main())
