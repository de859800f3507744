"""The status page through Django's test client: what each view answers, to htmx and to a plain browser."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
import redis
from django.test import Client
from django.utils import timezone

from scenes.models import Project, Scene
from scenes.templatetags.scene_format import clock
from tests.scenes.conftest import PUBLIC_URL

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def page(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def _scene(owner, **fields) -> Scene:
    return Scene.objects.create(owner=owner, source_url=fields.pop("source_url", PUBLIC_URL), **fields)


def _row_ids(html: str) -> list[str]:
    return re.findall(r'data-scene-id="([0-9a-f]{24})"', html)


def _queued_task_args(broker_url: str) -> list[str]:
    """The arguments of every task on the broker, as Celery writes them (``"['<id>']"``)."""
    client = redis.Redis.from_url(broker_url)
    try:
        return [json.loads(raw)["headers"]["argsrepr"] for raw in client.lrange("celery", 0, -1)]
    finally:
        client.close()


# Enqueueing happens on commit: tests that look at the broker commit for real.
commits = pytest.mark.django_db(transaction=True)


# --- Signed-in only ---------------------------------------------------------------------------------------

def test_anonymous_visitor_is_sent_to_the_login_page(client):
    response = client.get("/")

    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/"


def test_anonymous_htmx_request_is_redirected_by_header_not_swapped(client, alice):
    scene = _scene(alice)

    response = client.get(f"/scenes/{scene.pk}/row", **HX, HTTP_HX_CURRENT_URL="http://testserver/?status=failed")

    assert response.status_code == 200
    assert response["HX-Redirect"] == "/accounts/login/?next=/%3Fstatus%3Dfailed"
    assert response.content == b""


def test_login_page_signs_in_and_lands_on_the_page(client, alice):
    form = client.get("/accounts/login/?next=/")
    response = client.post("/accounts/login/", {"username": "alice", "password": "alice-pass-123", "next": "/"})

    assert form.status_code == 200
    assert b'href="/static/scenes/app.css"' in form.content
    assert response.status_code == 302
    assert response["Location"] == "/"


def test_login_page_says_when_the_password_is_wrong(client, alice):
    response = client.post("/accounts/login/", {"username": "alice", "password": "nope"})

    assert response.status_code == 200
    assert b"Please enter a correct username and password" in response.content


# --- The list ---------------------------------------------------------------------------------------------

def test_list_shows_own_scenes_newest_first_and_not_others(page, alice, bob):
    older = _scene(alice, title="older")
    newer = _scene(alice, title="newer")
    _scene(bob, title="bob's")

    response = page.get("/")

    assert response.status_code == 200
    assert _row_ids(response.content.decode()) == [newer.pk, older.pk]
    assert b"bob&#x27;s" not in response.content


def test_list_shows_every_field_of_a_row(page, alice):
    project = Project.objects.create(owner=alice, name="Holidays")
    _scene(alice, status=Scene.Status.COMPLETED, title="Beach <b>day</b>", duration=125.4, size_bytes=12_345_678,
           width=1280, height=720, storage_key="scenes/a/media.mp4", thumbnail_key="scenes/a/thumb.jpg",
           project=project)
    _scene(alice, status=Scene.Status.FAILED, error_code="not_found", error_message="The source answered 404.")
    _scene(alice, status=Scene.Status.PROCESSING, stage=Scene.Stage.DOWNLOADING, progress=37)

    html = page.get("/").content.decode()

    assert "Beach &lt;b&gt;day&lt;/b&gt;" in html  # titles are untrusted: escaped
    assert "2:05" in html
    assert "11.8\xa0MB" in html
    assert "1280\u00d7720" in html
    assert "Holidays" in html
    assert re.search(r'<img src="[^"]*/thumbnail"', html)
    assert "Open media" in html
    assert "not_found" in html
    assert "The source answered 404." in html
    assert "Retry" in html
    assert re.search(r'<progress max="100" value="37"', html)
    assert ">37%<" in html
    assert "Downloading" in html
    assert html.count("Delete</a>") == 3


def test_list_is_filtered_by_status(page, alice):
    failed = _scene(alice, status=Scene.Status.FAILED)
    _scene(alice, status=Scene.Status.COMPLETED)

    response = page.get("/?status=failed")

    assert _row_ids(response.content.decode()) == [failed.pk]


def test_unknown_status_filter_says_so_and_shows_everything(page, alice):
    _scene(alice, status=Scene.Status.FAILED)
    _scene(alice, status=Scene.Status.COMPLETED)

    response = page.get("/?status=bogus")

    assert len(_row_ids(response.content.decode())) == 2
    assert "There is no status “bogus”; showing every scene." in response.content.decode()


def test_list_is_paginated_20_to_a_page(page, alice):
    scenes = [_scene(alice) for _ in range(25)]

    first = page.get("/").content.decode()
    second = page.get("/?page=2").content.decode()

    assert _row_ids(first) == [s.pk for s in reversed(scenes[5:])]
    assert _row_ids(second) == [s.pk for s in reversed(scenes[:5])]
    assert 'href="?page=2" rel="next"' in first
    assert "Page 1 of 2" in first


def test_empty_list_says_how_to_start(page):
    assert b"No scenes yet: paste a URL above." in page.get("/").content


# --- Live rows --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [Scene.Status.QUEUED, Scene.Status.PROCESSING])
def test_unfinished_row_polls_itself_every_second(page, alice, status):
    scene = _scene(alice, status=status)

    html = page.get(f"/scenes/{scene.pk}/row", **HX).content.decode()

    # ... while the page's live stream is down (window.msLive, scenes/app.js).
    assert f'hx-get="/scenes/{scene.pk}/row" hx-trigger="every 1s [!window.msLive]" hx-swap="outerHTML"' in html


def test_page_resumes_its_live_stream_from_the_newest_event_at_render_time(page, broker_url):
    client = redis.Redis.from_url(broker_url)
    newest = client.xadd("mediastore:scene-events", {"event": "{}"}).decode()
    client.close()

    html = page.get("/").content.decode()

    assert f'data-events="/api/v1/scenes/events" data-events-from="{newest}"' in html


def test_page_without_redis_still_opens_its_live_stream_without_a_resume_point(page):
    html = page.get("/").content.decode()  # REDIS_URL refuses (tests/conftest.py)

    assert 'data-events="/api/v1/scenes/events">' in html


@pytest.mark.parametrize("status", [Scene.Status.COMPLETED, Scene.Status.FAILED])
def test_finished_row_does_not_poll(page, alice, status):
    scene = _scene(alice, status=status)

    html = page.get(f"/scenes/{scene.pk}/row", **HX).content.decode()

    assert f'data-status="{status}"' in html
    assert "hx-trigger" not in html
    assert "hx-get" not in html


def test_row_of_a_deleted_scene_stops_polling_and_removes_itself(page, alice):
    scene = _scene(alice)
    scene_id = scene.pk
    scene.delete()

    response = page.get(f"/scenes/{scene_id}/row", **HX)

    assert response.status_code == 286  # htmx: stop polling; the empty body replaces the row
    assert response.content == b""


def test_row_of_someone_elses_scene_reveals_nothing(page, bob):
    scene = _scene(bob, title="secret")

    fragment = page.get(f"/scenes/{scene.pk}/row", **HX)
    plain = page.get(f"/scenes/{scene.pk}/row")

    assert fragment.status_code == 286
    assert fragment.content == b""
    assert plain.status_code == 404
    assert b"secret" not in plain.content
    assert b"Back to your scenes" in plain.content


# --- Submitting -------------------------------------------------------------------------------------------

@commits
def test_submit_stores_and_answers_with_the_new_row_and_a_fresh_form(page, alice, broker_url):
    response = page.post("/scenes/", {"url": PUBLIC_URL}, **HX)

    scene = Scene.objects.get(owner=alice)
    html = response.content.decode()
    assert response.status_code == 202
    assert scene.status == Scene.Status.QUEUED
    assert scene.source_url == PUBLIC_URL
    assert _row_ids(html) == [scene.pk]
    assert 'hx-trigger="every 1s [!window.msLive]"' in html
    assert re.search(r'<form id="store-form"[^>]*hx-swap-oob="true"', html)
    assert 'value=""' in html  # the URL field is emptied for the next one
    assert _queued_task_args(broker_url) == [repr([scene.pk])]


def test_submit_files_the_scene_under_the_chosen_project(page, alice, broker_url):
    project = Project.objects.create(owner=alice, name="Holidays")

    page.post("/scenes/", {"url": PUBLIC_URL, "project": project.pk}, **HX)

    assert Scene.objects.get(owner=alice).project == project


def test_submit_refuses_someone_elses_project(page, bob):
    project = Project.objects.create(owner=bob, name="Bob's")

    response = page.post("/scenes/", {"url": PUBLIC_URL, "project": project.pk}, **HX)

    assert response.status_code == 400
    assert b"That project does not exist any more" in response.content
    assert not Scene.objects.exists()


def test_submit_without_javascript_redirects_back_to_the_list(page, alice, broker_url):
    response = page.post("/scenes/", {"url": PUBLIC_URL})

    assert response.status_code == 302
    assert response["Location"] == "/"
    assert Scene.objects.filter(owner=alice).count() == 1


@pytest.mark.parametrize(("url", "status", "words"), [
    ("ftp://example.com/v.mp4", 400, "Only http:// and https:// URLs are accepted."),
    ("", 400, "Paste the URL of a post or a video."),
    ("http://10.1.2.3/v.mp4", 422, "points to an address this server does not fetch from."),
    ("http://127.0.0.1/v.mp4", 422, "points to an address this server does not fetch from."),
])
def test_bad_url_is_explained_next_to_the_field(page, url, status, words):
    response = page.post("/scenes/", {"url": url}, **HX)

    html = response.content.decode()
    assert response.status_code == status
    assert response["HX-Retarget"] == "#store-form"
    assert response["HX-Reswap"] == "outerHTML"
    assert re.search(r'<p class="field-error" id="url-error" role="alert">[^<]*' + re.escape(words), html)
    assert not Scene.objects.exists()


def test_bad_url_without_javascript_shows_the_whole_page_with_the_error(page):
    response = page.post("/scenes/", {"url": "ftp://example.com/v.mp4"})

    assert response.status_code == 400
    assert b'id="scene-rows"' in response.content
    assert b"Only http:// and https://" in response.content


def test_submit_is_throttled_with_the_apis_limit_and_says_when_to_try_again(page, settings, broker_url):
    settings.MEDIA_STORE_RATE = "2/min"

    answers = [page.post("/scenes/", {"url": PUBLIC_URL}, **HX) for _ in range(3)]

    assert [a.status_code for a in answers] == [202, 202, 429]
    assert 1 <= int(answers[-1]["Retry-After"]) <= 60
    assert "You have sent many URLs in a short time. Try again in" in answers[-1].content.decode()
    assert Scene.objects.count() == 2


def test_page_and_api_share_one_throttle(page, alice, settings, broker_url):
    settings.MEDIA_STORE_RATE = "1/min"
    page.post("/api/v1/media/store", {"url": PUBLIC_URL}, content_type="application/json")

    response = page.post("/scenes/", {"url": PUBLIC_URL}, **HX)

    assert response.status_code == 429


@commits
def test_retry_on_the_page_shares_the_store_throttle(page, alice, settings, broker_url, monkeypatch):
    from downloads import egress

    monkeypatch.setattr(egress, "_resolve", lambda host, port: ["1.1.1.1"])
    settings.MEDIA_STORE_RATE = "1/min"
    scene = _scene(alice, status=Scene.Status.FAILED, error_code="timeout", error_message="Too slow.")
    page.post("/api/v1/media/store", {"url": PUBLIC_URL}, content_type="application/json")

    response = page.post(f"/scenes/{scene.pk}/retry", **HX)

    assert response.status_code == 429
    assert "many downloads in a short time" in response.content.decode()
    assert Scene.objects.get(pk=scene.pk).status == Scene.Status.FAILED


# --- Retry and delete -------------------------------------------------------------------------------------

@commits
def test_retry_requeues_a_failed_scene_and_the_row_polls_again(page, alice, broker_url):
    scene = _scene(alice, status=Scene.Status.FAILED, error_code="timeout", error_message="Too slow.")

    response = page.post(f"/scenes/{scene.pk}/retry", **HX)

    scene.refresh_from_db()
    assert response.status_code == 202
    assert scene.status == Scene.Status.QUEUED
    assert scene.error_code == ""
    assert 'data-status="queued"' in response.content.decode()
    assert 'hx-trigger="every 1s [!window.msLive]"' in response.content.decode()
    assert _queued_task_args(broker_url) == [repr([scene.pk])]


@commits
def test_retry_of_a_completed_scene_is_refused_in_words(page, alice, broker_url):
    scene = _scene(alice, status=Scene.Status.COMPLETED)

    response = page.post(f"/scenes/{scene.pk}/retry", **HX)

    assert response.status_code == 409
    assert "Only failed or cancelled scenes can be retried; this one is completed." in response.content.decode()
    assert _queued_task_args(broker_url) == []


@commits
def test_delete_removes_the_scene_and_answers_with_nothing(page, alice, broker_url):
    scene = _scene(alice, status=Scene.Status.COMPLETED)

    response = page.post(f"/scenes/{scene.pk}/delete", **HX)

    assert response.status_code == 200
    assert response.content == b""
    assert not Scene.objects.filter(pk=scene.pk).exists()
    assert _queued_task_args(broker_url) == [repr([scene.pk])]  # the stored objects' delete task


def test_delete_without_javascript_asks_first(page, alice):
    scene = _scene(alice, title="keep me?")

    response = page.get(f"/scenes/{scene.pk}/delete")

    assert response.status_code == 200
    assert b"Delete this scene?" in response.content
    assert b"keep me?" in response.content
    assert Scene.objects.filter(pk=scene.pk).exists()


def test_delete_of_someone_elses_scene_leaves_it(page, bob):
    scene = _scene(bob)

    response = page.post(f"/scenes/{scene.pk}/delete")

    assert response.status_code == 404
    assert Scene.objects.filter(pk=scene.pk).exists()


# --- CSRF -------------------------------------------------------------------------------------------------

@pytest.fixture
def strict(alice) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    return client


def test_post_without_csrf_token_is_refused(strict):
    response = strict.post("/scenes/", {"url": PUBLIC_URL}, **HX)

    assert response.status_code == 403
    assert not Scene.objects.exists()


def test_htmx_post_with_the_csrf_header_is_accepted(strict, broker_url):
    token = strict.get("/").context["csrf_token"]

    response = strict.post("/scenes/", {"url": PUBLIC_URL}, **HX, HTTP_X_CSRFTOKEN=str(token))

    assert response.status_code == 202
    assert Scene.objects.count() == 1


def test_page_gives_htmx_the_csrf_token_for_every_request(strict):
    html = strict.get("/").content.decode()

    assert re.search(r'<body hx-headers=\'\{"X-CSRFToken": "[A-Za-z0-9]{64}"\}\'>', html)


@pytest.mark.parametrize("path", ["/scenes/{id}/retry", "/scenes/{id}/delete"])
def test_row_actions_without_csrf_token_are_refused(strict, alice, path):
    scene = _scene(alice, status=Scene.Status.FAILED)

    response = strict.post(path.format(id=scene.pk), **HX)

    assert response.status_code == 403
    assert Scene.objects.get(pk=scene.pk).status == Scene.Status.FAILED


# --- Display filters --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("seconds", "text"), [(None, ""), (0, "0:00"), (59.6, "1:00"), (125.4, "2:05"),
                                               (3725, "1:02:05")])
def test_clock_formats_durations(seconds, text):
    assert clock(seconds) == text


# --- Cancel -----------------------------------------------------------------------------------------------


def test_a_queued_row_has_a_cancel_button_that_cancels_it(page, alice):
    scene = _scene(alice)

    row = page.get(f"/scenes/{scene.pk}/row", **HX).content.decode()
    response = page.post(f"/scenes/{scene.pk}/cancel", **HX)

    assert f'hx-post="/scenes/{scene.pk}/cancel"' in row
    assert response.status_code == 202
    assert 'data-status="cancelled"' in response.content.decode()
    assert f'hx-post="/scenes/{scene.pk}/retry"' in response.content.decode()  # a cancelled scene may be retried
    assert Scene.objects.get(pk=scene.pk).status == Scene.Status.CANCELLED


def test_cancel_of_a_completed_scene_is_refused_in_words(page, alice):
    scene = _scene(alice, status=Scene.Status.COMPLETED)

    response = page.post(f"/scenes/{scene.pk}/cancel", **HX)

    assert response.status_code == 409
    assert "Only queued or processing scenes can be cancelled; this one is completed." in response.content.decode()


# --- For people: states, times, failure details -------------------------------------------------------------


def test_a_failed_row_says_what_happened_and_keeps_the_detail_behind_a_disclosure(page, alice):
    _scene(alice, status=Scene.Status.FAILED, error_code="not_found",
           error_message="The server answered 404: the post or video may have been deleted.",
           error_detail="[generic] missing: Unable to download webpage: HTTP Error 404: File not found")

    html = page.get("/").content.decode()

    row = html[html.index('data-status="failed"'):]
    assert '<p class="error">The server answered 404: the post or video may have been deleted.</p>' in row
    assert re.search(r"<details class=\"error-details\"><summary>Details</summary>.*not_found.*"
                     r"HTTP Error 404: File not found</pre>", row, re.S)
    assert 'thumb-empty--failed" role="img" aria-label="Failed">!' in row  # not the "…" of a queued row


def test_each_unfinished_state_has_its_own_picture(page, alice):
    for status in (Scene.Status.QUEUED, Scene.Status.PROCESSING, Scene.Status.FAILED, Scene.Status.CANCELLED):
        _scene(alice, status=status)

    html = page.get("/").content.decode()

    labels = re.findall(r'class="thumb-empty thumb-empty--(\w+)" role="img" aria-label="(\w+)"', html)
    assert sorted(labels) == [("cancelled", "Cancelled"), ("failed", "Failed"), ("processing", "Processing"),
                              ("queued", "Queued")]
    assert '<span class="spinner"></span>' in html


def test_rows_say_when_they_were_added_with_the_exact_time_on_hover(page, alice):
    scene = _scene(alice)
    Scene.objects.filter(pk=scene.pk).update(created_at=timezone.now() - dt.timedelta(hours=3))

    html = page.get("/").content.decode()

    assert re.search(r'<time class="added muted" datetime="[^"]+" title="Added \d{4}-\d\d-\d\d \d\d:\d\d:\d\d '
                     r'[A-Z]+">3\xa0hours ago</time>', html)


def test_the_page_has_a_heading_and_a_favicon(page, client):
    html = page.get("/").content.decode()
    icon = client.get("/favicon.ico")

    assert "<h1" in html
    assert 'rel="icon" href="/static/scenes/favicon.svg"' in html
    assert icon.status_code == 301
    assert icon["Location"] == "/static/scenes/favicon.svg"
