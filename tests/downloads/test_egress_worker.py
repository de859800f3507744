"""The address policy on every hop, on the real worker with real yt-dlp and ffmpeg.

The hostile site is on the allowed address (127.0.0.1); canaries on 127.0.0.2 and up stand for the worker's
internal network and serve real media, so a job that reached one would complete. Every vector must end
``failed`` with ``url_not_allowed`` or ``invalid_media``, with no connection to any canary and nothing stored.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from downloads import egress
from downloads.tasks import download_media_task
from scenes import services
from scenes.models import Scene
from tests.harness.hostile import Canary, FakeDns, HostileSite, fake_dns
from tests.harness.media import MediaFiles
from tests.harness.processes import wait_until
from tests.harness.services import r2_env

REFUSED = {"url_not_allowed", "invalid_media"}
LIMITS = {"MEDIA_MAX_FILESIZE": "10M", "MEDIA_SOCKET_TIMEOUT": "2", "MEDIA_RETRY_BACKOFF": "0.2",
          "MEDIA_MAX_ATTEMPTS": "2", "MEDIA_DOWNLOAD_TIMEOUT": "60"}


@pytest.fixture
def canaries(media_files: MediaFiles, site: HostileSite) -> Iterator[list[Canary]]:
    # 127.0.0.2 listens on the site's port too, for names that rebind from the site to it.
    started = [Canary("127.0.0.2", media_files.root, port=site.port), Canary("127.0.0.3", media_files.root),
               Canary("127.0.0.4", media_files.root)]
    yield started
    for canary in started:
        canary.stop()


@pytest.fixture
def dns(tmp_path: Path) -> Iterator[FakeDns]:
    with fake_dns(tmp_path / "dns") as fake:
        yield fake


@pytest.fixture
def owner(transactional_db):
    return get_user_model().objects.create_user("egress-owner")


@pytest.fixture
def worker(start_worker, s3_bucket, s3_endpoint: str, dns: FakeDns, tmp_path: Path):
    _, name = s3_bucket
    job_tmp = tmp_path / "worker-tmp"
    job_tmp.mkdir()
    return start_worker(concurrency=10, env={**LIMITS, **r2_env(endpoint=s3_endpoint, bucket=name),
                                             "TMPDIR": str(job_tmp), **dns.env()})


def _keys(bucket) -> list[str]:
    client, name = bucket
    return sorted(item["Key"] for item in client.list_objects_v2(Bucket=name).get("Contents", []))


def _run_all(owner, urls: dict[str, str], *, timeout: float = 120) -> dict[str, tuple[str, str]]:
    """Submit every vector at once; (status, error code) per vector when all have ended."""
    scenes = {}
    for name, url in urls.items():
        scene = services.scene_create(owner=owner, source_url=url)
        download_media_task.delay(scene.pk)
        scenes[name] = scene.pk
    wait_until(lambda: all(Scene.objects.get(pk=pk).is_terminal for pk in scenes.values()), timeout=timeout,
               interval=0.3, what="every vector to end")
    return {name: (Scene.objects.get(pk=pk).status, Scene.objects.get(pk=pk).error_code)
            for name, pk in scenes.items()}


def _assert_refused(outcomes: dict[str, tuple[str, str]], canaries: list[Canary], bucket) -> None:
    leaked = {name: outcome for name, outcome in outcomes.items()
              if outcome[0] != Scene.Status.FAILED or outcome[1] not in REFUSED}
    assert leaked == {}
    assert {c.address: c.requests for c in canaries if c.hits} == {}
    assert [c.hits for c in canaries] == [0] * len(canaries)
    assert _keys(bucket) == []


def _hls(media_files: MediaFiles, rewrite: Callable[[str], str]) -> str:
    return rewrite((media_files.root / "hls" / "index.m3u8").read_text())


def _dash_with_base(media_files: MediaFiles, base: str) -> str:
    manifest = (media_files.root / "dash" / "manifest.mpd").read_text()
    return manifest.replace("<Period", f"<BaseURL>{base}</BaseURL>\n<Period", 1)


HLS_TYPE = "application/vnd.apple.mpegurl"


def _dash_of(*, video: str, audio: str | None = None, video_type: str = "video/mp4") -> str:
    """A DASH manifest whose representations are whole files (a BaseURL each, as v.redd.it once served)."""
    sets = [f'<AdaptationSet contentType="video"><Representation id="v" mimeType="{video_type}" codecs="avc1.42c00d" '
            f'bandwidth="700000" width="320" height="240"><BaseURL>{video}</BaseURL></Representation>'
            '</AdaptationSet>']
    if audio:
        sets.append(f'<AdaptationSet contentType="audio"><Representation id="a" mimeType="audio/mp4" '
                    f'codecs="mp4a.40.2" bandwidth="64000"><BaseURL>{audio}</BaseURL></Representation>'
                    '</AdaptationSet>')
    return ('<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
            f'mediaPresentationDuration="PT3S" minBufferTime="PT2S"><Period>{"".join(sets)}</Period></MPD>')


def test_redirects_pages_and_manifests_never_reach_internal_addresses(
        worker, owner, s3_bucket, site: HostileSite, canaries: list[Canary], dns: FakeDns,
        media_files: MediaFiles):
    inner, other = canaries[1], canaries[2]
    dns.set({"internal.test": ["127.0.0.3"]})
    target = inner.url("video.mp4")
    site.redirect("/hop2", target)
    segments_inside = _hls(media_files, lambda text: text.replace("seg", inner.url("hls/seg")))
    key_inside = _hls(media_files, lambda text: text.replace(
        "#EXTINF", f'#EXT-X-KEY:METHOD=AES-128,URI="{other.url("key.bin")}"\n#EXTINF', 1))
    vectors = {
        "redirect 301": site.redirect("/r301", target, status=301),
        "redirect 302": site.redirect("/r302", target, status=302),
        "redirect 307": site.redirect("/r307", target, status=307),
        "redirect 308": site.redirect("/r308", target, status=308),
        "redirect chain": site.redirect("/hop1", site.url("/hop2")),
        "redirect to a name": site.redirect("/rname", inner.url("video.mp4", host="internal.test")),
        "redirect to IPv4-mapped IPv6": site.redirect("/rv6", inner.url("video.mp4", host="[::ffff:127.0.0.3]")),
        "redirect to a decimal address": site.redirect("/rdec", inner.url("video.mp4", host="2130706435")),
        "video tag": site.route("/page-video.html", f'<html><body><video src="{target}"></video></body></html>'),
        "og:video": site.route("/page-og.html", '<html><head><meta property="og:title" content="x">'
                                                f'<meta property="og:video" content="{target}">'
                                                '<meta property="og:video:type" content="video/mp4"></head></html>'),
        "JSON-LD": site.route("/page-ld.html", '<html><head><script type="application/ld+json">'
                                               '{"@context": "https://schema.org", "@type": "VideoObject", '
                                               f'"name": "x", "contentUrl": "{target}"}}</script></head></html>'),
        "HLS variant": site.route("/variant.m3u8", "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=500000,"
                                                   f"RESOLUTION=320x240\n{inner.url('hls/index.m3u8')}\n",
                                  content_type="application/vnd.apple.mpegurl"),
        "HLS segments": site.route("/segments.m3u8", segments_inside, content_type="application/vnd.apple.mpegurl"),
        "HLS key": site.route("/key.m3u8", key_inside.replace("seg", site.url("hls/seg")),
                              content_type="application/vnd.apple.mpegurl"),
        "DASH BaseURL": site.route("/base.mpd", _dash_with_base(media_files, inner.url("dash/")),
                                   content_type="application/dash+xml"),
    }

    outcomes = _run_all(owner, vectors)

    _assert_refused(outcomes, canaries, s3_bucket)


def test_names_that_rebind_to_internal_addresses_are_refused(worker, owner, s3_bucket, site: HostileSite,
                                                             canaries: list[Canary], dns: FakeDns):
    # Each process counts its own lookups: the worker's start-of-job check gets 127.0.0.1, and so does
    # yt-dlp's first request; every later lookup inside yt-dlp gets the internal address.
    dns.set({"rebind.test": ["127.0.0.1", "127.0.0.2"], "rebind-page.test": ["127.0.0.1", "127.0.0.2"],
             "rebind-hls.test": ["127.0.0.1", "127.0.0.2"]})
    site.route("/rebind-page.html", '<html><body><video src="/video.mp4"></video></body></html>')
    vectors = {
        "direct media": site.url("video.mp4", host="rebind.test"),
        "page, then its video": site.url("rebind-page.html", host="rebind-page.test"),
        "manifest, then its segments": site.url("hls/index.m3u8", host="rebind-hls.test"),
    }

    outcomes = _run_all(owner, vectors)

    _assert_refused(outcomes, canaries, s3_bucket)


def test_retry_after_rebinding_is_refused_at_the_api_and_at_the_worker(
        worker, owner, s3_bucket, site: HostileSite, canaries: list[Canary], dns: FakeDns, monkeypatch):
    dns.set({"old.test": ["127.0.0.1"]})
    url = site.url("missing.mp4", host="old.test")
    first = _run_all(owner, {"first run": url})
    assert first == {"first run": (Scene.Status.FAILED, "not_found")}
    scene = Scene.objects.get(source_url=url)
    dns.set({"old.test": ["127.0.0.2"]})  # the name now points inside
    monkeypatch.setattr(egress, "_resolve", lambda host, port: ["127.0.0.2"] if host == "old.test" else [])
    client = APIClient()
    client.force_authenticate(owner)

    answer = client.post(f"/api/v1/scenes/{scene.pk}/retry")
    assert (answer.status_code, answer.json()["error"]["code"]) == (422, "url_not_allowed")
    # An operator's requeue skips the API: the worker checks again when the job starts.
    services.scene_requeue_any(scene=scene)
    wait_until(lambda: Scene.objects.get(pk=scene.pk).is_terminal, timeout=60, interval=0.3, what="the requeue")

    assert Scene.objects.get(pk=scene.pk).error_code == "url_not_allowed"
    assert [c.hits for c in canaries] == [0, 0, 0]


def test_playlists_of_local_files_are_never_read(worker, owner, s3_bucket, site: HostileSite,
                                                 canaries: list[Canary], media_files: MediaFiles,
                                                 tmp_path: Path):
    private = tmp_path / "other-tenant" / "private.mp4"
    private.parent.mkdir()
    shutil.copy(media_files.video, private)
    playlist = f"#EXTM3U\n#EXTINF:3,\nfile:{private}\n"
    hls_of_files = f"#EXTM3U\n#EXT-X-TARGETDURATION:3\n#EXTINF:3,\nfile://{private}\n#EXT-X-ENDLIST\n"
    site.route("/list.m3u8", hls_of_files, content_type="video/mp4")
    site.route("/list", hls_of_files, content_type="video/mp4")
    vectors = {
        "an .m3u of file: entries": site.route("/list.m3u", playlist, content_type="audio/x-mpegurl"),
        "HLS with a file: segment": site.route("/local.m3u8", hls_of_files,
                                               content_type="application/vnd.apple.mpegurl"),
        "DASH whose video is a playlist": site.route("/video-list.mpd", _dash_of(video="list.m3u8"),
                                                     content_type="application/dash+xml"),
        "DASH typing a playlist as HLS": site.route("/typed.mpd", _dash_of(video="list?v=1", video_type=HLS_TYPE),
                                                    content_type="application/dash+xml"),
        "DASH typing a playlist as HLS, merged with audio": site.route(
            "/typed-merge.mpd", _dash_of(video="list?v=1", video_type=HLS_TYPE, audio="audio.m4a"),
            content_type="application/dash+xml"),
        "DASH whose video is a playlist, merged with audio": site.route(
            "/merge-list.mpd", _dash_of(video="list.m3u8", audio="audio.m4a"), content_type="application/dash+xml"),
        "a playlist named by Content-Disposition": site.route(
            "/download", playlist, content_type="application/octet-stream",
            headers={"Content-Disposition": 'attachment; filename="clip.m3u"'}),
        "a playlist served as video/mp4": site.route("/fake.mp4", playlist, content_type="video/mp4"),
        "an ffconcat list served as video/mp4": site.route("/concat.mp4", f"ffconcat version 1.0\nfile '{private}'\n",
                                                           content_type="video/mp4"),
    }

    outcomes = _run_all(owner, vectors)

    _assert_refused(outcomes, canaries, s3_bucket)
