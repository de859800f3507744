"""``async def`` tasks on a real ``-P gevent`` worker and real Redis, through the bridge."""

from __future__ import annotations

import os
import time
from io import StringIO
from pathlib import Path

import pytest
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from django.contrib.auth import get_user_model
from django.core.management import call_command

from downloads.exceptions import UnsupportedUrlError
from scenes import services
from scenes.models import Scene
from tests.harness.processes import process_table, wait_until, ytdlp_helpers
from tests.harness.services import r2_env
from tests.harness.tasks import (
    async_hard_limited,
    async_raise,
    async_s3_client_identity,
    async_set_title,
    async_sleep,
    async_soft_limited,
    async_subprocess,
    sync_set_title,
)


def _children_of(pid: int) -> list[int]:
    """The worker's child processes, zombies included, but its yt-dlp helper (started with the worker)."""
    helpers = set(ytdlp_helpers(pid))
    return [p.pid for p in process_table() if p.ppid == pid and p.pid not in helpers]


def _running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _process_group(pgid: int) -> list[int]:
    return [p.pid for p in process_table() if p.pgrp == pgid]


def test_hundred_async_sleeps_run_side_by_side(start_worker):
    start_worker(concurrency=100)

    started = time.monotonic()
    results = [async_sleep.delay(1) for _ in range(100)]
    values = [result.get(timeout=30) for result in results]
    elapsed = time.monotonic() - started

    assert values == [1] * 100
    assert elapsed < 5, f"100 x sleep(1) took {elapsed:.2f}s"


def test_fifty_subprocesses_report_every_line_and_exit_code(start_worker):
    worker = start_worker(concurrency=50)
    expected = {i: ([f"task {i} line {j}" for j in range(5)], i % 4) for i in range(50)}

    results = {i: async_subprocess.delay(lines, code) for i, (lines, code) in expected.items()}
    outcomes = {i: result.get(timeout=60) for i, result in results.items()}

    for i, (lines, code) in expected.items():
        assert outcomes[i]["lines"] == lines
        assert outcomes[i]["exit_code"] == code
    assert _children_of(worker.process.pid) == []  # no zombie, nothing left running
    assert not any(_running(outcome["pid"]) for outcome in outcomes.values())
    assert "exit status already read" not in worker.log()  # asyncio's words when gevent reaped first


def test_async_and_sync_orm_tasks_share_the_worker(start_worker):
    worker = start_worker(concurrency=100)
    owner = get_user_model().objects.create_user("orm-owner")
    scenes = [services.scene_create(owner=owner, source_url=f"https://example.com/{i}.mp4") for i in range(120)]

    results = [async_set_title.delay(scene.pk, f"async {i}") for i, scene in enumerate(scenes[:100])]
    results += [sync_set_title.delay(scene.pk, f"sync {i}") for i, scene in enumerate(scenes[100:])]
    updated = [result.get(timeout=60) for result in results]

    assert updated == [1] * 120
    titles = dict(Scene.objects.values_list("id", "title"))
    expected = [f"async {i}" for i in range(100)] + [f"sync {i}" for i in range(20)]
    assert [titles[scene.pk] for scene in scenes] == expected
    assert "SynchronousOnlyOperation" not in worker.log()


def test_our_error_fails_the_task_with_its_type_and_message(start_worker):
    start_worker()

    result = async_raise.delay("ours")

    with pytest.raises(UnsupportedUrlError, match=r"nothing to download at http://example\.invalid/"):
        result.get(timeout=30)
    assert result.state == "FAILURE"


def test_exception_group_is_reported_as_its_first_real_error(start_worker):
    start_worker()

    result = async_raise.delay("group")

    with pytest.raises(UnsupportedUrlError, match="the first real error"):
        result.get(timeout=30)


def test_soft_limit_reaches_the_coroutine_and_its_finally_runs(start_worker, tmp_path: Path):
    start_worker()
    journal = tmp_path / "journal.txt"

    result = async_soft_limited.delay(str(journal))

    with pytest.raises(SoftTimeLimitExceeded):
        result.get(timeout=30)
    assert journal.read_text().splitlines() == ["cancelled: soft_limit", "finally ran"]


def test_hard_limit_fails_the_task_and_kills_its_process_tree(start_worker, tmp_path: Path):
    start_worker()
    pid_file = tmp_path / "pid.txt"

    result = async_hard_limited.delay(str(pid_file))
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip() != "", timeout=30, what="the shell")
    shell = int(pid_file.read_text())
    wait_until(lambda: len(_process_group(shell)) >= 2, timeout=5, what="the shell's background child")
    tree = _process_group(shell)
    hard_limit_at = time.monotonic() + 2  # the task's time_limit, counted from when the tree existed

    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=30)
    wait_until(lambda: not any(_running(pid) for pid in tree), timeout=10, what="the process tree to die")
    gone_after = time.monotonic() - hard_limit_at

    assert len(tree) >= 2
    assert gone_after < 2, f"the process tree outlived the hard limit by {gone_after:.2f}s"


def test_shared_s3_client_is_one_object_per_worker(start_worker, s3_endpoint: str):
    start_worker(env=r2_env(endpoint=s3_endpoint, bucket="shared-client"))

    identities = {tuple(async_s3_client_identity.delay().get(timeout=30)) for _ in range(5)}

    assert len(identities) == 1
    assert next(iter(identities))[0] != os.getpid()


def test_ping_worker_reports_pool_and_answers(start_worker):
    start_worker(concurrency=7)
    out = StringIO()

    call_command("ping_worker", "--timeout", "20", stdout=out)

    report = out.getvalue()
    assert "pool celery.concurrency.gevent:TaskPool, concurrency 7" in report
    assert "yt-dlp 2026.10.26" in report
    assert "ping_worker: OK, async task answered 'hello world'" in report
