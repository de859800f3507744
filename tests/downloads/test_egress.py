"""The address policy: which addresses and hosts are fetched from, and how yt-dlp's children are guarded."""

from __future__ import annotations

import pytest

from downloads import egress, ytdlp_guard

OPEN = egress.Policy()


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",  # noqa: S104 - an address to judge, not to bind
    "224.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1", "::1", "::", "fe80::1", "fc00::1", "ff02::1",
    # IPv6 forms that carry an internal IPv4 address
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::127.0.0.1", "::10.0.0.1", "::ffff:0:127.0.0.1",
    "::ffff:0:a00:1", "64:ff9b::127.0.0.1", "64:ff9b::a00:1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::",
    "2002:a00:1::1", "64:ff9b:1::1", "64:ff9b:1:ffff::8.8.8.8", "2001:0:4136:e378:8000:63bf:3fff:fdd2",
])
def test_internal_and_reserved_addresses_are_refused(address: str):
    assert not OPEN.address_allowed(address)


@pytest.mark.parametrize("address", [
    "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::8.8.8.8", "2002:808:808::1",
])
def test_global_addresses_and_ipv6_forms_of_them_are_allowed(address: str):
    assert OPEN.address_allowed(address)


def test_allowed_networks_open_only_their_range():
    policy = egress.Policy.build(networks=["127.0.0.1/32"], hosts=[])

    assert policy.address_allowed("127.0.0.1")
    assert policy.address_allowed("::ffff:127.0.0.1")  # the same host, written as IPv6
    assert not policy.address_allowed("127.0.0.2")


def test_allowed_hosts_match_domains_and_their_subdomains_only():
    policy = egress.Policy.build(networks=[], hosts=["example.com"])

    assert policy.host_allowed("example.com")
    assert policy.host_allowed("v.example.com.")
    assert not policy.host_allowed("evilexample.com")
    assert not policy.host_allowed("example.com.evil.net")


def test_the_policy_travels_to_the_ytdlp_process_unchanged():
    policy = egress.Policy.build(networks=["10.0.0.0/8", "fd00::/8"], hosts=["example.com"])

    assert egress.Policy.from_json(policy.to_json()) == policy


@pytest.mark.parametrize("url", [
    "http://[::ffff:127.0.0.1]/v.mp4", "http://[::127.0.0.1]/v.mp4", "http://[64:ff9b::7f00:1]/v.mp4",
    "http://[2002:7f00:1::]/v.mp4",
])
def test_submitting_an_ipv6_form_of_an_internal_address_is_not_allowed(url: str):
    with pytest.raises(egress.UrlNotAllowed):
        egress.check_url(url, policy=OPEN, resolve=lambda host, port: [host])


def test_ffmpeg_gets_the_media_only_options_before_every_input():
    argv = ytdlp_guard.guarded_argv(["/usr/bin/ffmpeg", "-y", "-i", "file:a.f1.mp4", "-i", "file:a.f2.m4a",
                                     "-c", "copy", "file:a.temp.mp4"], tools=set())

    options = list(egress.FFMPEG_INPUT_OPTIONS)
    assert argv == ["/usr/bin/ffmpeg", "-y", *options, "-i", "file:a.f1.mp4", *options, "-i", "file:a.f2.m4a",
                    "-c", "copy", "file:a.temp.mp4"]


def test_ffmpeg_may_not_read_a_url():
    with pytest.raises(ytdlp_guard.Refused):
        ytdlp_guard.guarded_argv(["ffmpeg", "-i", "http://10.0.0.1/x.m3u8", "out.mp4"], tools=set())


def test_ffmpeg_may_not_read_a_playlist_file():
    with pytest.raises(PermissionError):
        ytdlp_guard.guarded_argv(["ffmpeg", "-i", "file:media.f1.m3u8", "out.mp4"], tools=set())


def test_no_program_but_ffmpeg_ffprobe_or_a_javascript_runtime_may_run():
    with pytest.raises(ytdlp_guard.Refused):
        ytdlp_guard.guarded_argv(["rtmpdump", "-r", "rtmp://10.0.0.1/x"], tools=set())
    assert ytdlp_guard.guarded_argv(["deno", "run", "-"], tools=set()) == ["deno", "run", "-"]


# --- Origins: one job's allowance for an exact host and port (check_pipeline's sample on the web) ---------

WEB = "http://web:8000"


def _resolves_to(address: str):
    return lambda host, port: [address]


def test_an_origin_is_fetched_from_although_it_is_internal():
    policy = OPEN.with_origins([WEB])

    url = egress.check_url(f"{WEB}/check/sample/t.mp4", policy=policy, resolve=_resolves_to("172.18.0.5"))

    assert url == f"{WEB}/check/sample/t.mp4"


def test_an_origin_opens_no_other_port_of_its_host():
    policy = OPEN.with_origins([WEB])

    with pytest.raises(egress.UrlNotAllowed):
        egress.check_url("http://web:8001/x.mp4", policy=policy, resolve=_resolves_to("172.18.0.5"))


def test_an_origin_opens_no_other_name_for_its_address():
    policy = OPEN.with_origins([WEB])

    with pytest.raises(egress.UrlNotAllowed):
        egress.check_url("http://other:8000/x.mp4", policy=policy, resolve=_resolves_to("172.18.0.5"))


def test_an_origin_passes_the_allowed_hosts_too():
    policy = egress.Policy.build(networks=[], hosts=["example.com"]).with_origins([WEB])

    assert egress.check_url(f"{WEB}/x.mp4", policy=policy, resolve=_resolves_to("172.18.0.5"))


def test_a_policy_with_origins_travels_to_the_ytdlp_process_unchanged():
    policy = egress.Policy.build(networks=["10.0.0.0/8"], hosts=[]).with_origins([WEB, "https://Web.Internal."])

    assert egress.Policy.from_json(policy.to_json()) == policy
    assert policy.origins == (("web", 8000), ("web.internal", 443))


_GUARDED_CONNECTS = """
import json, socket, sys
from downloads import egress, ytdlp_guard

port = int(sys.argv[1])
ytdlp_guard.install_network_guard(egress.Policy.from_json(sys.argv[2]))
outcomes = {}
for what, connect in [
    # First: before the origin's name was resolved, its address is not approved.
    ("origin, not resolved", lambda: socket.socket().connect(("127.0.0.2", port))),
    ("origin", lambda: socket.create_connection(("127.0.0.2", port), timeout=2)),
    ("same address, another port", lambda: socket.create_connection(("127.0.0.2", port + 1), timeout=2)),
    ("another address, same port", lambda: socket.create_connection(("127.0.0.3", port), timeout=2)),
]:
    try:
        connect().close()
        outcomes[what] = "connected"
    except PermissionError:
        outcomes[what] = "refused"
print(json.dumps(outcomes))
"""


def test_the_guard_lets_connections_reach_only_the_origins_host_and_port(tmp_path):
    import json
    import socket
    import subprocess
    import sys

    from tests.harness.services import REPO_ROOT

    # Given a server on an internal address (127.0.0.2: not in the test "internet") and a policy whose only
    # origin is that address and port
    with socket.socket() as server:
        server.bind(("127.0.0.2", 0))
        server.listen()
        port = server.getsockname()[1]
        policy = egress.Policy.build(networks=["127.0.0.1/32"], hosts=[]).with_origins([f"http://127.0.0.2:{port}"])

        # When yt-dlp's process (the guard installed) connects there, and to its neighbours
        done = subprocess.run([sys.executable, "-c", _GUARDED_CONNECTS, str(port), policy.to_json()], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=30, check=True)

    # Then only the origin itself is reached
    assert json.loads(done.stdout) == {"origin, not resolved": "refused", "origin": "connected",
                                       "same address, another port": "refused",
                                       "another address, same port": "refused"}
