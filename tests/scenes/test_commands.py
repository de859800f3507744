"""Operator commands: their effect, their exit code, and --dry-run changing nothing."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.utils import timezone

from scenes import services
from scenes.models import Scene
from tests.harness import scene_states
from tests.harness.media import MediaServer
from tests.harness.processes import wait_until
from tests.harness.services import REPO_ROOT, r2_env


@pytest.fixture
def owner(db):
    return get_user_model().objects.create_user("operator")


def _run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def _failed(owner, code: str, *, age: dt.timedelta = dt.timedelta()) -> Scene:
    scene = services.scene_create(owner=owner, source_url=f"https://example.com/{code}.mp4")
    scene_states.fail(scene_id=scene.pk, error_code=code, error_message="m")
    Scene.objects.filter(pk=scene.pk).update(updated_at=timezone.now() - age)
    return scene


def _statuses() -> dict[str, str]:
    return dict(Scene.objects.values_list("id", "status"))


def test_requeue_failed_queues_by_error_code(owner):
    timeouts = [_failed(owner, "timeout") for _ in range(2)]
    other = _failed(owner, "not_found")

    output = _run("requeue_failed", "--error-code", "timeout")

    assert "requeue_failed: queued 2" in output
    statuses = _statuses()
    assert [statuses[s.pk] for s in timeouts] == ["queued", "queued"]
    assert statuses[other.pk] == "failed"


def test_requeue_failed_skips_permanent_failures_unless_asked(owner):
    transient = _failed(owner, "timeout")
    permanent = [_failed(owner, code) for code in ("not_found", "unsupported_url", "invalid_media")]

    first = _run("requeue_failed")
    left = [_statuses()[s.pk] for s in permanent]
    second = _run("requeue_failed", "--include-permanent")

    assert "skipping 3 permanent failure(s)" in first
    assert "requeue_failed: queued 1" in first
    assert _statuses()[transient.pk] == "queued"
    assert left == ["failed", "failed", "failed"]
    assert "requeue_failed: queued 3" in second
    assert [_statuses()[s.pk] for s in permanent] == ["queued", "queued", "queued"]


def test_requeue_failed_respects_since_and_limit(owner):
    old = _failed(owner, "timeout", age=dt.timedelta(days=3))
    recent = [_failed(owner, "timeout") for _ in range(3)]

    output = _run("requeue_failed", "--since", "24h", "--limit", "2")

    assert "queued 2" in output
    statuses = _statuses()
    assert statuses[old.pk] == "failed"
    assert sorted(statuses[s.pk] for s in recent) == ["failed", "queued", "queued"]


def test_requeue_failed_dry_run_changes_nothing(owner):
    scene = _failed(owner, "timeout")

    output = _run("requeue_failed", "--dry-run")

    assert "1 failed scene(s) would be queued (dry run)" in output
    assert _statuses()[scene.pk] == "failed"


def test_requeue_scene_queues_finished_scenes_and_refuses_processing_ones(owner):
    failed = _failed(owner, "timeout")
    busy = services.scene_create(owner=owner, source_url="https://example.com/busy.mp4")
    scene_states.start(scene_id=busy.pk)

    with pytest.raises(CommandError, match="1 scene"):
        _run("requeue_scene", failed.pk, busy.pk)

    statuses = _statuses()
    assert (statuses[failed.pk], statuses[busy.pk]) == ("queued", "processing")


def test_requeue_scene_unknown_id_fails_with_exit_code_1(tmp_path: Path):
    env = {**os.environ, "DATA_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO_ROOT, env=env, check=True, timeout=120)

    result = subprocess.run([sys.executable, "manage.py", "requeue_scene", "0" * 24], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 1
    assert "no such scene" in result.stderr
    assert "requeue_scene: queued 0, refused 1" in result.stdout


def test_requeue_stuck_takes_old_heartbeats_and_old_queued_but_not_fresh_ones(owner):
    dead = services.scene_create(owner=owner, source_url="https://example.com/dead.mp4")
    scene_states.start(scene_id=dead.pk)
    lost = services.scene_create(owner=owner, source_url="https://example.com/lost.mp4")
    alive = services.scene_create(owner=owner, source_url="https://example.com/alive.mp4")
    scene_states.start(scene_id=alive.pk)
    Scene.objects.filter(pk__in=[dead.pk, lost.pk]).update(updated_at=timezone.now() - dt.timedelta(hours=1))

    dry = _run("requeue_stuck", "--older-than", "30m", "--dry-run")
    assert "2 stuck scene(s) would be queued" in dry
    assert _statuses()[dead.pk] == "processing"

    output = _run("requeue_stuck", "--older-than", "30m")

    assert "requeue_stuck: queued 2" in output
    statuses = _statuses()
    assert (statuses[dead.pk], statuses[lost.pk], statuses[alive.pk]) == ("queued", "queued", "processing")
    assert Scene.objects.get(pk=lost.pk).updated_at > timezone.now() - dt.timedelta(minutes=1)


def test_purge_orphans_deletes_only_objects_without_a_scene(owner, settings, tmp_path: Path):
    settings.MEDIA_ROOT = tmp_path / "media"
    kept = services.scene_create(owner=owner, source_url="https://example.com/kept.mp4")
    for scene_id in (kept.pk, "f" * 24):
        path = tmp_path / "media" / "scenes" / scene_id / "media.mp4"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")

    dry = _run("purge_orphans", "--dry-run")
    assert f"would delete scenes/{'f' * 24}/media.mp4" in dry
    assert (tmp_path / "media" / "scenes" / ("f" * 24) / "media.mp4").exists()

    output = _run("purge_orphans")

    assert "deleted 1 orphaned object(s) of 1 scene(s)" in output
    assert not (tmp_path / "media" / "scenes" / ("f" * 24)).exists()
    assert (tmp_path / "media" / "scenes" / kept.pk / "media.mp4").exists()


def test_requeue_stuck_recovers_a_scene_whose_worker_was_killed(start_worker, media_server: MediaServer,
                                                              tmp_path: Path):
    from downloads.tasks import download_media_task

    env = {"MEDIA_MAX_FILESIZE": "20M", "MEDIA_DOWNLOAD_TIMEOUT": "120", "MEDIA_STALE_AFTER": "2"}
    first = start_worker(concurrency=4, env=env)
    owner = get_user_model().objects.create_user("killed")
    scene = services.scene_create(owner=owner, source_url=media_server.url("throttled.mp4?rate=500000"))
    download_media_task.delay(scene.pk)
    wait_until(lambda: (Scene.objects.get(pk=scene.pk).progress or 0) > 0, timeout=30, what="the download")

    first.kill()  # SIGKILL mid-download: the scene stays "processing" with a heartbeat that stops
    start_worker(concurrency=4, env=env)
    wait_until(lambda: Scene.objects.get(pk=scene.pk).updated_at < timezone.now() - dt.timedelta(seconds=3),
               timeout=30, what="the heartbeat to go stale")
    output = _run("requeue_stuck", "--older-than", "3s")
    wait_until(lambda: Scene.objects.get(pk=scene.pk).is_terminal, timeout=90, what="the scene to finish")

    scene.refresh_from_db()
    media_root = tmp_path / "worker-data" / "media"
    stored = sorted(str(p.relative_to(media_root)) for p in media_root.rglob("*") if p.is_file())
    assert "requeue_stuck: queued 1" in output
    assert scene.status == Scene.Status.COMPLETED
    assert scene.attempts == 2
    assert [key for key in stored if "media." in key] == [scene.storage_key]


def test_purge_orphans_aborts_uploads_no_job_will_finish(owner, settings, s3_endpoint: str, s3_bucket):
    client, bucket = s3_bucket
    for name, value in r2_env(endpoint=s3_endpoint, bucket=bucket).items():
        setattr(settings, name, value)
    running = services.scene_create(owner=owner, source_url="https://example.com/running.mp4")
    scene_states.start(scene_id=running.pk)
    failed = services.scene_create(owner=owner, source_url="https://example.com/failed.mp4")
    scene_states.fail(scene_id=failed.pk, error_code="internal_error", error_message="killed mid-upload")
    for scene_id in (running.pk, failed.pk, "c" * 24):
        client.create_multipart_upload(Bucket=bucket, Key=f"scenes/{scene_id}/media.mp4")

    output = _run("purge_orphans")

    assert "aborted 2 open upload(s)" in output
    left = [upload["Key"] for upload in client.list_multipart_uploads(Bucket=bucket)["Uploads"]]
    assert left == [f"scenes/{running.pk}/media.mp4"]
