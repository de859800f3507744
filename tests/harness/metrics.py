"""Read what a metrics endpoint serves: scrape it with a bearer token, parse the text into samples."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """``{(name, sorted label pairs): value}`` of every sample in a text exposition."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when absent (a labelled series appears with its first increment)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(url: str, *, token: str | None) -> tuple[int, str]:
    """(HTTP status, body) of one GET, with ``Authorization: Bearer <token>`` when a token is given."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()
