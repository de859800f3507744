"""Cost of the bridge: no-op ``async def`` tasks per second vs no-op sync tasks per second, same worker."""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import Result, broker_and_worker, scratch_dir, tasks_per_second

TASKS = 500
ROUNDS = 3


def run(*, database_url: str) -> list[Result]:
    from tests.harness.tasks import noop_async, noop_sync

    with scratch_dir("async-tasks") as tmp, broker_and_worker(concurrency=100, workdir=Path(tmp),
                                                               database_url=database_url):
        tasks_per_second(noop_sync, 50)  # warm-up, both paths
        tasks_per_second(noop_async, 50)
        sync_rates, async_rates = [], []
        for _ in range(ROUNDS):  # interleaved, so drift on a noisy machine hits both alike
            sync_rates.append(tasks_per_second(noop_sync, TASKS))
            async_rates.append(tasks_per_second(noop_async, TASKS))
    return [Result(
        benchmark="async_tasks",
        figure=f"no-op async tasks/s (best of {ROUNDS} x {TASKS})",
        value=max(async_rates),
        anchor="no-op sync tasks/s, same worker",
        anchor_value=max(sync_rates),
        unit="tasks/s",
        note=f"async {'/'.join(f'{r:.0f}' for r in async_rates)}; sync {'/'.join(f'{r:.0f}' for r in sync_rates)}",
    )]
