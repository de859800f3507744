"""Submitted URLs: refused before anything is stored when malformed or pointing at our own network."""

from __future__ import annotations

import pytest

from scenes.validators import InvalidUrl, UrlNotAllowed, validate_media_url


def _resolves_to(*addresses: str):
    return lambda host, port: list(addresses)


@pytest.mark.parametrize("url", [
    "ftp://example.com/v.mp4", "file:///etc/passwd", "javascript:alert(1)", "-x", "--exec=touch /tmp/x",
    "https://", "http:///path-only", "https://example.com/" + "a" * 3000, "", "   ",
    "https://user:secret@example.com/v.mp4", "example.com/v.mp4",
])
def test_malformed_urls_are_invalid(url: str):
    with pytest.raises(InvalidUrl):
        validate_media_url(url, resolve=_resolves_to("93.184.216.34"))


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/x", "http://10.1.2.3/x", "http://169.254.169.254/latest/meta-data/", "http://[::1]/x",
    "http://2130706433/x", "http://0x7f000001/x", "http://[::ffff:127.0.0.1]/x", "http://[::ffff:a9fe:a9fe]/x",
    "http://0.0.0.0/x", "http://224.0.0.1/x", "http://192.168.1.10/x", "http://[fd00::1]/x",
])
def test_urls_resolving_to_non_global_addresses_are_not_allowed(url: str):
    with pytest.raises(UrlNotAllowed):
        validate_media_url(url)


def test_a_name_resolving_to_a_private_address_is_not_allowed():
    with pytest.raises(UrlNotAllowed):
        validate_media_url("https://intranet.example/v.mp4", resolve=_resolves_to("93.184.216.34", "10.0.0.5"))


def test_a_public_address_is_accepted():
    url = validate_media_url(" https://www.reddit.com/r/videos/comments/abc/x/ ", resolve=_resolves_to("151.101.1.140"))

    assert url == "https://www.reddit.com/r/videos/comments/abc/x/"


def test_allowed_networks_open_a_private_range(settings):
    settings.MEDIA_ALLOWED_NETWORKS = ["127.0.0.0/8"]

    assert validate_media_url("http://127.0.0.1:8080/v.mp4") == "http://127.0.0.1:8080/v.mp4"
    with pytest.raises(UrlNotAllowed):
        validate_media_url("http://10.0.0.1/v.mp4")


def test_unresolvable_host_is_invalid():
    def fail(host, port):
        raise OSError("Name or service not known")

    with pytest.raises(InvalidUrl, match="could not be resolved"):
        validate_media_url("https://no-such-host.invalid/v.mp4", resolve=fail)


def test_allowed_hosts_limit_submissions_to_their_domains(settings):
    settings.MEDIA_ALLOWED_HOSTS = ["reddit.com", "redd.it"]
    public = _resolves_to("151.101.1.140")

    assert validate_media_url("https://old.reddit.com/r/x", resolve=public)
    assert validate_media_url("https://v.redd.it/abc", resolve=public)
    with pytest.raises(UrlNotAllowed):
        validate_media_url("https://notreddit.com/r/x", resolve=public)
