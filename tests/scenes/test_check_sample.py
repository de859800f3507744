"""check_pipeline's sample on the web: served for a signed token only, and fetched past the address policy by
the check's own scene only."""

from __future__ import annotations

import os
import time
from pathlib import Path
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.core import signing

from scenes import check_sample
from scenes.models import Scene

ORIGIN = "http://web:8000"
SAMPLE = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40


@pytest.fixture
def data_dir(settings, tmp_path: Path) -> Path:
    settings.DATA_DIR = tmp_path
    return tmp_path


@pytest.fixture
def sample(data_dir: Path) -> Path:
    path = check_sample.new_sample_path()
    path.write_bytes(SAMPLE)
    return path


def _path_of(url: str) -> str:
    return url.removeprefix(ORIGIN)


def test_a_signed_sample_url_serves_the_file_with_its_length(client, sample: Path):
    url = check_sample.sample_url(origin=ORIGIN, path=sample)

    response = client.get(_path_of(url))

    assert response.status_code == 200
    assert response["Content-Type"] == "video/mp4"
    assert response["Content-Length"] == str(len(SAMPLE))
    assert b"".join(response.streaming_content) == SAMPLE


def test_head_answers_the_length_without_the_body(client, sample: Path, db):
    url = check_sample.sample_url(origin=ORIGIN, path=sample)

    response = client.head(_path_of(url))
    response.close()  # servers close it once sent (request_finished: hence db); the test client does not

    assert response.status_code == 200
    assert response["Content-Length"] == str(len(SAMPLE))
    assert b"".join(response.streaming_content) == b""


def test_a_token_whose_name_was_changed_is_not_found(client, sample: Path):
    other = sample.with_name("0" * 32 + ".mp4")
    other.write_bytes(SAMPLE)
    url = check_sample.sample_url(origin=ORIGIN, path=sample)
    _, stamp, signature = _path_of(url).removesuffix(".mp4").rsplit("/", 1)[1].split(":")

    response = client.get(f"/check/sample/{other.stem}:{stamp}:{signature}.mp4")

    assert response.status_code == 404


def test_an_expired_token_is_not_found(client, sample: Path):
    made_long_ago = signing.b62_encode(int(time.time()) - check_sample.MAX_AGE - 1)
    with mock.patch.object(signing.TimestampSigner, "timestamp", return_value=made_long_ago):
        url = check_sample.sample_url(origin=ORIGIN, path=sample)

    response = client.get(_path_of(url))

    assert response.status_code == 404


def test_a_removed_sample_is_not_found(client, sample: Path):
    url = check_sample.sample_url(origin=ORIGIN, path=sample)
    sample.unlink()

    response = client.get(_path_of(url))

    assert response.status_code == 404


@pytest.mark.parametrize("name", ["../secret_key", "../../etc/passwd", "secret_key"])
def test_even_a_validly_signed_name_outside_the_sample_shape_is_not_found(client, data_dir: Path, name: str):
    (data_dir / "secret_key").write_text("do not serve")
    token = signing.TimestampSigner(salt="mediastore.check_sample").sign(name)

    response = client.get(f"/check/sample/{token}.mp4")

    assert response.status_code == 404


@pytest.mark.parametrize("path", ["/check/sample/..%2Fsecret_key.mp4", "/check/sample/../secret_key.mp4",
                                  "/check/sample/%2E%2E%2Fsecret_key.mp4"])
def test_a_path_in_the_url_reaches_no_file(client, data_dir: Path, path: str):
    (data_dir / "secret_key").write_text("do not serve")

    response = client.get(path)

    assert response.status_code == 404


def test_a_post_is_refused(client, sample: Path):
    url = check_sample.sample_url(origin=ORIGIN, path=sample)

    response = client.post(_path_of(url))

    assert response.status_code == 405


def test_a_sample_left_by_a_killed_check_is_removed_when_the_next_one_starts(data_dir: Path, sample: Path):
    long_ago = time.time() - check_sample.MAX_AGE - 1
    os.utime(sample, (long_ago, long_ago))

    check_sample.new_sample_path()

    assert not sample.exists()


# --- The allowance: which scene's job may fetch from the web -----------------------------------------------


def _scene(*, username: str, url: str) -> Scene:
    owner, _ = get_user_model().objects.get_or_create(username=username)
    return Scene.objects.create(owner=owner, source_url=url)


@pytest.fixture
def origin_set(settings, data_dir: Path, db) -> str:
    settings.PIPELINE_CHECK_SAMPLE_ORIGIN = ORIGIN
    return ORIGIN


def test_the_check_users_sample_scene_may_fetch_from_the_origin(origin_set: str, sample: Path):
    scene = _scene(username=check_sample.CHECK_USER, url=check_sample.sample_url(origin=origin_set, path=sample))

    assert check_sample.egress_origins(scene_id=scene.pk) == (ORIGIN,)


def test_anyone_elses_scene_with_the_same_url_gets_no_allowance(origin_set: str, sample: Path):
    scene = _scene(username="alice", url=check_sample.sample_url(origin=origin_set, path=sample))

    assert check_sample.egress_origins(scene_id=scene.pk) == ()


@pytest.mark.parametrize("url", [
    f"{ORIGIN}/admin/", f"{ORIGIN}/metrics", "http://web:8001/check/sample/x:y:z.mp4",
    "https://web:8000/check/sample/x:y:z.mp4", f"{ORIGIN}/check/sample/x:y:z.mp4?next=/admin/",
    f"{ORIGIN}/check/sample/a/../../admin/x.mp4", "http://93.184.216.34/video.mp4",
])
def test_the_check_users_scene_elsewhere_gets_no_allowance(origin_set: str, url: str):
    scene = _scene(username=check_sample.CHECK_USER, url=url)

    assert check_sample.egress_origins(scene_id=scene.pk) == ()


def test_no_allowance_while_no_origin_is_configured(settings, data_dir: Path, sample: Path, db):
    settings.PIPELINE_CHECK_SAMPLE_ORIGIN = None
    scene = _scene(username=check_sample.CHECK_USER, url=check_sample.sample_url(origin=ORIGIN, path=sample))

    assert check_sample.egress_origins(scene_id=scene.pk) == ()
