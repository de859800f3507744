"""Instructions per request of POST /api/v1/media/store against GET /api/v1/me, counted by callgrind.

``bench_api_store`` measures both under load, where the machine's noise moves a round by 10 %. This counts the
CPU instructions one request of each kind executes, which repeat within 1 %: the Django ASGI app is called in
process as uvicorn calls it (``api_instructions_driver``), with a new thread and a new database connection per
request as under uvicorn, SQLite and a real redis-server. Each figure is the mean over its blocks, not the
lowest: a full garbage collection (about 50 M instructions) falls in some store blocks and not others, and is
part of what a request costs. Under load the store request's extra instructions cost more time than /me's
(``bench_api_store``'s server CPU ratio was about 1.6 where this one is 1.5), so this ratio is a floor for
that one, not a prediction; uvicorn, the client and the kernel are not counted here. Needs valgrind;
reports nothing without it.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.api_instructions_driver import ROUNDS
from benchmarks.common import Result, scratch_dir
from tests.harness.services import REPO_ROOT

PER_BLOCK = 30


def _counts(folder: Path) -> dict[str, list[float]]:
    """Instructions per request of each dumped block, by endpoint."""
    counts: dict[str, list[float]] = {}
    for dump in folder.glob("cg.*"):
        text = dump.read_text(errors="replace")
        label = re.search(r"^desc: Trigger: dump (\S+)", text, re.M)
        total = re.search(r"^summary: (\d+)", text, re.M)
        if label is None or total is None:
            continue
        name = label.group(1).rsplit("-", 1)[0]
        if name in ("me", "store"):
            counts.setdefault(name, []).append(int(total.group(1)) / PER_BLOCK)
    return counts


def run(*, database_url: str) -> list[Result]:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("bench_api_instructions: valgrind is not installed; skipped", file=sys.stderr)
        return []
    with scratch_dir("api-instructions") as tmp:
        folder = Path(tmp)
        env = {**os.environ, "PYTHONHASHSEED": "0", "MEDIA_STORE_RATE": "1000000/min",
               "DJANGO_ALLOWED_HOSTS": "127.0.0.1"}
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={folder}/cg.%p",
             sys.executable, "-m", "benchmarks.api_instructions_driver", str(PER_BLOCK)],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the driver failed under callgrind:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        counts = _counts(folder)
    if len(counts.get("me", [])) != ROUNDS or len(counts.get("store", [])) != ROUNDS:
        raise RuntimeError(f"expected {ROUNDS} blocks of each endpoint, got {counts}")
    me, store = statistics.mean(counts["me"]), statistics.mean(counts["store"])
    raw = "; ".join(f"{name}: " + ", ".join(f"{n / 1e6:.2f}" for n in blocks) for name, blocks in counts.items())
    return [Result("api_instructions", "POST /media/store, M instructions per request", store / 1e6,
                   "GET /me, M instructions per request", me / 1e6, "M",
                   f"lower is better; {PER_BLOCK} requests per block, mean of {ROUNDS} blocks; every block (M): "
                   f"{raw}")]
