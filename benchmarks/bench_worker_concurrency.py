"""The gevent worker runs I/O-bound tasks side by side: 100 one-second tasks on -c 100 vs one task alone."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.common import Result, broker_and_worker, scratch_dir

TASKS = 100
SLEEP = 1.0


def _wall_time(count: int, journal: Path) -> float:
    from tests.harness.tasks import journal_sleep

    started = time.perf_counter()
    results = [journal_sleep.delay(str(journal), SLEEP) for _ in range(count)]
    for result in results:
        result.get(timeout=120)
    return time.perf_counter() - started


def run(*, database_url: str) -> list[Result]:
    with scratch_dir("concurrency") as tmp, broker_and_worker(concurrency=TASKS, workdir=Path(tmp),
                                                               database_url=database_url):
        journal = Path(tmp) / "journal.txt"
        _wall_time(1, journal)  # warm-up: imports, first connections
        alone = _wall_time(1, journal)
        together = _wall_time(TASKS, journal)
    return [Result(
        benchmark="worker_concurrency",
        figure=f"{TASKS} x {SLEEP:.0f}s tasks on -c {TASKS}, wall s",
        value=together,
        anchor="1 task alone, wall s",
        anchor_value=alone,
        unit="s",
        note=f"ideal ratio 1.0; serial would be {TASKS}",
    )]
