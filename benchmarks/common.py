"""What every benchmark returns, and the shared services they run against."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.harness.services import CeleryWorker, redis_server, worker_environment


@dataclass(frozen=True)
class Result:
    """One line of the table: a figure measured against an anchor measured in the same run.

    ``ratio`` is figure / anchor; ``note`` says which way is good and what the raw numbers were.
    """

    benchmark: str
    figure: str
    value: float
    anchor: str
    anchor_value: float
    unit: str
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.value / self.anchor_value if self.anchor_value else float("inf")


@contextmanager
def broker_and_worker(*, concurrency: int, workdir: Path, database_url: str,
                      env: dict[str, str] | None = None) -> Iterator[tuple[str, CeleryWorker]]:
    """A throwaway redis-server and one ``-P gevent`` worker on it; both stopped afterwards."""
    from mediastore import celery_app

    with redis_server(workdir / "redis") as broker_url:
        celery_app.conf.broker_url = broker_url
        worker = CeleryWorker(
            env=worker_environment(broker_url=broker_url, database_url=database_url, data_dir=workdir / "data",
                                   extra=env),
            log_path=workdir / "worker.log",
            concurrency=concurrency,
        )
        try:
            worker.wait_ready()
            yield broker_url, worker
        finally:
            worker.stop()
            celery_app.pool.force_close_all()


def scratch_dir(name: str) -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix=f"bench-{name}-")
