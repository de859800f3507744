"""A Python client generated from /api/schema/ by openapi-python-client, with no hand edits, stores a URL and
follows it to completed against the real stack, through the readable method names (store_media, get_scene)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from tests.harness.media import MediaServer
from tests.harness.tokens import api_token

BIN = Path(sys.executable).parent


@pytest.fixture
def generated(tmp_path: Path, start_web) -> tuple[object, str]:
    """The generated package ``mediastore_client`` importable, and the server it was generated from."""
    web = start_web()
    schema = tmp_path / "schema.json"
    with urllib.request.urlopen(web.url + "/api/schema/?format=json", timeout=30) as answer:
        schema.write_bytes(answer.read())
    subprocess.run([str(BIN / "openapi-python-client"), "generate", "--path", str(schema), "--meta", "none",
                    "--output-path", str(tmp_path / "mediastore_client")],
                   check=True, capture_output=True, text=True, timeout=300,
                   env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module("mediastore_client"), web.url
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n == "mediastore_client" or n.startswith("mediastore_client.")]:
            del sys.modules[name]


def test_a_generated_client_stores_and_follows_a_scene_to_completed(generated, start_worker,
                                                                   media_server: MediaServer, settings):
    settings.MEDIA_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    package, url = generated
    token = api_token(get_user_model().objects.create_user("generated-client"))
    start_worker(concurrency=2)
    store_media = importlib.import_module("mediastore_client.api.media.store_media")
    get_scene = importlib.import_module("mediastore_client.api.scenes.get_scene")
    store_request = importlib.import_module("mediastore_client.models.store_request").StoreRequest
    client = package.AuthenticatedClient(base_url=url, token=token, prefix="Token")  # type: ignore[attr-defined]

    with client:
        stored = store_media.sync(client=client, body=store_request(url=media_server.url("video.mp4")))
        statuses = [str(stored.status.value)]
        deadline = time.monotonic() + 90
        while statuses[-1] not in {"completed", "failed"} and time.monotonic() < deadline:
            time.sleep(0.2)
            scene = get_scene.sync(client=client, id=stored.id)
            if str(scene.status.value) != statuses[-1]:
                statuses.append(str(scene.status.value))

    assert statuses[0] == "queued"
    assert statuses[-1] == "completed", statuses
    assert scene.size_bytes == media_server.files.video.stat().st_size
    assert str(scene.error_code.value) == ""  # the enum holds the blank code
