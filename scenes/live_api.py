"""``GET /api/v1/scenes/events``: the caller's scene changes as Server-Sent Events.

An async view: each open stream is a coroutine waiting on its ``Subscriber`` (``scenes.live_hub``), not a
thread, so a web process holds hundreds. It needs the ASGI server; under WSGI it answers 503 at once, so a
client falls back to polling instead of hanging.

What a client gets (see the README): a ``retry:`` hint; when it resumes (``Last-Event-ID`` header, or
``?last_event_id=``) the events it missed that are still in the stream, else an ``id:`` line with the
current position; ``event: ready``; then ``event: scene`` / ``event: progress`` messages with the Redis
stream id as ``id:``, and a ``: keep-alive`` comment after ``LIVE_HEARTBEAT`` seconds of quiet. A stream
ends with ``event: lagged`` (the client fell behind: reconnect and resume), ``event: unavailable`` (Redis
was lost) or ``event: shutdown`` (this process stops: reconnect).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.core.handlers.asgi import ASGIRequest
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request

from scenes import live_hub, selectors
from scenes.api import ApiError, error_envelope_handler
from scenes.tokens import ApiTokenAuthentication

RETRY_MS = 3000  # how long a browser waits before it reconnects a stream that ended
ID_CHARS = 64


def _error(exc: exceptions.APIException) -> JsonResponse:
    """The API's error envelope, with DRF's headers (``WWW-Authenticate`` on a 401)."""
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        # What DRF's APIView adds for its first authenticator: "WWW-Authenticate: Token".
        exc.auth_header = "Token"  # type: ignore[union-attr]
    answer = error_envelope_handler(exc, {})
    assert answer is not None
    response = JsonResponse(answer.data, status=answer.status_code)
    for name, value in answer.items():
        if name.lower() != "content-type":
            response[name] = value
    return response


def _authorize(request: HttpRequest) -> live_hub.Scope:
    """Who asks (by token or session: DRF's own authenticators, as every API view has them) and so which
    events they may see: their own scenes, or everyone's for staff who may view every scene."""
    try:
        user = Request(request, authenticators=[ApiTokenAuthentication(), SessionAuthentication()]).user
        if not user.is_authenticated:
            raise exceptions.NotAuthenticated()
        assert isinstance(user, User)
        owner = selectors.reach(user=user, permission="scenes.view_scene")
    finally:
        # An open stream must not hold a database connection for hours.
        close_old_connections()
    params = {name: request.GET.get(name) or None for name in ("project", "scene")}
    too_long = {name: ["Not a valid id."] for name, value in params.items() if value and len(value) > ID_CHARS}
    if too_long:
        raise ApiError(status_code=400, code="invalid", message="Some fields are not valid.", fields=too_long)
    return live_hub.Scope(owner_id=None if owner is None else owner.pk, project_id=params["project"],
                          scene_id=params["scene"])


def _resume_from(request: HttpRequest) -> str | None:
    value = request.headers.get("Last-Event-ID") or request.GET.get("last_event_id") or None
    if value is not None and live_hub.stream_key(value) is None:
        raise ApiError(status_code=400, code="invalid", message="Some fields are not valid.",
                       fields={"last_event_id": ["Not an event id: use the id of the last event received."]})
    return value


# The stream is read-only and takes GET alone; any other method gets the API's 405 below, not Django's CSRF
# page (CSRF protects state-changing requests, of which this view has none).
@csrf_exempt
async def scene_events(request: HttpRequest) -> HttpResponseBase:
    try:
        if request.method != "GET":
            raise exceptions.MethodNotAllowed(str(request.method))
        scope = await sync_to_async(_authorize)(request)
        resume = _resume_from(request)
        if not isinstance(request, ASGIRequest):
            raise ApiError(status_code=503, code="live_unavailable",
                           message="Live events need the ASGI server; poll the scenes instead.")
        hub = live_hub.hub()
        try:
            await hub.start()
        except live_hub.RedisUnavailable as unavailable:
            raise ApiError(status_code=503, code="live_unavailable",
                           message="Live events are unavailable right now; poll the scenes instead.") from unavailable
    except exceptions.APIException as exc:
        return _error(exc)
    response = StreamingHttpResponse(_stream(hub, scope, resume), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


async def _stream(hub: live_hub.Hub, scope: live_hub.Scope, resume: str | None) -> AsyncIterator[bytes]:
    from redis.exceptions import RedisError

    _release_request_thread()
    try:
        subscriber, position = hub.subscribe(scope)
    except live_hub.RedisUnavailable:
        yield live_hub.frame(event=live_hub.UNAVAILABLE, data={})
        return
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        if resume is not None:
            try:
                if await hub.lost_after(resume):
                    # Some of what the client missed was trimmed from the stream: it must reload what it shows.
                    yield live_hub.frame(event="reset", data={"reason": "events_lost"})
                async for event in hub.replay(scope, after=resume, until=position):
                    yield event.frame
            except (RedisError, OSError):
                yield live_hub.frame(event=live_hub.UNAVAILABLE, data=_ending(live_hub.UNAVAILABLE))
                return
        # Sets the client's last event id without an event: a reconnect resumes from here.
        yield f"id: {position}\n\n".encode()
        yield live_hub.frame(event="ready", data={"last_event_id": position})
        while True:
            try:
                async with asyncio.timeout(settings.LIVE_HEARTBEAT):
                    events = await subscriber.next()
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            for event in events:
                yield event.frame
            if subscriber.ended is not None:
                yield live_hub.frame(event=subscriber.ended, data=_ending(subscriber.ended))
                return
    finally:
        hub.unsubscribe(subscriber)


def _release_request_thread() -> None:
    """Let the request's own thread go while its stream is open.

    Django's ASGI handler gives each request a thread for its sync parts (``ThreadSensitiveContext``: the
    middleware, our ``_authorize``) and keeps it until the response is over, so every open stream held an
    idle thread: 201 threads and about 130 KiB per stream for 200 streams (benchmarks/bench_sse.py). By the
    time the body is iterated no sync part is left but ``response.close()`` at the end, for which asgiref
    makes a new thread. (asgiref 3.13's ``SyncToAsync`` keeps these executors by context.)
    """
    from asgiref.sync import SyncToAsync

    context = SyncToAsync.thread_sensitive_context.get(None)
    executor = SyncToAsync.context_to_thread_executor.pop(context, None) if context is not None else None
    if executor is not None:
        executor.shutdown(wait=False)


def _ending(reason: str) -> dict[str, Any]:
    return {"reason": reason, "resume": reason != live_hub.UNAVAILABLE,
            "message": {live_hub.LAGGED: "This client fell behind; reconnect with Last-Event-ID to catch up.",
                        live_hub.SHUTDOWN: "This server is stopping; reconnect with Last-Event-ID.",
                        live_hub.UNAVAILABLE: "Live events stopped; poll the scenes."}.get(reason, "")}
