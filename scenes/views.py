"""Pages and files served by the app itself."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.models import User
from django.contrib.auth.views import redirect_to_login
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render, resolve_url
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST, require_safe
from django_htmx.http import HttpResponseClientRedirect, HttpResponseStopPolling, reswap, retarget
from django_htmx.middleware import HtmxDetails
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.views import APIView

from scenes import check_sample, live, ranges, selectors, services
from scenes.api import StoreThrottle
from scenes.forms import StoreForm
from scenes.lifecycle import SceneStateConflict
from scenes.links import media_url, thumbnail_url
from scenes.models import Scene
from scenes.validators import UrlRejected

_PageView = Callable[..., HttpResponse]


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails  # set by django_htmx's middleware


class SceneFileView(APIView):
    """The stored media or thumbnail of one's own scene when objects live in the local folder.

    An API view, so token clients (the API's own ``media_url``) and signed-in people both get in.
    """

    @extend_schema(exclude=True)  # bytes, not JSON: reached through media_url/thumbnail_url
    def get(self, request: Request, scene_id: str, kind: str) -> HttpResponseBase:
        if settings.R2_BUCKET or kind not in {"media", "thumbnail"}:
            raise exceptions.NotFound()
        user = request.user
        assert isinstance(user, User)
        owner = selectors.reach(user=user, permission="scenes.view_scene")
        scene = selectors.scene_list(owner=owner).filter(pk=scene_id).first()
        if scene is None:
            raise exceptions.NotFound()
        key = scene.storage_key if kind == "media" else scene.thumbnail_key
        root = Path(settings.MEDIA_ROOT).resolve()
        path = (root / key).resolve() if key else None
        if path is None or not path.is_relative_to(root) or not path.is_file():
            raise exceptions.NotFound()
        content_type = (scene.content_type or "application/octet-stream") if kind == "media" else "image/jpeg"
        return ranges.file_response(request, path, content_type=content_type)


@require_safe  # GET and HEAD: yt-dlp's generic extractor and downloader ask both
def check_sample_file(request: HttpRequest, token: str) -> HttpResponseBase:
    """check_pipeline's sample, for the worker (``scenes.check_sample``): no session, the signed token is the
    key, and a bad or expired one is a 404 like a missing file."""
    path = check_sample.sample_file(token)
    if path is None:
        raise Http404()
    return ranges.file_response(request, path, content_type="video/mp4")


# --- The status page: Django templates + htmx. Views parse input and call selectors and services. ---------

PAGE_SIZE = 20
POLL_SECONDS = 1  # how often a row that is not finished asks for itself again


@dataclass(frozen=True)
class SceneRow:
    """One scene as the page shows it: links are worked out here, so templates hold no logic."""

    scene: Scene
    media_url: str | None
    thumbnail_url: str | None
    notice: str = ""
    poll_seconds: int = POLL_SECONDS

    @property
    def polling(self) -> bool:
        return self.scene.status not in Scene.TERMINAL_STATUSES


def _row(scene: Scene, request: HtmxHttpRequest, notice: str = "") -> SceneRow:
    return SceneRow(scene=scene, media_url=media_url(scene, request=request),
                    thumbnail_url=thumbnail_url(scene, request=request), notice=notice)


def _user(request: HtmxHttpRequest) -> User:
    user = request.user
    assert isinstance(user, User)
    return user


def signed_in(view: _PageView) -> _PageView:
    """``login_required`` that also serves htmx: a fragment request gets ``HX-Redirect`` to the login page, so
    an expired session shows the login page instead of swapping it into a row."""

    @wraps(view)
    def wrapper(request: HtmxHttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.user.is_authenticated:
            return view(request, *args, **kwargs)
        if request.htmx:
            current = request.htmx.current_url_abs_path or reverse("scene-page")
            return HttpResponseClientRedirect(f"{resolve_url(settings.LOGIN_URL)}?next={quote(current)}")
        return redirect_to_login(request.get_full_path())

    return wrapper


def _gone(request: HtmxHttpRequest) -> HttpResponse:
    """The scene is not there (deleted elsewhere, or not the caller's). htmx: 286 with no body removes the
    row and stops its polling; a plain request gets the 404 page."""
    if request.htmx:
        return HttpResponseStopPolling("")
    raise Http404("No such scene.")


def own_scene(view: _PageView) -> _PageView:
    """Hands the view the caller's scene named by the URL's ``scene_id``; one that is not there is gone."""

    @wraps(view)
    def wrapper(request: HtmxHttpRequest, scene_id: str) -> HttpResponse:
        scene = selectors.scene_owned(owner=_user(request), scene_id=scene_id)
        if scene is None:
            return _gone(request)
        return view(request, scene)

    return wrapper


def _page(request: HtmxHttpRequest, *, form: StoreForm, status: int = 200, form_error: str = "") -> HttpResponse:
    status_filter = request.GET.get("status") or None
    notice = ""
    if status_filter is not None and status_filter not in Scene.Status.values:
        notice = f"There is no status “{status_filter}”; showing every scene."
        status_filter = None
    scenes = selectors.scene_list(owner=_user(request), status=status_filter)
    page = Paginator(scenes, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "scenes/page.html", {
        "form": form, "form_error": form_error, "page": page, "rows": [_row(s, request) for s in page],
        "status_filter": status_filter, "statuses": Scene.Status.choices, "notice": notice,
        # The page's live stream resumes from here: what changes between this render and its start is sent too.
        "events_from": live.stream_position(),
    }, status=status)


@signed_in
@require_safe
def scene_page(request: HtmxHttpRequest) -> HttpResponse:
    return _page(request, form=StoreForm(owner=_user(request)))


def _form_error(request: HtmxHttpRequest, form: StoreForm, *, status: int, message: str = "",
                headers: dict[str, str] | None = None) -> HttpResponse:
    """The form again with its errors: in place of the form for htmx, the whole page otherwise."""
    if request.htmx:
        response = render(request, "scenes/_form.html", {"form": form, "form_error": message}, status=status)
        response = reswap(retarget(response, "#store-form"), "outerHTML")
    else:
        response = _page(request, form=form, status=status, form_error=message)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _throttled(request: HtmxHttpRequest) -> int | None:
    """Seconds to wait when the caller is over the store limit. The API's throttle and counter: a person
    cannot get around the limit by switching to the page, nor by retrying instead of storing."""
    throttle = StoreThrottle()
    if throttle.allow_request(cast(Any, request), cast(Any, None)):
        return None
    return max(1, math.ceil(throttle.wait() or 1))


@signed_in
@require_POST
def scene_submit(request: HtmxHttpRequest) -> HttpResponse:
    user = _user(request)
    form = StoreForm(request.POST, owner=user)
    wait = _throttled(request)
    if wait is not None:
        message = f"You have sent many URLs in a short time. Try again in {wait} s."
        return _form_error(request, form, status=429, message=message, headers={"Retry-After": str(wait)})
    if not form.is_valid():
        return _form_error(request, form, status=form.error_status())
    try:
        scene = services.scene_store(owner=user, source_url=form.cleaned_data["url"],
                                     project=form.cleaned_data["project"])
    except services.TooManyActive as busy:
        return _form_error(request, form, status=429, message=busy.message)
    if not request.htmx:
        return redirect("scene-page")
    return render(request, "scenes/_created.html", {"row": _row(scene, request), "form": StoreForm(owner=user)},
                  status=202)


@signed_in
@require_safe
@own_scene
def scene_row(request: HtmxHttpRequest, scene: Scene) -> HttpResponse:
    return render(request, "scenes/_row.html", {"row": _row(scene, request)})


@signed_in
@require_POST
@own_scene
def scene_retry(request: HtmxHttpRequest, scene: Scene) -> HttpResponse:
    wait = _throttled(request)
    if wait is not None:
        notice, status = f"You have started many downloads in a short time. Try again in {wait} s.", 429
    else:
        notice, status = _retry(scene)
    if not request.htmx:
        if notice:
            messages.warning(request, notice)
        return redirect("scene-page")
    scene.refresh_from_db()
    return render(request, "scenes/_row.html", {"row": _row(scene, request, notice=notice)}, status=status)


def _retry(scene: Scene) -> tuple[str, int]:
    try:
        services.scene_retry(scene=scene)
    except UrlRejected as rejected:
        return rejected.message, rejected.status
    except services.TooManyActive as busy:
        return busy.message, 429
    except SceneStateConflict:
        scene.refresh_from_db()
        return f"Only failed or cancelled scenes can be retried; this one is {scene.get_status_display().lower()}.", 409
    return "", 202


@signed_in
@require_POST
@own_scene
def scene_cancel(request: HtmxHttpRequest, scene: Scene) -> HttpResponse:
    notice, status = "", 202
    try:
        scene = services.scene_cancel(scene=scene)
    except SceneStateConflict:
        scene.refresh_from_db()
        notice = f"Only queued or processing scenes can be cancelled; this one is {scene.get_status_display().lower()}."
        status = 409
    if not request.htmx:
        if notice:
            messages.warning(request, notice)
        return redirect("scene-page")
    return render(request, "scenes/_row.html", {"row": _row(scene, request, notice=notice)}, status=status)


@signed_in
@require_http_methods(["GET", "POST"])
@own_scene
def scene_delete(request: HtmxHttpRequest, scene: Scene) -> HttpResponse:
    """POST deletes; GET is the confirmation page for browsers without JavaScript (htmx asks with
    ``hx-confirm`` instead)."""
    if request.method == "GET":
        return render(request, "scenes/confirm_delete.html", {"row": _row(scene, request)})
    services.scene_delete(scene=scene)
    if request.htmx:
        return HttpResponse("")  # the row is swapped for nothing
    messages.success(request, "The scene and its stored media were deleted.")
    return redirect("scene-page")


# --- API tokens: a signed-in person makes, names, sees once and revokes their own -------------------------


@signed_in
@require_http_methods(["GET", "POST"])
def token_page(request: HtmxHttpRequest) -> HttpResponse:
    from scenes import tokens

    user = _user(request)
    new_token, form_error = "", ""
    if request.method == "POST":
        name = (request.POST.get("name") or "").strip()
        if not name or len(name) > 100:
            form_error = "Give the token a name of at most 100 characters, such as the program that uses it."
        else:
            new_token = tokens.api_token_create(owner=user, name=name)[1]
    return render(request, "scenes/tokens.html", {
        "tokens": tokens.api_token_list(owner=user), "new_token": new_token, "form_error": form_error,
    }, status=400 if form_error else 200)


@signed_in
@require_POST
def token_revoke(request: HtmxHttpRequest, token_id: str) -> HttpResponse:
    from scenes import tokens

    row = tokens.api_token_list(owner=_user(request)).filter(pk=token_id).first()
    if row is None:
        raise Http404("No such token.")
    tokens.api_token_revoke(token=row)
    messages.success(request, f"The token “{row.name}” is revoked: it opens nothing any more.")
    return redirect("token-page")
