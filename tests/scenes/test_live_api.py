"""``GET /api/v1/scenes/events`` on the real server (gunicorn + uvicorn worker, the test database, the
harness's Redis): what a client receives, resumes, may see, and how a stream ends."""

from __future__ import annotations

import re

import pytest
import requests
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from scenes import services
from scenes.models import Scene
from tests.harness.services import WebServer
from tests.harness.sse import EventStream
from tests.harness.tokens import api_token
from tests.scenes.conftest import PUBLIC_URL

EVENTS = "/api/v1/scenes/events"


def _user(name: str, **fields) -> tuple[object, str]:
    user = get_user_model().objects.create_user(name, **fields)
    return user, api_token(user)


@pytest.fixture
def alice(transactional_db):
    return _user("alice")


@pytest.fixture
def bob(transactional_db):
    return _user("bob")


@pytest.fixture
def web(start_web) -> WebServer:
    return start_web()


def _stream(web: WebServer, token: str, query: str = "", **headers: str) -> EventStream:
    return EventStream(f"{web.url}{EVENTS}{query}", headers={"Authorization": f"Token {token}", **headers})


def _queued(owner) -> Scene:
    return services.scene_create(owner=owner, source_url=PUBLIC_URL)


def _cancel(web: WebServer, token: str, scene: Scene) -> None:
    response = requests.post(f"{web.url}/api/v1/scenes/{scene.pk}/cancel", timeout=10,
                             headers={"Authorization": f"Token {token}"})
    assert response.status_code == 202, response.text


def test_without_credentials_the_stream_is_refused_with_the_api_error_envelope(web):
    response = requests.get(f"{web.url}{EVENTS}", timeout=10)

    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["WWW-Authenticate"] == "Token"
    assert response.json()["error"]["code"] == "not_authenticated"


def test_a_change_made_through_the_api_arrives_on_the_stream(web, alice):
    owner, token = alice
    scene = _queued(owner)
    with _stream(web, token) as stream:
        stream.until("ready")

        _cancel(web, token, scene)
        event, _ = stream.until("scene")

    assert stream.status == 200
    assert stream.response.getheader("Content-Type") == "text/event-stream"
    assert re.fullmatch(r"\d+-\d+", event.id or "")
    assert event.json["transition"] == "cancel"
    assert (event.json["scene"]["id"], event.json["scene"]["status"]) == (scene.pk, "cancelled")


@pytest.mark.parametrize("how", ["header", "query"])
def test_a_client_that_resumes_gets_what_it_missed_first_then_the_live_events(web, alice, how):
    owner, token = alice
    missed, later = [_queued(owner) for _ in range(2)], _queued(owner)
    with _stream(web, token) as stream:
        ready, _ = stream.until("ready")
    last_seen = ready.json["last_event_id"]
    for scene in missed:
        _cancel(web, token, scene)

    resume = {"Last-Event-ID": last_seen} if how == "header" else {}
    with _stream(web, token, "" if resume else f"?last_event_id={last_seen}", **resume) as stream:
        _, replayed = stream.until("ready")
        _cancel(web, token, later)
        live, _ = stream.until("scene")

    replayed_scenes = [m.json["scene"]["id"] for m in replayed if m.event == "scene"]
    assert replayed_scenes == [scene.pk for scene in missed]
    assert live.json["scene"]["id"] == later.pk


def test_other_peoples_changes_never_reach_the_stream(web, alice, bob):
    (owner, token), (other, other_token) = alice, bob
    theirs, mine = _queued(other), _queued(owner)
    with _stream(web, token) as stream:
        stream.until("ready")

        _cancel(web, other_token, theirs)
        _cancel(web, token, mine)
        event, _ = stream.until("scene")

    assert event.json["scene"]["id"] == mine.pk


def test_staff_who_may_view_every_scene_see_everyones_changes(web, alice, bob):
    (owner, token), (staff, staff_token) = alice, bob
    staff.is_staff = True
    staff.save()
    staff.user_permissions.add(Permission.objects.get(codename="view_scene"))
    scene = _queued(owner)
    with _stream(web, staff_token) as stream:
        stream.until("ready")

        _cancel(web, token, scene)
        event, _ = stream.until("scene")

    assert event.json["scene"]["id"] == scene.pk


def test_the_scene_filter_narrows_the_stream_to_one_scene(web, alice):
    owner, token = alice
    other, wanted = _queued(owner), _queued(owner)
    with _stream(web, token, f"?scene={wanted.pk}") as stream:
        stream.until("ready")

        _cancel(web, token, other)
        _cancel(web, token, wanted)
        event, _ = stream.until("scene")

    assert event.json["scene"]["id"] == wanted.pk


def test_a_quiet_stream_sends_keep_alive_comments(start_web, alice):
    _, token = alice
    web = start_web(env={"LIVE_HEARTBEAT": "1"})
    with _stream(web, token) as stream:
        stream.until("ready")

        quiet = stream.next(timeout=3)

    assert quiet is not None
    assert (quiet.event, quiet.comments) == (None, ["keep-alive"])


def test_an_id_that_is_no_event_id_is_refused(web, alice):
    _, token = alice

    response = requests.get(f"{web.url}{EVENTS}", timeout=10,
                            headers={"Authorization": f"Token {token}", "Last-Event-ID": "yesterday"})

    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["last_event_id"]


def test_a_stopping_server_ends_its_streams_so_clients_reconnect(web, alice):
    _, token = alice
    with _stream(web, token) as stream:
        stream.until("ready")

        web.stop()
        ending, _ = stream.until("shutdown")
        after = stream.next(timeout=5)

    assert ending.json["resume"] is True
    assert after is None  # the server closed the stream


@pytest.mark.parametrize("path", ["/api/v1/scenes/events", "/api/v1/scenes/events/"])
def test_another_method_than_get_is_405_in_the_api_envelope_not_a_csrf_page(db, path):
    # Found by the schema fuzzer: DELETE /api/v1/scenes/events/ met Django's CSRF check first (403, HTML).
    from django.test import Client

    owner = get_user_model().objects.create_user("deleter")
    response = Client(enforce_csrf_checks=True).delete(path, HTTP_AUTHORIZATION=f"Bearer {api_token(owner)}")

    assert response.status_code == 405
    assert response["Content-Type"].startswith("application/json")
