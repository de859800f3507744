"""``check_pipeline --e2e``'s sample, served by the web to a worker that may run in another container.

With ``PIPELINE_CHECK_SAMPLE_ORIGIN`` set (where the worker reaches the web, ``http://web:8000`` in compose),
the check generates the sample into ``$DATA_DIR/check-sample/`` (the volume web and workers share), stores a
scene of ``CHECK_USER`` with the URL ``<origin>/check/sample/<token>.mp4`` and the web serves it. The token
is the file's random name signed with the secret key (salted, valid ``MAX_AGE``): the view serves those files
and nothing a request could name, so nobody fetches anything else through it.

The web's address is internal, and the address policy refuses it for everyone, rightly: a user's URL that
led there would reach services nobody outside may reach. The worker lets exactly one job past that: the
check user's scene whose URL is a sample URL on the configured origin gets that origin's host and port as an
allowance in its job's policy (``egress_origins``, ``downloads.egress.Policy.origins``); every other job,
and every other host or port of this one, meets the ordinary policy.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.core import signing
from django.urls import Resolver404, resolve, reverse

from scenes import selectors

CHECK_USER = "pipeline-check"
SAMPLE_ROUTE = "check/sample/<str:token>.mp4"
URL_NAME = "check-sample"
MAX_AGE = 600  # seconds a sample URL is served: the check takes a minute, a leaked URL soon serves nothing
_SALT = "mediastore.check_sample"
_NAME = re.compile(r"[0-9a-f]{32}")


def sample_folder() -> Path:
    return Path(settings.DATA_DIR) / "check-sample"


def new_sample_path() -> Path:
    """Where to generate a sample: a fresh random name in the sample folder (made when missing); old samples a
    killed check left behind are removed on the way."""
    folder = sample_folder()
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.mp4"):
        if stale.stat().st_mtime < time.time() - MAX_AGE:
            stale.unlink(missing_ok=True)
    return folder / f"{uuid.uuid4().hex}.mp4"


def sample_url(*, origin: str, path: Path) -> str:
    token = signing.TimestampSigner(salt=_SALT).sign(path.stem)
    return origin + reverse(URL_NAME, kwargs={"token": token})


def sample_file(token: str) -> Path | None:
    """The sample a token names, or None: a bad or expired signature, or a file that is gone."""
    try:
        name = signing.TimestampSigner(salt=_SALT).unsign(token, max_age=MAX_AGE)
    except signing.BadSignature:  # SignatureExpired too
        return None
    # Signed by us, so never "../x"; checked anyway, the shape is all a name may ever have.
    if not _NAME.fullmatch(name):
        return None
    path = sample_folder() / f"{name}.mp4"
    return path if path.is_file() else None


def egress_origins(*, scene_id: str) -> tuple[str, ...]:
    """The origins the worker may fetch this scene's media from beyond the address policy: the configured
    origin for the check user's scene whose URL is a sample URL there, else none."""
    origin = settings.PIPELINE_CHECK_SAMPLE_ORIGIN
    if not origin:
        return ()
    source_url = selectors.scene_source_url(scene_id=scene_id, owner_username=CHECK_USER)
    if source_url is None:
        return ()
    parts = urlsplit(source_url)
    if f"{parts.scheme}://{parts.netloc}" != origin or parts.query or parts.fragment:
        return ()
    try:
        match = resolve(parts.path)
    except Resolver404:
        return ()
    return (origin,) if match.url_name == URL_NAME else ()
