"""The scene lifecycle: the one module that changes a scene's status, for the worker as much as for the web.

::

    queued ──claim──▶ processing ──complete──▶ completed
      ▲                 │  │  └──fail──▶ failed ──retry──▶ queued
      │                 │  └──take_over (stale heartbeat, redelivered task)──▶ processing
      └──retry_later / release / requeue_stuck──┘  (or ──worker_lost──▶ failed once attempts are used up)
    queued | completed | failed ──restart──▶ queued        any ──(row deleted)──▶ deleted

Every transition is one conditional update by primary key (``filter(pk=…, status__in=…)``, plus the
heartbeat that was read where two parties may race) that must change exactly one row; zero rows means
someone else moved the scene first and the caller stops. ``updated_at`` is written with every change: it
is the heartbeat the sweeper and a redelivered task read.

Each transition is announced once, here, through the ``transitioned`` signal (``scene_id``,
``transition``, ``status``); webhooks, live push and metrics listen to it. A deleted row is announced from
Django's ``post_delete``, so cascades (project, user) are announced too.

The worker's transitions are ``async`` (its rows come from ``scenes.rows``: the async ORM, or PyMongo's
async client on MongoDB); the web's, admin's and commands' are sync (the ORM). Both kinds are built from
the same transition table below, so the rules exist once.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db.models.signals import post_delete
from django.dispatch import Signal, receiver
from django.utils import timezone

from scenes.models import Scene
from scenes.rows import scene_rows

logger = logging.getLogger(__name__)

Status = Scene.Status
Stage = Scene.Stage

transitioned = Signal()  # kwargs: scene_id, transition, status

WORKER_LOST = "worker_lost"
WORKER_LOST_MESSAGE = ("The worker processing this scene stopped {attempts} time(s) without finishing it "
                       "(it was killed, ran out of memory or crashed), so it is not tried again.")


def _worker_lost(attempts: int) -> dict[str, Any]:
    return {"error_code": WORKER_LOST, "error_message": WORKER_LOST_MESSAGE.format(attempts=attempts)}


class SceneStateConflict(Exception):
    """The scene was not in a status the change may start from (or no longer exists)."""

    def __init__(self, *, scene_id: str, expected: Iterable[str]) -> None:
        self.scene_id = scene_id
        self.expected = tuple(expected)
        super().__init__(f"scene {scene_id} is not in status {' or '.join(self.expected)}")


@dataclass(frozen=True)
class _Transition:
    name: str
    sources: tuple[str, ...]
    target: str


CLAIM = _Transition("claim", (Status.QUEUED,), Status.PROCESSING)
TAKE_OVER = _Transition("take_over", (Status.PROCESSING,), Status.PROCESSING)
HEARTBEAT = _Transition("heartbeat", (Status.PROCESSING,), Status.PROCESSING)
COMPLETE = _Transition("complete", (Status.PROCESSING,), Status.COMPLETED)
FAIL = _Transition("fail", (Status.PROCESSING,), Status.FAILED)
WORKER_LOST_FAIL = _Transition("worker_lost", (Status.PROCESSING,), Status.FAILED)
RETRY_LATER = _Transition("retry_later", (Status.PROCESSING,), Status.QUEUED)
RELEASE = _Transition("release", (Status.PROCESSING,), Status.QUEUED)
RETRY = _Transition("retry", (Status.FAILED,), Status.QUEUED)
RESTART = _Transition("restart", (Status.QUEUED, Status.COMPLETED, Status.FAILED), Status.QUEUED)
REQUEUE_STUCK = _Transition("requeue_stuck", (Status.PROCESSING, Status.QUEUED), Status.QUEUED)
RESEND = _Transition("resend", (Status.QUEUED,), Status.QUEUED)


def _changes(transition: _Transition, now: dt.datetime, extra: dict[str, Any]) -> dict[str, Any]:
    # QuerySet.update() skips auto_now, and updated_at is the heartbeat: set it here, always.
    base: dict[str, Any] = {"updated_at": now, "status": transition.target}
    if transition.target == Status.QUEUED:
        base.update(stage=Stage.NONE, progress=None)
    elif transition.target in (Status.COMPLETED, Status.FAILED):
        base["stage"] = Stage.NONE
    return {**base, **extra}


def _log(scene_id: str, transition: _Transition) -> None:
    if transition is not HEARTBEAT:
        logger.info("scene %s: %s → %s", scene_id, transition.name, transition.target)


def _announce(scene_id: str, transition: _Transition) -> None:
    _log(scene_id, transition)
    if transition is not HEARTBEAT:
        transitioned.send(sender=Scene, scene_id=scene_id, transition=transition.name, status=transition.target)


async def _aannounce(scene_id: str, transition: _Transition) -> None:
    _log(scene_id, transition)
    if transition is not HEARTBEAT:
        await transitioned.asend(sender=Scene, scene_id=scene_id, transition=transition.name,
                                 status=transition.target)


def _apply(transition: _Transition, *, scene_id: str, where: dict[str, Any] | None = None,
           **extra: Any) -> None:
    """The sync form (web, admin, commands): raises ``SceneStateConflict`` when no row matched."""
    changes = _changes(transition, timezone.now(), extra)
    changed = Scene.objects.filter(pk=scene_id, status__in=transition.sources, **(where or {})).update(**changes)
    if changed != 1:
        raise SceneStateConflict(scene_id=scene_id, expected=transition.sources)
    _announce(scene_id, transition)


async def _aapply(transition: _Transition, *, scene_id: str, where: dict[str, Any] | None = None,
                  increment: dict[str, int] | None = None, **extra: Any) -> bool:
    """The worker's form: returns whether the row matched (the worker stops quietly when it did not)."""
    changes = _changes(transition, timezone.now(), extra)
    condition = {"status__in": transition.sources, **(where or {})}
    changed = await scene_rows().update(scene_id, where=condition, changes=changes, increment=increment)
    if changed != 1:
        return False
    await _aannounce(scene_id, transition)
    return True


# --- The worker's transitions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    claimed: bool
    reason: str  # claimed, taken_over, worker_lost, already_completed, already_failed, busy, missing
    source_url: str = ""
    title: str = ""
    attempts: int = 0


async def claim(*, scene_id: str, stale_after: float, max_attempts: int) -> Claim:
    """queued → processing; or take over a processing scene whose heartbeat is older than ``stale_after``
    (its worker died and the broker redelivered the task). A scene whose worker died on its last allowed
    attempt fails as ``worker_lost`` instead: a job that kills its worker is not run forever."""
    current = await scene_rows().read(scene_id)
    if current is None:
        return Claim(claimed=False, reason="missing")
    status, attempts = current["status"], int(current["attempts"] or 0)
    now = timezone.now()
    # Compare-and-set on the heartbeat we read: of two redelivered tasks one wins, and a scene stored again
    # (a new URL) between the read and the claim is not claimed with the old one.
    where = {"updated_at": current["updated_at"]}
    if status == Status.QUEUED:
        transition, reason = CLAIM, "claimed"
    elif status == Status.PROCESSING and current["updated_at"] < now - dt.timedelta(seconds=stale_after):
        if attempts >= max_attempts:
            await _aapply(WORKER_LOST_FAIL, scene_id=scene_id, where=where, **_worker_lost(attempts))
            return Claim(claimed=False, reason=WORKER_LOST)
        transition, reason = TAKE_OVER, "taken_over"
    else:
        reason = {Status.PROCESSING: "busy", Status.COMPLETED: "already_completed"}.get(status, f"already_{status}")
        return Claim(claimed=False, reason=reason)
    claimed = await _aapply(transition, scene_id=scene_id, where=where, increment={"attempts": 1},
                            stage=Stage.DOWNLOADING, progress=0, started_at=now, error_code="", error_message="")
    if not claimed:
        return Claim(claimed=False, reason="busy")
    return Claim(claimed=True, reason=reason, source_url=current["source_url"], title=current["title"] or "",
                 attempts=attempts + 1)


# The worker's writes after its claim carry the attempt it claimed (``attempts`` is the run's token): once
# the scene was taken over or queued again and claimed by another run, the old run's writes match nothing.


async def heartbeat(*, scene_id: str, attempt: int, stage: str | None = None, progress: int | None = None) -> bool:
    """Still alive (and, optionally, how far); False once the scene is no longer this run's."""
    extra: dict[str, Any] = {}
    if stage is not None:
        extra["stage"] = stage
    if progress is not None:
        extra["progress"] = progress
    return await _aapply(HEARTBEAT, scene_id=scene_id, where={"attempts": attempt}, **extra)


async def complete(*, scene_id: str, attempt: int, fields: dict[str, Any]) -> bool:
    """processing → completed, with where the media went and what ffprobe said of it."""
    return await _aapply(COMPLETE, scene_id=scene_id, where={"attempts": attempt}, **fields, progress=100,
                         completed_at=timezone.now(), error_code="", error_message="")


async def fail(*, scene_id: str, attempt: int, code: str, message: str) -> bool:
    """processing → failed, with a stable code and the specific reason."""
    return await _aapply(FAIL, scene_id=scene_id, where={"attempts": attempt}, error_code=code,
                         error_message=message)


async def retry_later(*, scene_id: str, attempt: int, code: str, message: str) -> bool:
    """processing → queued after a transient error, keeping the error visible until the next attempt."""
    return await _aapply(RETRY_LATER, scene_id=scene_id, where={"attempts": attempt}, error_code=code,
                         error_message=message)


async def release(*, scene_id: str, attempt: int) -> bool:
    """processing → queued when the worker shuts down mid-job; the attempt does not count against the
    scene, since the job did nothing wrong."""
    return await _aapply(RELEASE, scene_id=scene_id, where={"attempts": attempt}, increment={"attempts": -1})


async def exists(*, scene_id: str) -> bool:
    return await scene_rows().read(scene_id) is not None


# --- The web's, admin's and commands' transitions ---------------------------------------------------------


def retry(*, scene_id: str, task_id: str) -> None:
    """failed → queued (a person asked for another try), clearing the last attempt's error; the attempts
    start again from zero."""
    _apply(RETRY, scene_id=scene_id, task_id=task_id, error_code="", error_message="", attempts=0)


def restart(*, scene_id: str, task_id: str, **changes: Any) -> None:
    """queued, completed or failed → queued (the scene is stored again); a scene being processed right now
    is not restarted under the worker's feet."""
    _apply(RESTART, scene_id=scene_id, task_id=task_id, error_code="", error_message="", attempts=0, **changes)


def requeue_stuck(*, scene_id: str, seen_updated_at: dt.datetime, task_id: str, max_attempts: int) -> str:
    """A processing scene whose heartbeat stopped → queued again, or failed as ``worker_lost`` once its
    attempts are used up; a queued scene whose enqueue was lost → queued again. Conditional on the heartbeat
    that was read, so a worker that came back to life in between wins. Returns the new status."""
    where = {"updated_at": seen_updated_at}
    status, attempts = Scene.objects.filter(pk=scene_id).values_list("status", "attempts").first() or ("", 0)
    if status == Status.PROCESSING and attempts >= max_attempts:
        _apply(WORKER_LOST_FAIL, scene_id=scene_id, where=where, **_worker_lost(attempts))
        return Status.FAILED
    _apply(REQUEUE_STUCK, scene_id=scene_id, where=where, task_id=task_id)
    return Status.QUEUED


def resend(*, scene_id: str, seen_updated_at: dt.datetime, task_id: str) -> None:
    """queued → queued with a fresh heartbeat: its task is being sent again (the first one was lost)."""
    _apply(RESEND, scene_id=scene_id, where={"updated_at": seen_updated_at}, task_id=task_id)


@receiver(post_delete, sender=Scene, dispatch_uid="scenes.lifecycle.deleted")
def _scene_deleted(*, instance: Scene, **_: Any) -> None:
    logger.info("scene %s: deleted", instance.pk)
    transitioned.send(sender=Scene, scene_id=instance.pk, transition="delete", status="deleted")
