"""Liveness (``/healthz``: the process answers) and readiness (``/readyz``: what it needs answers too)."""

from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_safe
from django.views.defaults import page_not_found
from django.views.defaults import server_error as django_server_error

from mediastore.liveness import check_workers

logger = logging.getLogger(__name__)


@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: the database, the broker and the object store answer; 503 names what does not. The
    workers' liveness (a worker that takes no queued work, or stopped reporting) is reported too, but does
    not make the web unready: taking every web process out of service for a stalled worker helps nobody."""
    checks = {"database": check_database, "broker": check_broker, "storage": check_object_store,
              "workers": check_workers}
    results: dict[str, str] = {}
    # Details (endpoints, bucket names, hosts) are for staff and the log; anyone else sees ok/failed.
    detailed = bool(getattr(request, "user", None) and request.user.is_staff)
    for name, check in checks.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # any failure is the answer, reported by name
            detail = f"{type(exc).__name__}: {str(exc)[:200]}"
            logger.warning("readyz: %s failed: %s", name, detail)
            results[name] = f"failed: {detail}" if detailed else "failed"
    ready = all(value == "ok" for name, value in results.items() if name != "workers")
    return JsonResponse({"status": "ready" if ready else "not ready", "checks": results}, status=200 if ready else 503)


# The reachability checks, shared by /readyz and check_pipeline: each raises when its part does not
# answer and otherwise says what answered.


def check_database() -> str:
    from django.db import connection

    connection.ensure_connection()
    if not settings.DATABASE_IS_MONGODB:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    return f"{connection.vendor} answers"


def check_broker() -> str:
    from mediastore.celery import app

    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=3)
    return "broker answers"


def check_object_store() -> str:
    if settings.R2_BUCKET:
        from scenes.links import store_client

        store_client().head_bucket(Bucket=settings.R2_BUCKET)
        return f"bucket {settings.R2_BUCKET} answers"
    root = Path(settings.MEDIA_ROOT)
    root.mkdir(parents=True, exist_ok=True)
    # Write, not os.access: a root process passes that check on a read-only mount.
    probe = root / ".readiness-probe"
    probe.write_bytes(b"ok")
    probe.unlink()
    return f"local folder {root} is writable"



def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """API paths answer in the API's envelope even when no route matched; pages keep Django's 404."""
    if request.path.startswith("/api/"):
        return JsonResponse({"error": {"code": "not_found", "message": "Not found.", "fields": {}}}, status=404)
    return page_not_found(request, exception or Http404())


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse({"error": {"code": "internal_error", "message": "Something went wrong on our side.",
                                       "fields": {}}}, status=500)
    return django_server_error(request)
