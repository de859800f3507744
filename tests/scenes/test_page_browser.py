"""The status page in a real browser (Debian's Chromium, headless, through Playwright) against the real stack:
the app on a live server, a ``-P gevent`` worker with real yt-dlp and ffmpeg, Redis, and the loopback media
server. Screenshots go to ``test-artifacts/status-page/``.

Rows the tests need are written before the browser starts (see ``tests/harness/browser.py``).
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from scenes.models import Scene
from tests.harness.browser import chromium, screenshot
from tests.harness.media import MediaServer
from tests.harness.processes import wait_until
from tests.harness.services import redis_server

PASSWORD = "page-user-pass-123"
LIMITS = {"MEDIA_MAX_FILESIZE": "50M", "MEDIA_SOCKET_TIMEOUT": "5", "MEDIA_DOWNLOAD_TIMEOUT": "120"}
DONE = 90_000  # ms: how long a fixture may take from submit to completed on a loaded 2-core machine
LIVE_ROUTE = "**/api/v1/scenes/events*"

# Every status the rows of the list take, in the order the page shows them, recorded by the page itself:
# a MutationObserver sees swaps that a test polling from outside could miss between two looks.
RECORD_ROWS = """() => {
  window.__seen = [];
  const look = () => document.querySelectorAll('#scene-rows > li.scene').forEach(li => {
    const pct = li.querySelector('.percent');
    window.__seen.push([li.dataset.sceneId, li.dataset.status, pct ? pct.textContent.trim() : '']);
  });
  new MutationObserver(look).observe(document.getElementById('scene-rows'), {childList: true, subtree: true});
}"""


@pytest.fixture
def user(transactional_db):
    return get_user_model().objects.create_user("page-user", password=PASSWORD)


@pytest.fixture
def web_env() -> dict[str, str]:
    """Settings of the web server (a test may parametrize this)."""
    return {}


@pytest.fixture
def live_redis(request, broker_url: str, tmp_path: Path) -> Iterator[str]:
    """The Redis of the live stream: the broker's, or (``indirect`` "own") one the test may stop."""
    if getattr(request, "param", None) != "own":
        yield broker_url
        return
    with redis_server(tmp_path / "live-redis") as url:
        yield url


@pytest.fixture
def app(start_web, web_env, live_redis, settings, tmp_path: Path):
    """The app as production serves it (gunicorn, uvicorn worker), serving the worker's local media folder;
    its URL."""
    settings.MEDIA_ROOT = tmp_path / "worker-data" / "media"  # start_web's and start_worker's DATA_DIR
    return start_web(env={"REDIS_URL": live_redis, **web_env}).url


@pytest.fixture
def worker(start_worker, live_redis):
    return start_worker(concurrency=4, env={**LIMITS, "REDIS_URL": live_redis})


@pytest.fixture
def browser(user, app) -> Iterator[Any]:
    # Depends on the rows (user) and the app: those are set up before, and torn down after, the browser.
    with chromium() as browser:
        yield browser


def _sign_in(browser: Any, app: str, *, javascript: bool = True, width: int = 1280, height: int = 900,
             live: bool = True) -> Any:
    context = browser.new_context(viewport={"width": width, "height": height}, java_script_enabled=javascript)
    context.set_default_timeout(15_000)
    if not live:  # the live stream never gets through: the page polls
        context.route(LIVE_ROUTE, lambda route: route.abort("connectionrefused"))
    page = context.new_page()
    page.goto(app + "/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/$"))
    page.fill("#id_username", "page-user")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(app + "/")
    return page


def _row(page: Any, scene_id: str | None = None) -> Any:
    if scene_id is None:
        return page.locator("#scene-rows > li.scene").first
    return page.locator(f"#scene-{scene_id}")


def _seen(page: Any, scene_id: str) -> list[tuple[str, str]]:
    """The statuses (with the percent shown) one row went through, repeats folded."""
    steps: list[tuple[str, str]] = []
    for seen_id, status, percent in page.evaluate("window.__seen"):
        if seen_id == scene_id and (not steps or steps[-1] != (status, percent)):
            steps.append((status, percent))
    return steps


def _wait_for_thumbnail(page: Any, scene_id: str) -> None:
    page.wait_for_function(
        "id => { const img = document.querySelector(`#scene-${id} .thumb img`);"
        " return img && img.complete && img.naturalWidth > 0; }", arg=scene_id, timeout=15_000)


def _store(page: Any, url: str) -> str:
    """Submit a URL through the form; the id of the row that appears."""
    before = page.locator("#scene-rows > li.scene").count()
    page.fill("#id_url", url)
    page.click("#store-form button[type=submit]")
    expect(page.locator("#scene-rows > li.scene")).to_have_count(before + 1)
    return str(_row(page).get_attribute("data-scene-id"))


def _row_requests(urls: list[str], scene_id: str) -> tuple[list[str], list[str]]:
    """A row's polls, and its fetches caused by a live event (``?reason=event``)."""
    mine = [url for url in urls if urlsplit(url).path.endswith(f"/scenes/{scene_id}/row")]
    return ([url for url in mine if "reason=event" not in url], [url for url in mine if "reason=event" in url])


def test_submitted_url_goes_from_queued_through_progress_to_completed_by_the_live_stream_without_polling(
        request, browser, app, worker, media_server: MediaServer):
    page = _sign_in(browser, app)
    expect(page.locator("#scene-rows")).to_have_attribute("data-live", "on")
    documents: list[str] = []
    posts: list[Any] = []
    urls: list[str] = []
    page.on("request", lambda r: documents.append(r.url) if r.resource_type == "document" else None)
    page.on("request", lambda r: posts.append(r) if r.method == "POST" else None)
    page.on("request", lambda r: urls.append(r.url))
    page.evaluate(RECORD_ROWS)
    page.evaluate("window.__sameDocument = true")
    # About 6 s of download: several progress events move the bar.
    rate = media_server.files.large.stat().st_size // 6

    scene_id = _store(page, media_server.url(f"throttled.mp4?rate={rate}"))
    screenshot(page, request.node.name, "1-queued")
    expect(_row(page, scene_id).locator(".percent")).to_have_text(re.compile(r"^([1-9]|[1-9][0-9])%$"),
                                                                  timeout=DONE)
    screenshot(page, request.node.name, "2-processing")
    expect(_row(page, scene_id)).to_have_attribute("data-status", "completed", timeout=DONE)
    _wait_for_thumbnail(page, scene_id)
    screenshot(page, request.node.name, "3-completed")

    steps = _seen(page, scene_id)
    statuses = [status for i, (status, _) in enumerate(steps) if i == 0 or steps[i - 1][0] != status]
    assert statuses == ["queued", "processing", "completed"], steps
    assert any(status == "processing" and percent not in {"", "0%", "100%"} for status, percent in steps), steps
    assert page.evaluate("window.__sameDocument") is True
    assert documents == []
    assert _row(page).get_attribute("data-scene-id") == scene_id  # the new row is at the top
    assert _row(page, scene_id).locator(".actions a", has_text="Open media").is_visible()
    assert posts[0].headers["hx-request"] == "true"
    assert len(posts[0].headers["x-csrftoken"]) == 64
    polls, fetched_on_events = _row_requests(urls, scene_id)
    assert polls == []
    assert 1 <= len(fetched_on_events) <= 6  # a few status and stage changes, each fetched once


@pytest.mark.parametrize("live_redis", ["own"], indirect=True)
def test_when_the_live_stream_is_cut_rows_poll_again_and_the_page_tries_the_stream_again(
        request, browser, app, worker, live_redis, media_server: MediaServer):
    page = _sign_in(browser, app)
    rows = page.locator("#scene-rows")
    expect(rows).to_have_attribute("data-live", "on")
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    rate = media_server.files.large.stat().st_size // 8  # about 8 s of download
    scene_id = _store(page, media_server.url(f"throttled.mp4?rate={rate}"))
    expect(_row(page, scene_id)).to_have_attribute("data-status", "processing", timeout=DONE)
    polls_before, _ = _row_requests(urls, scene_id)

    redis.Redis.from_url(live_redis).shutdown(nosave=True)  # the stream's Redis goes away
    expect(rows).to_have_attribute("data-live", "off")
    cut = len(urls)
    screenshot(page, request.node.name, "1-cut-polling")
    expect(_row(page, scene_id)).to_have_attribute("data-status", "completed", timeout=DONE)
    screenshot(page, request.node.name, "2-completed-by-polling")

    polls_after, _ = _row_requests(urls[cut:], scene_id)
    stream_tries = [url for url in urls[cut:] if "/api/v1/scenes/events" in url]
    assert polls_before == []
    assert len(polls_after) >= 2
    assert stream_tries != []


def test_invalid_url_shows_its_error_next_to_the_field_and_adds_no_row(request, browser, app):
    page = _sign_in(browser, app)

    page.fill("#id_url", "ftp://example.com/video.mp4")
    page.click("#store-form button[type=submit]")
    expect(page.locator("#url-error")).to_have_text("Only http:// and https:// URLs are accepted.")
    screenshot(page, request.node.name, "invalid-url")
    page.fill("#id_url", "http://10.20.30.40/video.mp4")
    page.click("#store-form button[type=submit]")

    expect(page.locator("#url-error")).to_contain_text("points to an address this server does not fetch from")
    expect(page.locator("#id_url")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#scene-rows > li.scene")).to_have_count(0)
    screenshot(page, request.node.name, "url-not-allowed")


@pytest.mark.parametrize("web_env", [{"MEDIA_STORE_RATE": "1/min"}])
def test_too_many_submissions_are_explained_under_the_field(request, browser, app, media_server: MediaServer):
    page = _sign_in(browser, app)
    _store(page, media_server.url("video.mp4"))

    page.fill("#id_url", media_server.url("video.mp4"))
    page.click("#store-form button[type=submit]")

    expect(page.locator("#url-error")).to_contain_text("You have sent many URLs in a short time. Try again in")
    expect(page.locator("#scene-rows > li.scene")).to_have_count(1)
    screenshot(page, request.node.name, "throttled")


def test_a_request_that_gets_no_usable_answer_is_reported_then_cleared(request, browser, app, broker_url,
                                                                      media_server: MediaServer):
    page = _sign_in(browser, app)
    alert = page.locator("#page-alert")
    expect(alert).to_be_hidden()

    page.route("**/scenes/", lambda route: route.abort("connectionrefused"))
    page.fill("#id_url", media_server.url("video.mp4"))
    page.click("#store-form button[type=submit]")
    expect(alert).to_contain_text("The server cannot be reached.")
    expect(alert).to_be_visible()
    page.unroute("**/scenes/")
    page.route("**/scenes/", lambda route: route.fulfill(status=500, body="boom"))
    page.click("#store-form button[type=submit]")
    expect(alert).to_contain_text("The server could not do that (HTTP 500).")
    screenshot(page, request.node.name, "server-error")
    page.unroute("**/scenes/")
    page.click("#store-form button[type=submit]")

    expect(page.locator("#scene-rows > li.scene")).to_have_count(1)
    expect(alert).to_be_hidden()
    assert "boom" not in page.content()


@pytest.fixture
def failed_scene(user, media_server: MediaServer) -> Scene:
    # A scene that failed earlier (say, storage was down) and whose source is fine now.
    return Scene.objects.create(owner=user, source_url=media_server.url("video.mp4"), status=Scene.Status.FAILED,
                                error_code="storage_error", error_message="The object store refused the upload.",
                                attempts=1)


def test_retrying_a_failed_scene_ingests_it(request, failed_scene, browser, app, worker):
    page = _sign_in(browser, app)
    row = _row(page, failed_scene.pk)
    expect(row.locator(".error")).to_contain_text("The object store refused the upload.")
    screenshot(page, request.node.name, "1-failed")

    row.get_by_role("button", name="Retry").click()

    expect(row).to_have_attribute("data-status", re.compile("queued|processing|completed"))
    expect(row).to_have_attribute("data-status", "completed", timeout=DONE)
    _wait_for_thumbnail(page, failed_scene.pk)
    expect(row.locator(".error")).to_have_count(0)
    screenshot(page, request.node.name, "2-completed")
    scene = page.request.get(f"{app}/api/v1/scenes/{failed_scene.pk}").json()
    # A person's retry starts the attempts from zero: this was the first of a fresh set.
    assert (scene["status"], scene["attempts"], scene["error_code"]) == ("completed", 1, "")


def test_deleting_a_scene_asks_first_then_removes_the_row_and_its_media(
        request, browser, app, worker, media_server: MediaServer, settings):
    page = _sign_in(browser, app)
    scene_id = _store(page, media_server.url("video.mp4"))
    row = _row(page, scene_id)
    expect(row).to_have_attribute("data-status", "completed", timeout=DONE)
    stored = [p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file() and scene_id in str(p)]
    dialogs: list[str] = []

    page.once("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    row.get_by_role("link", name="Delete").click()
    expect(row).to_be_visible()  # dismissed: nothing happens
    page.once("dialog", lambda d: (dialogs.append(d.message), d.accept()))
    row.get_by_role("link", name="Delete").click()

    expect(row).to_have_count(0)
    screenshot(page, request.node.name, "deleted")
    assert dialogs == ["Delete this scene and its stored media? This cannot be undone."] * 2
    assert page.request.get(f"{app}/api/v1/scenes/{scene_id}").status == 404
    assert len(stored) == 2  # the media and its thumbnail, both removed by the worker
    wait_until(lambda: not any(p.exists() for p in stored), timeout=30, what="the stored files to be deleted")
    page.reload()
    expect(page.locator(f"#scene-{scene_id}")).to_have_count(0)


def test_without_the_live_stream_active_rows_poll_once_a_second_and_finished_rows_stop(
        request, browser, app, worker, media_server: MediaServer):
    page = _sign_in(browser, app, live=False)
    requests: list[tuple[float, str]] = []
    page.on("request", lambda r: requests.append((time.monotonic(), r.url)))
    rate = media_server.files.video.stat().st_size // 4  # about 4 s each: both rows poll for a while
    first = _store(page, media_server.url(f"throttled.mp4?file=video.mp4&rate={rate}"))
    second = _store(page, media_server.url(f"throttled.mp4?file=video.mp4&rate={rate}"))
    window_start = time.monotonic()

    for scene_id in (first, second):
        expect(_row(page, scene_id)).to_have_attribute("data-status", "completed", timeout=DONE)
        _wait_for_thumbnail(page, scene_id)
    active_seconds = time.monotonic() - window_start
    page.wait_for_timeout(300)  # the last responses' follow-ups (thumbnails) have been asked for by now
    quiet_from = time.monotonic()
    page.wait_for_timeout(5_000)
    screenshot(page, request.node.name, "quiet")

    polls = {scene_id: [t for t, url in requests if url.endswith(f"/scenes/{scene_id}/row") and t >= window_start]
             for scene_id in (first, second)}
    for scene_id, times in polls.items():
        assert len(times) >= 2, f"row {scene_id} polled {len(times)} times in {active_seconds:.1f}s"
        assert len(times) <= active_seconds / 1.0 + 1, f"row {scene_id}: {len(times)} polls in {active_seconds:.1f}s"
        assert min(b - a for a, b in itertools.pairwise(times)) >= 0.9, times
    # (The page goes on trying to open its live stream meanwhile.)
    assert [url for t, url in requests if t >= quiet_from and "/api/v1/scenes/events" not in url] == []


def test_post_without_csrf_token_is_refused(browser, app, media_server: MediaServer):
    page = _sign_in(browser, app)

    # The browser's session cookie and CSRF cookie go along; only the token is missing.
    response = page.request.post(f"{app}/scenes/", form={"url": media_server.url("video.mp4")},
                                 headers={"HX-Request": "true"})

    assert response.status == 403
    assert page.request.get(f"{app}/api/v1/scenes/").json()["count"] == 0


@pytest.fixture
def listed_scenes(user) -> list[Scene]:
    long_url = "https://www.reddit.com/r/videos/comments/abc123/" + "a_very_long_title_" * 8
    return [
        Scene.objects.create(owner=user, source_url=long_url, status=Scene.Status.QUEUED),
        Scene.objects.create(owner=user, source_url="https://example.com/a.mp4", status=Scene.Status.PROCESSING,
                             stage=Scene.Stage.DOWNLOADING, progress=42),
        Scene.objects.create(owner=user, source_url="https://example.com/b.mp4", status=Scene.Status.FAILED,
                             error_code="not_found", error_message="The source answered 404."),
        Scene.objects.create(owner=user, source_url="https://example.com/c.mp4", status=Scene.Status.COMPLETED,
                             title="A finished one", duration=125.0, size_bytes=12_000_000, width=1280, height=720),
    ]


def test_list_is_readable_without_javascript(request, listed_scenes, browser, app):
    page = _sign_in(browser, app, javascript=False)

    rows = page.locator("#scene-rows > li.scene")
    expect(rows).to_have_count(4)
    expect(rows.nth(0)).to_contain_text("A finished one")
    expect(rows.nth(0)).to_contain_text("Completed")
    expect(rows.nth(1)).to_contain_text("The source answered 404.")
    expect(rows.nth(2)).to_contain_text("42%")
    expect(rows.nth(3)).to_contain_text("Waiting for a worker")
    screenshot(page, request.node.name, "no-javascript")


@pytest.mark.parametrize(("width", "height"), [(1280, 900), (390, 844)], ids=["desktop", "phone"])
def test_page_fits_the_screen_width(request, listed_scenes, browser, app, width, height):
    page = _sign_in(browser, app, width=width, height=height)

    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    boxes = [page.locator(selector).bounding_box() for selector in ("#store-form", "#scene-rows")]
    screenshot(page, request.node.name, "list")

    assert overflow <= 0
    assert all(box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width for box in boxes)


# --- For people (issue 14): the failure details, tokens, seeking, the admin at 1280 px ---------------------

LONG_DETAIL = ("[generic] missing: Unable to download webpage: HTTP Error 404: File not found (caused by "
               "<HTTPError 404: File not found>) " + "x" * 300)


@pytest.fixture
def long_failure(user) -> Scene:
    return Scene.objects.create(owner=user, source_url="https://example.com/gone.mp4", status=Scene.Status.FAILED,
                                error_code="not_found", error_detail=LONG_DETAIL,
                                error_message="The server answered 404: the post or video may have been deleted, "
                                              "or the link is mistyped.")


@pytest.mark.parametrize(("width", "height"), [(1280, 900), (390, 844)], ids=["desktop", "phone"])
def test_a_failed_row_reads_in_words_and_shows_the_detail_on_request(request, long_failure, browser, app, width,
                                                                      height):
    scene = long_failure
    page = _sign_in(browser, app, width=width, height=height)
    row = _row(page, scene.pk)
    detail = row.locator(".error-details pre")

    expect(row.locator(".error")).to_have_text(re.compile(r"^The server answered 404"))
    expect(detail).to_be_hidden()
    expect(row.locator(".thumb-empty--failed")).to_be_visible()
    error_height = row.locator(".error").bounding_box()["height"]
    screenshot(page, request.node.name, "1-closed")
    row.locator(".error-details summary").click()
    expect(detail).to_be_visible()
    expect(detail).to_contain_text("HTTP Error 404")
    screenshot(page, request.node.name, "2-details")

    assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
    assert error_height < 5 * 24  # a few lines, not a tall red column of tool output


def test_a_person_makes_sees_once_and_revokes_a_token(request, user, browser, app):
    page = _sign_in(browser, app)
    page.click("text=Tokens")
    page.fill("#token-name", "upload script")
    page.click(".token-form button[type=submit]")
    token = page.locator(".token-value").input_value()
    screenshot(page, request.node.name, "1-made")
    page.goto(app + "/tokens/")

    expect(page.locator(".token-value")).to_have_count(0)  # shown once
    expect(page.locator(".tokens")).to_contain_text(token[:12])
    response = page.request.get(app + "/api/v1/me", headers={"Authorization": f"Token {token}"})
    assert response.status == 200
    page.click(".tokens button:has-text('Revoke')")
    expect(page.locator(".messages")).to_contain_text("is revoked")
    screenshot(page, request.node.name, "2-revoked")
    assert page.request.get(app + "/api/v1/me", headers={"Authorization": f"Token {token}"}).status == 401


@pytest.fixture
def seekable_scene(user, app, media_server: MediaServer, settings) -> Scene:
    # In the folder the web serves local media from (app sets MEDIA_ROOT to it).
    key = "scenes/seek/media.mp4"
    stored = Path(settings.MEDIA_ROOT) / key
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(media_server.files.large.read_bytes())  # 6 s
    return Scene.objects.create(owner=user, source_url="https://example.com/v.mp4", status=Scene.Status.COMPLETED,
                                storage_key=key, content_type="video/mp4", duration=6.0)


def test_a_local_video_seeks_with_range_requests(request, seekable_scene, browser, app):
    scene = seekable_scene
    page = _sign_in(browser, app)
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if "/files/scenes/" in r.url else None)

    page.goto(f"{app}/files/scenes/{scene.pk}/media")
    page.wait_for_function("() => { const v = document.querySelector('video'); return v && v.readyState >= 1; }")
    page.evaluate("""() => new Promise(done => {
        const v = document.querySelector('video');
        v.addEventListener('seeked', () => done(), {once: true});
        v.currentTime = 4.5;
    })""")
    position = page.evaluate("document.querySelector('video').currentTime")
    screenshot(page, request.node.name, "seeked")

    assert position == pytest.approx(4.5, abs=0.6)
    assert 206 in statuses


@pytest.fixture
def admin_rows(user) -> None:
    staff = get_user_model().objects.create_superuser("page-admin", password=PASSWORD)
    for n in range(3):
        Scene.objects.create(owner=staff, source_url="https://www.reddit.com/r/videos/comments/abc/" + "long_" * 20
                             + str(n), status=Scene.Status.PROCESSING, stage=Scene.Stage.DOWNLOADING, progress=40)


def test_the_admin_scene_list_fits_1280_px_with_status_in_view(request, admin_rows, browser, app):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(app + "/admin/login/?next=/admin/scenes/scene/")
    page.fill("#id_username", "page-admin")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#result_list")).to_be_visible()
    status = page.locator("#result_list th.column-badge").bounding_box()
    table = page.locator("#result_list").bounding_box()
    screenshot(page, request.node.name, "changelist")

    assert status is not None
    assert table is not None
    assert status["x"] + status["width"] <= 1280  # no horizontal scrolling to see a scene's status
    assert table["x"] + table["width"] <= 1280
