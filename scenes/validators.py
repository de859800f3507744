"""Media URLs from users: what we accept before anything is stored.

Absolute ``http``/``https`` only, at most 2048 characters, a host, no leading ``-``, no credentials. The
host is resolved and refused when any of its addresses is loopback, private, link-local, multicast,
reserved or otherwise not global (the worker must not be pointed at our own network), unless it falls in
``MEDIA_ALLOWED_NETWORKS``. Decimal (``2130706433``) and IPv4-mapped IPv6 forms are caught because the
check is on what the host resolves to, not on how it is written. ``MEDIA_ALLOWED_HOSTS``, when set,
limits submissions to those domains and their subdomains.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from django.conf import settings

MAX_URL_LENGTH = 2048

Resolver = Callable[[str, int], Iterable[str]]


class UrlRejected(Exception):
    code = "invalid_url"
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidUrl(UrlRejected):
    pass


class UrlNotAllowed(UrlRejected):
    code = "url_not_allowed"
    status = 422


def _resolve(host: str, port: int) -> list[str]:
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)})


def _global(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def validate_media_url(url: str, *, resolve: Resolver | None = None) -> str:
    """Return the URL (stripped) when it may be ingested; raise ``InvalidUrl`` or ``UrlNotAllowed``."""
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
    _check_allowed_host(host)
    try:
        addresses = [ipaddress.ip_address(a.split("%")[0]) for a in (resolve or _resolve)(host, port)]
    except (OSError, UnicodeError) as exc:
        raise InvalidUrl(f"The host {host!r} could not be resolved.") from exc
    if not addresses:
        raise InvalidUrl(f"The host {host!r} could not be resolved.")
    allowed = [ipaddress.ip_network(n) for n in settings.MEDIA_ALLOWED_NETWORKS]
    for address in addresses:
        if any(address in network for network in allowed):
            continue
        if not _global(address):
            raise UrlNotAllowed(f"The host {host!r} points to an address this server does not fetch from.")
    return url


def _check_allowed_host(host: str) -> None:
    domains = [d.lower().lstrip(".") for d in settings.MEDIA_ALLOWED_HOSTS]
    if not domains:
        return
    host = host.lower().rstrip(".")
    if not any(host == d or host.endswith("." + d) for d in domains):
        raise UrlNotAllowed(f"Media from {host!r} is not accepted here.")
