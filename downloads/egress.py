"""The one address policy: which hosts and addresses mediastore fetches from, at submit and in the worker.

Standard library only (Django settings are read in ``settings_policy`` alone): the same code runs in the
web process (``scenes.validators``), in the worker, and inside the yt-dlp process, where
``downloads.ytdlp_guard`` applies it to every connection.

An address is fetched from when it falls in one of the operator's ``networks`` (``MEDIA_ALLOWED_NETWORKS``),
or when it is global unicast: not loopback, private, link-local, multicast, reserved, documentation, shared
(CGNAT) or unspecified. IPv6 forms that carry an IPv4 address are judged as the IPv4 address they carry:
IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible ``::a.b.c.d``, IPv4-translated ``::ffff:0:a.b.c.d``, NAT64
``64:ff9b::/96`` and 6to4 ``2002::/16``; the local-use NAT64 prefix ``64:ff9b:1::/48`` (whose embedding
depends on the operator's prefix length) and Teredo are refused outright. When ``hosts`` is not empty
(``MEDIA_ALLOWED_HOSTS``), only those domains and their subdomains are fetched from.

``origins`` are exact ``host:port`` pairs fetched from whatever they resolve to. No setting makes them for
everyone: the worker adds one to the policy of a single job (``check_pipeline --e2e``'s sample, served by
our own web on an internal address; see ``scenes.check_sample``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Iterable[str]]
MAX_URL_LENGTH = 2048

_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_TEREDO = ipaddress.ip_network("2001::/32")

# Demuxers ffmpeg and ffprobe may use on anything a source gave us. Playlists (hls, concat, m3u), images,
# subtitles and raw codecs are not on it: they open other files or read anything as "media".
MEDIA_DEMUXERS = ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "mpegts", "flv", "mp3", "ogg", "aac", "flac",
                  "wav")
# What a downloaded file may be called; anything else (a playlist, a web page, an image) is not media.
MEDIA_EXTENSIONS = frozenset({"mp4", "m4v", "mov", "webm", "mkv", "m4a", "mp3", "ogg", "opus", "aac", "flac",
                              "wav", "ts", "flv"})
# Put before every input of every ffmpeg/ffprobe run on untrusted media: local files only, media demuxers only.
FFMPEG_INPUT_OPTIONS = ("-protocol_whitelist", "file", "-format_whitelist", ",".join(MEDIA_DEMUXERS))


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, when it is one of the forms that carry one."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _IPV4_TRANSLATED or address in _NAT64_WELL_KNOWN:
        return low32
    if address in _IPV4_COMPATIBLE and int(address) > 1:  # "::" and "::1" are themselves, not IPv4
        return low32
    return None


def origin_of(url: str) -> tuple[str, int]:
    """``(host, port)`` of an ``http``/``https`` URL, the host lower case, the port the scheme's when absent."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"not an http(s) URL with a host: {url!r}")
    return parts.hostname.lower().rstrip("."), parts.port or (443 if parts.scheme == "https" else 80)


def _port_number(port: object) -> int | None:
    # getaddrinfo takes an int, a str or None; a service name ("http") or none is never one of the origins.
    if isinstance(port, int):
        return port
    if isinstance(port, (str, bytes)) and port.isdigit():
        return int(port)
    return None


@dataclass(frozen=True)
class Policy:
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    hosts: tuple[str, ...] = ()
    origins: tuple[tuple[str, int], ...] = ()

    @classmethod
    def build(cls, *, networks: list[str] | tuple[str, ...], hosts: list[str] | tuple[str, ...],
              origins: Iterable[Iterable[Any]] = ()) -> Policy:
        return cls(networks=tuple(ipaddress.ip_network(n, strict=False) for n in networks),
                   hosts=tuple(h.lower().strip(".") for h in hosts if h.strip(".")),
                   origins=tuple((str(host).lower().rstrip("."), int(port)) for host, port in origins))

    def with_origins(self, urls: Iterable[str]) -> Policy:
        """This policy, also fetching from each URL's exact host and port (one job's allowance)."""
        return dataclasses.replace(self, origins=(*self.origins, *(origin_of(url) for url in urls)))

    def to_json(self) -> str:
        return json.dumps({"networks": [str(n) for n in self.networks], "hosts": list(self.hosts),
                           "origins": [list(origin) for origin in self.origins]})

    @classmethod
    def from_json(cls, text: str) -> Policy:
        data = json.loads(text)
        return cls.build(networks=data.get("networks", []), hosts=data.get("hosts", []),
                         origins=data.get("origins", []))

    def origin_allowed(self, host: str, port: object) -> bool:
        number = _port_number(port)
        return number is not None and (host.lower().rstrip("."), number) in self.origins

    def host_allowed(self, host: str) -> bool:
        if not self.hosts:
            return True
        host = host.lower().rstrip(".")
        return any(host == d or host.endswith("." + d) for d in self.hosts)

    def address_allowed(self, address: IPAddress | str) -> bool:
        if isinstance(address, str):
            try:
                address = ipaddress.ip_address(address.split("%")[0])
            except ValueError:
                return False
        if any(address.version == n.version and address in n for n in self.networks):
            return True
        if isinstance(address, ipaddress.IPv6Address):
            if address in _NAT64_LOCAL or address in _TEREDO:
                return False
            carried = embedded_ipv4(address)
            if carried is not None:
                return self.address_allowed(carried)
        return address.is_global and not address.is_multicast


def settings_policy() -> Policy:
    from django.conf import settings

    return Policy.build(networks=settings.MEDIA_ALLOWED_NETWORKS, hosts=settings.MEDIA_ALLOWED_HOSTS)


class UrlRefused(Exception):
    code = "invalid_url"
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidUrl(UrlRefused):
    pass


class Unresolvable(InvalidUrl):
    pass


class UrlNotAllowed(UrlRefused):
    code = "url_not_allowed"
    status = 422


def _resolve(host: str, port: int) -> list[str]:
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)})


def check_url(url: str, *, policy: Policy, resolve: Resolver | None = None) -> str:
    """The URL (stripped) when it may be fetched now; see ``allowed_addresses``."""
    return allowed_addresses(url, policy=policy, resolve=resolve)[0]


def allowed_addresses(url: str, *, policy: Policy, resolve: Resolver | None = None) -> tuple[str, list[str]]:
    """The URL (stripped) and the addresses its host resolves to, when it may be fetched now; raise
    ``InvalidUrl`` or ``UrlNotAllowed``. A caller that connects itself connects to these addresses, not to a
    second lookup of the name (which could answer differently: rebinding).

    Absolute ``http``/``https`` only, at most 2048 characters, a host, no leading ``-``, no credentials, and
    every address the host resolves to allowed by ``policy`` (or the host and port one of its ``origins``).
    Decimal (``2130706433``) and IPv6 forms are caught because the check is on what the host resolves to, not
    on how it is written.
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidUrl("Enter the URL of the media.")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise InvalidUrl(f"The URL is longer than {MAX_URL_LENGTH} characters.")
    if url.startswith("-"):
        raise InvalidUrl("The URL must not start with '-'.")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise InvalidUrl("The URL is not well formed.") from exc
    if parts.scheme not in {"http", "https"}:
        raise InvalidUrl("Only http:// and https:// URLs are accepted.")
    host = parts.hostname
    if not host:
        raise InvalidUrl("The URL has no host.")
    if parts.username is not None or parts.password is not None:
        raise InvalidUrl("URLs with a user name or password are not accepted.")
    origin = policy.origin_allowed(host, port)
    if not origin and not policy.host_allowed(host):
        raise UrlNotAllowed(f"Media from {host!r} is not accepted here.")
    try:
        addresses = list((resolve or _resolve)(host, port))
    except (OSError, UnicodeError) as exc:
        raise Unresolvable(f"The host {host!r} could not be resolved.") from exc
    if not addresses:
        raise Unresolvable(f"The host {host!r} could not be resolved.")
    if not origin and not all(policy.address_allowed(address) for address in addresses):
        raise UrlNotAllowed(f"The host {host!r} points to an address this server does not fetch from.")
    return url, addresses
