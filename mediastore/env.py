"""Typed readers for environment variables.

Every reader raises ``ImproperlyConfigured`` naming the variable, so a bad value stops the process at
start-up with a message an operator can act on instead of failing later somewhere deep.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import overload
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_SIZE_SUFFIXES = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def env_str(name: str, default: str) -> str:
    value = _raw(name)
    return default if value is None else value


def env_optional_str(name: str) -> str | None:
    return _raw(name)


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}: expected a boolean (true/false, 1/0, yes/no), got {value!r}")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}: expected a whole number, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}: must be at least {minimum}, got {number}")
    return number


def parse_size(text: str) -> int:
    """``"2G"`` → 2147483648. Suffixes K, M, G, T are powers of 1024; ``"10MB"`` and ``"10MiB"`` work."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r}")
    return int(match.group(1)) * _SIZE_SUFFIXES[match.group(2).upper()]


def env_size(name: str, default: int) -> int:
    value = _raw(name)
    if value is None:
        return default
    try:
        size = parse_size(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}: expected a size in bytes such as 500M or 2G, got {value!r}") from None
    if size <= 0:
        raise ImproperlyConfigured(f"{name}: must be greater than zero, got {value!r}")
    return size


def parse_duration(text: str) -> float:
    """``"30m"`` → 1800.0 seconds; a bare number is seconds."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    return float(match.group(1)) * _DURATION_UNITS[(match.group(2) or "s").lower()]


def env_duration(name: str, default: float) -> float:
    value = _raw(name)
    if value is None:
        return default
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}: expected a duration such as 90, 90s, 30m or 4h, got {value!r}") from None
    if seconds <= 0:
        raise ImproperlyConfigured(f"{name}: must be greater than zero, got {value!r}")
    return seconds


def env_durations(name: str, default: list[str]) -> list[float]:
    """A comma-separated list of durations (``"5s,5m,2h"``), each greater than zero."""
    seconds = []
    for text in env_list(name, default):
        try:
            value = parse_duration(text)
        except ValueError:
            raise ImproperlyConfigured(f"{name}: {text!r} is not a duration such as 90, 90s, 30m or 4h") from None
        if value <= 0:
            raise ImproperlyConfigured(f"{name}: every delay must be greater than zero, got {text!r}")
        seconds.append(value)
    return seconds


def env_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_path(name: str, default: str) -> Path:
    return Path(env_str(name, default)).expanduser().resolve()


@overload
def env_url(name: str, default: str, *, schemes: tuple[str, ...]) -> str: ...
@overload
def env_url(name: str, default: None, *, schemes: tuple[str, ...]) -> str | None: ...
def env_url(name: str, default: str | None, *, schemes: tuple[str, ...]) -> str | None:
    value = _raw(name)
    if value is None:
        return default
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        allowed = ", ".join(f"{s}://" for s in schemes)
        raise ImproperlyConfigured(f"{name}: expected a URL starting with {allowed} and a host, got {value!r}")
    return value
