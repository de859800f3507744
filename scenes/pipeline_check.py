"""The seed's step 0 as code: is every part of the pipeline there, configured alike, and working end to end?

Each check yields a ``Check`` (PASS, WARN or FAIL, with a reason); ``check_pipeline`` prints them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model

from mediastore.celery import app as celery_app
from mediastore.fingerprint import config_fingerprint
from mediastore.health import check_broker, check_database, check_object_store
from mediastore.liveness import check_workers
from scenes import check_sample, services
from scenes.check_sample import CHECK_USER
from scenes.models import Scene


@dataclass(frozen=True)
class Check:
    number: str
    name: str
    outcome: str  # PASS, WARN, FAIL
    reason: str

    def __str__(self) -> str:
        # Named in words; the seed's step number stays in brackets for whoever follows the old runbook.
        return f"{self.outcome} {self.name} [{self.number}]: {self.reason}"


def _attempt(number: str, name: str, check: Any) -> Check:
    try:
        reason = check()
    except Exception as exc:  # the reason is the answer
        return Check(number, name, "FAIL", f"{type(exc).__name__}: {str(exc)[:300]}")
    return Check(number, name, "PASS", reason)


def _worker_info(timeout: float) -> dict[str, Any]:
    from downloads.tasks import worker_info

    return dict(worker_info.delay().get(timeout=timeout))


def run_checks(*, e2e: bool, timeout: float = 60.0) -> Iterator[Check]:
    yield _attempt("0.1", "database", check_database)
    yield _attempt("0.1", "broker", check_broker)
    yield _attempt("0.1", "object store", check_object_store)
    answers = celery_app.control.ping(timeout=3.0) or []
    if not answers:
        yield Check("0.1", "worker", "FAIL", "no worker answered a ping within 3 s; is the worker running?")
        return
    yield Check("0.1", "worker", "PASS", f"{len(answers)} worker(s) answered")
    yield _attempt("0.1", "workers taking work", check_workers)
    try:
        info = _worker_info(timeout=min(timeout, 20))
    except Exception as exc:
        yield Check("0.1", "worker task", "FAIL", f"the worker did not run a task: {type(exc).__name__}")
        return
    yield _fingerprint_check(info["fingerprint"])
    yield from _version_checks(info["versions"])
    yield from _youtube_checks(info)
    if e2e:
        yield from _end_to_end(timeout=timeout)


def _fingerprint_check(worker: dict[str, str]) -> Check:
    ours = config_fingerprint()
    differ = sorted(name for name in ours if ours[name] != worker.get(name))
    if differ:
        return Check("0.1.1", "configuration", "FAIL",
                     f"web and worker differ in {', '.join(differ)} (values compared hashed)")
    return Check("0.1.1", "configuration", "PASS", f"web and worker agree on {len(ours)} settings")


YTDLP_MAX_AGE_DAYS = 60  # sites change; a yt-dlp older than this probably misses their latest changes


def _youtube_checks(info: dict[str, Any], *, today: dt.date | None = None) -> Iterator[Check]:
    """What YouTube needs of the worker: a recent yt-dlp and a JavaScript runtime (with yt-dlp-ejs)."""
    version = str(info["versions"].get("yt-dlp", "not installed"))
    try:
        released = dt.date(*(int(part) for part in version.split(".")[:3]))
    except (TypeError, ValueError):
        yield Check("0.1.2", "yt-dlp age", "WARN", f"cannot tell the age of yt-dlp {version}")
    else:
        age = ((today or dt.date.today()) - released).days
        if age > YTDLP_MAX_AGE_DAYS:
            yield Check("0.1.2", "yt-dlp age", "WARN", f"yt-dlp {version} is {age} days old (over "
                        f"{YTDLP_MAX_AGE_DAYS}); sites change often: `make update-ytdlp` moves it to the newest")
        else:
            yield Check("0.1.2", "yt-dlp age", "PASS", f"yt-dlp {version}, {age} days old")
    runtime = info.get("js_runtime")
    if runtime:
        yield Check("0.1.2", "JavaScript runtime", "PASS", f"{runtime} (yt-dlp-ejs "
                    f"{info['versions'].get('yt-dlp-ejs', 'not installed')})")
    else:
        yield Check("0.1.2", "JavaScript runtime", "WARN", "none found: YouTube downloads lose formats or fail; "
                    "the pinned deno package provides one, or set MEDIA_JS_RUNTIME to deno, node or bun")


def _version_checks(worker: dict[str, str]) -> Iterator[Check]:
    from downloads.tasks import package_versions

    for package, ours in package_versions().items():
        theirs = worker.get(package, "not installed")
        if ours == theirs:
            yield Check("0.1.2", f"version {package}", "PASS", ours)
        elif ours.split(".")[0] != theirs.split(".")[0]:
            yield Check("0.1.2", f"version {package}", "FAIL", f"web {ours}, worker {theirs}: major versions differ")
        else:
            yield Check("0.1.2", f"version {package}", "WARN", f"web {ours}, worker {theirs}")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


def _generate_sample(path: Path) -> int:
    """A 2 s video with sound, made by ffmpeg at ``path``; returns its size."""
    import subprocess

    subprocess.run([settings.FFMPEG_PATH, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi",
                    "-i", "testsrc2=size=320x240:rate=25", "-f", "lavfi", "-i", "sine=frequency=440",
                    "-t", "2", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    str(path)], check=True, timeout=60)
    return path.stat().st_size


@contextlib.contextmanager
def _web_sample(origin: str) -> Iterator[tuple[str, int]]:
    """The sample in the folder the web serves it from (``DATA_DIR``, a volume web and workers share in
    compose), at its signed URL on ``origin``; yields (url, size) and removes the file after."""
    path = check_sample.new_sample_path()
    try:
        size = _generate_sample(path)
        yield check_sample.sample_url(origin=origin, path=path), size
    finally:
        path.unlink(missing_ok=True)


def _web_serves(url: str, size: int) -> str | None:
    """What is wrong when the web does not answer for the sample as the worker will ask for it, else None."""
    import urllib.error
    import urllib.request

    # Straight to the web, as the worker goes: a proxy in the environment is not on that path.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        # The URL is ours: the configured origin (http or https, checked at start-up) and the sample path.
        with opener.open(urllib.request.Request(url, method="HEAD"), timeout=10) as response:  # noqa: S310
            length = response.headers.get("Content-Length")
    except urllib.error.HTTPError as exc:
        if exc.code == 400:  # Django's answer to a Host it does not serve
            return (f"the web answered 400 for the sample: is the host of PIPELINE_CHECK_SAMPLE_ORIGIN "
                    f"({settings.PIPELINE_CHECK_SAMPLE_ORIGIN}) in DJANGO_ALLOWED_HOSTS?")
        return (f"the web answered {exc.code} for the sample: does it read the same DATA_DIR "
                f"({settings.DATA_DIR}) and secret key as this command?")
    except OSError as exc:
        return (f"the web did not answer at {settings.PIPELINE_CHECK_SAMPLE_ORIGIN} "
                f"(PIPELINE_CHECK_SAMPLE_ORIGIN): {type(exc).__name__}: {str(exc)[:200]}")
    if length != str(size):
        return f"the web announced {length} bytes for the sample, not {size}"
    return None


@contextlib.contextmanager
def _sample_server() -> Iterator[tuple[str, int]]:
    """A short generated video served from a loopback HTTP server; yields (url, size)."""
    with tempfile.TemporaryDirectory(prefix="check-pipeline-") as folder:
        sample = Path(folder) / "sample.mp4"
        size = _generate_sample(sample)
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=folder))
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/sample.mp4", size
        finally:
            server.shutdown()
            server.server_close()


def _stored_size(key: str) -> int | None:
    if settings.R2_BUCKET:
        from scenes.links import store_client

        try:
            return int(store_client().head_object(Bucket=settings.R2_BUCKET, Key=key)["ContentLength"])
        except Exception:
            return None
    path = Path(settings.MEDIA_ROOT) / key
    return path.stat().st_size if path.is_file() else None


def _end_to_end(*, timeout: float) -> Iterator[Check]:
    owner, _ = get_user_model().objects.get_or_create(username=CHECK_USER, defaults={"is_active": False})
    origin = settings.PIPELINE_CHECK_SAMPLE_ORIGIN
    scene: Scene | None = None
    try:
        # With an origin the web serves the sample, wherever the worker runs; without one, this process does.
        with _web_sample(origin) if origin else _sample_server() as (url, size):
            problem = _web_serves(url, size) if origin else None
            if problem:
                yield Check("0.2", "sample", "FAIL", problem)
                return
            yield Check("0.2", "sample", "PASS", f"{size} bytes generated with ffmpeg, served at {url}")
            scene = services.scene_store(owner=owner, source_url=url, title="check_pipeline sample")
            deadline = time.monotonic() + timeout
            while not Scene.objects.get(pk=scene.pk).is_terminal and time.monotonic() < deadline:
                time.sleep(0.2)
            scene.refresh_from_db()
        if scene.status != Scene.Status.COMPLETED:
            reason = f"{scene.status}: {scene.error_code} {scene.error_message}".strip()
            if scene.error_code == "url_not_allowed" and origin:
                reason += ("; the worker refused the web: is PIPELINE_CHECK_SAMPLE_ORIGIN set alike for web and "
                           "worker?")
            elif scene.error_code == "url_not_allowed":
                # The worker refusing loopback is right; the sample is served there, so say how to check.
                reason += ("; the sample is served from 127.0.0.1 of this process, which the address policy "
                           "refuses: set PIPELINE_CHECK_SAMPLE_ORIGIN (where the worker reaches the web, e.g. "
                           "http://web:8000) for web and worker alike, or, with the worker on this host, "
                           "MEDIA_ALLOWED_NETWORKS=127.0.0.1/32 for both")
            yield Check("0.3", "ingest", "FAIL", f"the sample did not complete within {timeout:.0f}s ({reason})")
            return
        assert scene.completed_at is not None
        took = (scene.completed_at - scene.created_at).total_seconds()
        yield Check("0.3", "ingest", "PASS", f"completed in {took:.1f}s")
        stored = _stored_size(scene.storage_key)
        yield Check("0.4", "stored object", "PASS" if stored == scene.size_bytes else "FAIL",
                    f"{scene.storage_key}: {stored} bytes stored, {scene.size_bytes} probed")
        leftovers = [name for name in _worker_info(timeout=20)["job_dirs"] if scene.pk in name]
        yield Check("0.5", "worker temp dir", "FAIL" if leftovers else "PASS",
                    f"left behind: {', '.join(leftovers)}" if leftovers else "the job's folder was removed")
        key = scene.storage_key
        services.scene_delete(scene=scene)
        scene = None
        deadline = time.monotonic() + 30
        while _stored_size(key) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        gone = _stored_size(key) is None
        yield Check("0.6", "delete", "PASS" if gone else "FAIL",
                    "the scene and its object are gone" if gone else f"{key} still stored after 30 s")
    finally:
        if scene is not None and Scene.objects.filter(pk=scene.pk).exists():
            services.scene_delete(scene=scene)  # leave nothing behind, whatever failed

