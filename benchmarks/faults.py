"""``make faults``: inject the faults a deployment meets and check that every accepted scene ends on its own.

One real stack on loopback: redis-server (no persistence, so a restart loses everything it held), moto's S3
server behind a fault-injecting proxy, the media server with ffmpeg-generated files, and a ``-P gevent``
worker kept running by a supervisor thread (as ``restart: unless-stopped`` would). Limits are short so that
what takes minutes in production takes seconds here. Nobody acts during the run: no command, no admin.

After the last fault the suite waits for the sweeper (a few of its periods at most), then counts per fault
and in total: scenes, completed, failed, stuck (still queued or processing), lost (rows that vanished),
orphan objects (stored objects of a scene that is gone or not completed, or not its own), open multipart
uploads, leftover temp folders, and the operator actions that would still be needed (the sum of the bad
ones). The goal is 0 of every bad column.

    python -m benchmarks.faults            # everything, about 10 minutes on 2 cores
    python -m benchmarks.faults redis hard  # only the faults whose names contain these words
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKER_SETTINGS = {
    "MEDIA_WORKER_STALL_AFTER": "20",
    "CELERY_BROKER_VISIBILITY_TIMEOUT": "60",
    "CELERY_TASK_TIME_LIMIT": "40",
    "CELERY_TASK_SOFT_TIME_LIMIT": "35",
    "MEDIA_DOWNLOAD_TIMEOUT": "30",
    "MEDIA_SOCKET_TIMEOUT": "5",
    "MEDIA_MAX_FILESIZE": "50M",
    "MEDIA_STALE_AFTER": "6",
    "MEDIA_SWEEP_INTERVAL": "2",
    "MEDIA_RESEND_AFTER": "10",
    "MEDIA_MAX_ATTEMPTS": "3",
    "MEDIA_RETRY_BACKOFF": "1",
    "MEDIA_SHUTDOWN_GRACE": "2",
    "MEDIA_MAX_ACTIVE_PER_OWNER": "100000",  # the suite submits its bursts as one person
}
CONCURRENCY = 24
SETTLE_TIMEOUT = 180.0


@dataclass
class Fault:
    name: str
    scenes: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Stack:
    """The services, one worker under a supervisor, and what the suite needs to reach them."""

    def __init__(self, workdir: Path, database_url: str) -> None:
        self.workdir = workdir
        self.database_url = database_url
        self.job_tmp = workdir / "tmp"
        self.job_tmp.mkdir()
        self.worker: Any = None
        self.worker_env: dict[str, str] = {}
        self._supervise = threading.Event()
        self._lock = threading.Lock()
        self.restarts = 0
        self.liveness_restarts = 0
        self.redis: Any = None

    # --- redis on a fixed port, so it can be stopped and started again ---------------------------------

    def start_redis(self) -> None:
        from tests.harness.processes import ServiceProcess, port_open, wait_until

        self.redis = ServiceProcess(["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                     "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
                                    log_path=self.workdir / "redis.log")
        wait_until(lambda: port_open(self.redis_port), timeout=10, what="redis-server")

    def stop_redis(self, *, kill: bool) -> None:
        if kill:
            self.redis.kill()
        else:
            self.redis.stop(grace=10)

    # --- the worker, restarted by a supervisor when it dies --------------------------------------------

    def start_worker(self, env: dict[str, str] | None = None) -> None:
        from tests.harness.services import CeleryWorker

        with self._lock:
            self.worker = CeleryWorker(env={**self.worker_env, **(env or {})},
                                       log_path=self.workdir / f"worker-{self.restarts}.log",
                                       concurrency=CONCURRENCY,
                                       includes=("tests.harness.tasks", "benchmarks.fault_hooks"))
            self.restarts += 1
        self.worker.wait_ready(timeout=90)

    def supervise(self) -> None:
        self._supervise.set()

        def loop() -> None:
            last_check = time.monotonic()
            while self._supervise.is_set():
                time.sleep(0.5)
                with self._lock:
                    dead = self.worker is not None and not self.worker.process.alive()
                if dead and self._supervise.is_set():
                    self.start_worker()
                elif time.monotonic() - last_check > 10 and self._supervise.is_set():
                    # What a liveness probe (a container healthcheck with restarts) would do.
                    last_check = time.monotonic()
                    if self._stalled():
                        print("faults: the worker is stalled (worker_health); restarting it", flush=True)
                        self.liveness_restarts += 1
                        self.worker.stop()
                        self.start_worker()

        threading.Thread(target=loop, daemon=True, name="supervisor").start()

    def _stalled(self) -> bool:
        import socket

        from mediastore import liveness

        # Judge the worker this supervisor runs, not every report in Redis: a worker killed or stopped while
        # stalled leaves its last report for up to REPORT_TTL, and judging it again restarted healthy
        # successors, one after another.
        hostname = self.worker.name.replace("%h", socket.gethostname())
        try:
            found = liveness.workers_health(hostname=hostname)
        except Exception:  # the broker is down on purpose: nothing to judge
            return False
        return found is not None and any(not v.healthy and "stalled" in v.reason for v in found[1])

    def pause_supervisor(self) -> None:
        self._supervise.clear()
        time.sleep(0.6)

    def kill_worker(self) -> None:
        self.worker.kill()

    def stop_worker(self) -> None:
        self.worker.stop()


# --- helpers on the suite's side ---------------------------------------------------------------------------


def _owner() -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.get_or_create(username="faults")[0]


def _store(fault: Fault, urls: list[str]) -> list[str]:
    """Accept scenes as the API does (row, then the enqueue after commit)."""
    from scenes import services

    ids = [services.scene_store(owner=_owner(), source_url=url, title=fault.name).pk for url in urls]
    fault.scenes += ids
    return ids


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.25)


def _count(ids: list[str], **filters: Any) -> int:
    from scenes.models import Scene

    return Scene.objects.filter(pk__in=ids, **filters).count()


# --- the faults -----------------------------------------------------------------------------------------------


def run_faults(stack: Stack, media: Any, proxy: Any, selected: list[str]) -> list[Fault]:
    from downloads.tasks import download_media_task
    from scenes import services
    from scenes.models import Scene
    from tests.harness.faults import is_upload_part

    def throttled(rate: int, mark: str = "") -> str:
        return media.url(f"throttled.mp4?rate={rate}" + (f"&{mark}" if mark else ""))

    faults: list[Fault] = []

    def phase(name: str) -> Callable[[Callable[[Fault], None]], None]:
        def run(body: Callable[[Fault], None]) -> None:
            if selected and not any(word in name for word in selected):
                return
            fault = Fault(name)
            started = time.monotonic()
            print(f"faults: {name} …", flush=True)
            try:
                body(fault)
            except TimeoutError as late:  # the fault could not be set up as planned; its scenes still count
                print(f"faults: {name}: {late}", flush=True)
                fault.name += " (set-up timed out)"
            fault.seconds = time.monotonic() - started
            faults.append(fault)
        return run

    @phase("kill -9 worker mid-download")
    def _(fault: Fault) -> None:
        ids = _store(fault, [throttled(1_000_000) for _ in range(4)])
        _wait(lambda: _count(ids, status="processing", progress__gt=0) >= 2, 60, "downloads under way")
        stack.kill_worker()

    @phase("kill -9 worker mid-upload")
    def _(fault: Fault) -> None:
        proxy.slow(4, times=6, when=is_upload_part)
        ids = _store(fault, [media.url("large.mp4?upload=slow") for _ in range(3)])
        _wait(lambda: _count(ids, stage="uploading") >= 1, 60, "an upload under way")
        time.sleep(1)
        stack.kill_worker()

    @phase("kill -9 worker between upload and status write")
    def _(fault: Fault) -> None:
        ids = _store(fault, [media.url("video.mp4?pause_complete=1") for _ in range(3)])
        _wait(lambda: _count(ids, stage="uploading") >= 1, 60, "the media stored")
        time.sleep(3)  # inside the 5 s pause after the upload
        stack.kill_worker()

    @phase("worker SIGTERM with jobs running")
    def _(fault: Fault) -> None:
        ids = _store(fault, [throttled(1_000_000) for _ in range(4)])
        _wait(lambda: _count(ids, status="processing") >= 3, 60, "jobs running")
        stack.pause_supervisor()
        stack.stop_worker()  # warm shutdown: jobs handed back within the grace period
        stack.start_worker()
        stack.supervise()

    for how, kill in (("SIGTERM", False), ("kill -9", True)):
        @phase(f"redis {how} with jobs in flight and queued")
        def _(fault: Fault, kill: bool = kill) -> None:
            ids = _store(fault, [throttled(2_000_000) for _ in range(44)])
            _wait(lambda: _count(ids, status="processing") >= 20, 90, "20 jobs in flight")
            stack.stop_redis(kill=kill)
            time.sleep(3)
            stack.start_redis()

    @phase("redis down at POST")
    def _(fault: Fault) -> None:
        stack.stop_redis(kill=False)
        _store(fault, [media.url("video.mp4") for _ in range(5)])  # 202 for each: rows kept, enqueue lost
        stack.start_redis()

    @phase("jobs that reach the hard limit")
    def _(fault: Fault) -> None:
        _store(fault, [media.url("video.mp4?stubborn=1") for _ in range(5)])

    @phase("duplicate deliveries")
    def _(fault: Fault) -> None:
        ids = _store(fault, [media.url("video.mp4") for _ in range(5)])
        for scene_id in ids:
            for _ in range(2):
                download_media_task.delay(scene_id)

    @phase("a job that kills its worker every time")
    def _(fault: Fault) -> None:
        # Every kill also kills whatever else runs: let the earlier faults settle first, so that their
        # scenes are not charged with this one's deaths.
        _wait(lambda: not Scene.objects.filter(status__in=["queued", "processing"]).exists(), 240,
              "the earlier faults to settle")
        _store(fault, [media.url("video.mp4?kill_worker=1")])

    @phase("deletes racing S3 500s")
    def _(fault: Fault) -> None:
        ids = _store(fault, [throttled(2_000_000) for _ in range(5)])
        # Tasks the killed worker of the previous phase had prefetched come back only after the broker's
        # visibility timeout (60 s here): wait longer than that.
        _wait(lambda: _count(ids, status__in=["processing", "completed"]) >= 5, 100, "jobs started")
        proxy.fail(500, times=12, when=lambda method, path: method in ("DELETE", "POST") and "delete" in path)
        time.sleep(2)
        for scene in Scene.objects.filter(pk__in=ids[:4]):
            fault.deleted.append(scene.pk)  # before the delete, which clears the instance's pk
            services.scene_delete(scene=scene)

    @phase("a full disk")
    def _(fault: Fault) -> None:
        tiny = stack.workdir / "tiny-tmp"
        tiny.mkdir(exist_ok=True)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(tiny)],
                                 capture_output=True).returncode == 0
        if not mounted:
            print("faults: cannot mount a small tmpfs here (not root?); the full-disk fault is skipped")
            return
        try:
            stack.pause_supervisor()
            stack.stop_worker()
            stack.start_worker({"TMPDIR": str(tiny)})
            stack.supervise()
            ids = _store(fault, [media.url("large.mp4") for _ in range(2)])
            _wait(lambda: _count(ids, status="failed") == len(ids), 120, "the full-disk jobs to fail")
            # Whatever a job left in its TMPDIR; named, so a leftover can be traced in the worker log.
            fault.temp_left = sorted(p.name for p in tiny.iterdir())  # type: ignore[attr-defined]
            if fault.temp_left:  # type: ignore[attr-defined]
                print(f"faults: left in the full disk's TMPDIR: {fault.temp_left}")  # type: ignore[attr-defined]
        finally:
            stack.pause_supervisor()
            stack.stop_worker()
            subprocess.run(["umount", str(tiny)], check=False)
            stack.start_worker()
            stack.supervise()

    return faults


# --- counting ---------------------------------------------------------------------------------------------------


def _objects(client: Any, bucket: str) -> dict[str, list[str]]:
    keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for item in page.get("Contents", [])]
    by_scene: dict[str, list[str]] = {}
    for key in keys:
        by_scene.setdefault(key.split("/")[1], []).append(key)
    return by_scene


def _open_uploads(client: Any, bucket: str) -> list[str]:
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def _bad(faults: list[Fault], client: Any, bucket: str, stack: Stack) -> dict[str, dict[str, int]]:
    from scenes.models import Scene

    objects = _objects(client, bucket)
    uploads = _open_uploads(client, bucket)
    table: dict[str, dict[str, int]] = {}
    for fault in faults:
        rows = {s.pk: s for s in Scene.objects.filter(pk__in=fault.scenes)}
        orphans = 0
        for scene_id in fault.scenes:
            scene = rows.get(scene_id)
            keys = objects.get(scene_id, [])
            if scene is None or scene.status != Scene.Status.COMPLETED:
                orphans += len(keys)
            else:
                orphans += len([k for k in keys if k not in (scene.storage_key, scene.thumbnail_key)])
        table[fault.name] = {
            "scenes": len(fault.scenes),
            "completed": sum(1 for s in rows.values() if s.status == "completed"),
            "failed": sum(1 for s in rows.values() if s.status == "failed"),
            "deleted": len(fault.deleted),
            "stuck": sum(1 for s in rows.values() if s.status in ("queued", "processing")),
            "lost": len([i for i in fault.scenes if i not in rows and i not in fault.deleted]),
            "orphan objects": orphans,
            "open uploads": len([k for k in uploads if k.split("/")[1] in fault.scenes]),
            "temp folders": len(getattr(fault, "temp_left", [])),
        }
    total_temp = len(list(stack.job_tmp.iterdir()))
    table["(not attributed)"] = {"temp folders": total_temp,
                                 "open uploads": len([k for k in uploads
                                                      if not any(k.split("/")[1] in f.scenes for f in faults)])}
    return table


BAD = ("stuck", "lost", "orphan objects", "open uploads", "temp folders")
COLUMNS = ("scenes", "completed", "failed", "deleted", *BAD, "operator actions")


def _print(table: dict[str, dict[str, int]], faults: list[Fault], settled_after: float | None) -> int:
    width = max(len(name) for name in table) + 2
    print("\n" + "fault".ljust(width) + " ".join(f"{c:>16}" for c in COLUMNS))
    totals = dict.fromkeys(COLUMNS, 0)
    for name, row in table.items():
        row["operator actions"] = sum(row.get(c, 0) for c in BAD)
        for column in COLUMNS:
            totals[column] += row.get(column, 0)
        print(name.ljust(width) + " ".join(f"{row.get(c, 0):>16}" for c in COLUMNS))
    print("total".ljust(width) + " ".join(f"{totals[c]:>16}" for c in COLUMNS))
    codes: dict[str, int] = {}
    from scenes.models import Scene

    for code in Scene.objects.filter(status="failed").values_list("error_code", flat=True):
        codes[code] = codes.get(code, 0) + 1
    print(f"\nfailed scenes by error code: {codes}")
    print("phase durations: " + ", ".join(f"{f.name} {f.seconds:.0f}s" for f in faults))
    if settled_after is None:
        print(f"NOT settled within {SETTLE_TIMEOUT:.0f}s after the last fault")
    else:
        rules = WORKER_SETTINGS
        print(f"settled {settled_after:.1f}s after the last fault (sweep every {rules['MEDIA_SWEEP_INTERVAL']}s, "
              f"stale after {rules['MEDIA_STALE_AFTER']}s, resend after {rules['MEDIA_RESEND_AFTER']}s)")
    bad = sum(totals[c] for c in BAD)
    print("RESULT: " + ("0 stuck, 0 lost, 0 orphans, 0 open uploads, 0 temp folders: no operator action needed"
                        if bad == 0 else f"{bad} thing(s) need an operator"))
    return 0 if bad == 0 else 1


def main(selected: list[str]) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="faults-"))
    os.environ["DATA_DIR"] = str(workdir / "data")
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mediastore.settings")
    for name, value in WORKER_SETTINGS.items():
        os.environ[name] = value  # the suite's own services (deletes, re-queues) run with the same rules
    import django

    django.setup()
    from django.core.management import call_command

    from tests.harness.faults import FaultProxy
    from tests.harness.media import MediaServer, generate_media
    from tests.harness.processes import free_port
    from tests.harness.services import celery_broker, r2_env, s3_server, s3_test_client, worker_environment

    call_command("migrate", verbosity=0)
    database_url = "sqlite:///" + str(workdir / "data" / "db.sqlite3")
    stack = Stack(workdir, database_url)
    stack.redis_port = free_port()  # type: ignore[attr-defined]
    started = time.monotonic()
    with s3_server(workdir) as endpoint, FaultProxy(endpoint) as proxy, \
            MediaServer(generate_media(workdir / "media")) as media:
        client = s3_test_client(endpoint)
        client.create_bucket(Bucket="faults")
        stack.start_redis()
        broker_url = f"redis://127.0.0.1:{stack.redis_port}/0"  # type: ignore[attr-defined]
        stack.worker_env = worker_environment(
            broker_url=broker_url, database_url=database_url, data_dir=workdir / "data",
            extra={**WORKER_SETTINGS, **r2_env(endpoint=proxy.url, bucket="faults"), "TMPDIR": str(stack.job_tmp)})
        from django.conf import settings

        settings.REDIS_URL = broker_url  # this process's live events and cancels go to the suite's Redis too
        with celery_broker(broker_url):
            stack.start_worker()
            stack.supervise()
            try:
                faults = run_faults(stack, media, proxy, selected)
                last_fault = time.monotonic()
                settled_after = _settle(faults, client, stack, since=last_fault)
                code = _print(_bad(faults, client, "faults", stack), faults, settled_after)
            finally:
                stack.pause_supervisor()
                stack.stop_worker()
                stack.stop_redis(kill=False)
        print(f"worker starts after the first: {stack.restarts - 1}, of which {stack.liveness_restarts} because "
              f"worker_health reported it stalled; whole run {time.monotonic() - started:.0f}s; logs in {workdir}")
    return code


def _settle(faults: list[Fault], client: Any, stack: Stack, *, since: float) -> float | None:
    """Wait until no scene is queued or processing and nothing is left over; the seconds that took."""
    from scenes.models import Scene

    ids = [i for f in faults for i in f.scenes]
    deadline = since + SETTLE_TIMEOUT
    while time.monotonic() < deadline:
        busy = Scene.objects.filter(pk__in=ids, status__in=["queued", "processing"]).exists()
        table = _bad(faults, client, "faults", stack)
        if not busy and all(row.get(c, 0) == 0 for row in table.values() for c in BAD):
            return time.monotonic() - since
        time.sleep(1)
    return None


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main(sys.argv[1:]))
