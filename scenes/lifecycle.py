"""The scene lifecycle: the one module that changes a scene's status, for the worker as much as for the web.

::

    queued ──claim──▶ processing ──complete──▶ completed
      ▲                 │  │  └──fail──▶ failed ──retry──▶ queued
      │                 │  └──take_over (stale heartbeat, redelivered task)──▶ processing
      └──retry_later / release / requeue_stuck──┘  (or ──worker_lost──▶ failed once attempts are used up)
    queued | completed | failed | cancelled ──restart──▶ queued        any ──(row deleted)──▶ deleted
    queued ──cancel──▶ cancelled      processing ──request_cancel──▶ processing (cancel_requested_at set)
    processing (cancel requested) ──cancelled (its worker, or the sweeper once it is stale)──▶ cancelled
    failed | cancelled ──retry──▶ queued

Every transition is one conditional update by primary key (``filter(pk=…, status__in=…)``, plus the
heartbeat that was read where two parties may race) that must change exactly one row; zero rows means
someone else moved the scene first and the caller stops. ``updated_at`` is written with every change: it
is the heartbeat the sweeper and a redelivered task read.

Each transition is announced once, here. Inside the transition's own transaction the scene is read back as
the API shows it, and the webhook deliveries it owes are recorded (``scenes.webhooks.record``), so a broker
that is down loses no event; once committed, the ``transitioned`` signal carries an ``Announcement`` to the
live push and the metrics. A worker's progress write is announced the same way (transition ``progress``),
without webhooks. A deleted row is announced from Django's ``post_delete``, so cascades are announced too.

A cancel of a processing scene only marks it (``cancel_requested_at``): its worker stops the job and writes
``cancelled``. Every write of the worker's run is conditional on that mark being empty, so a cancel racing
the completion ends in exactly one terminal status: whichever write came first wins.

The worker's transitions are ``async`` (its rows come from ``scenes.rows``: the async ORM, or PyMongo's
async client on MongoDB); the web's, admin's and commands' are sync (the ORM). Both kinds are built from
the same transition table below, so the rules exist once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import Signal, receiver
from django.utils import timezone

from scenes.models import Scene
from scenes.rows import scene_rows

logger = logging.getLogger(__name__)

Status = Scene.Status
Stage = Scene.Stage

transitioned = Signal()  # kwargs: announcement (an Announcement), scene_id, transition, status


@dataclass(frozen=True)
class Announcement:
    """One announced change: which scene, what happened, and the scene as the API shows it after it."""

    scene_id: str
    transition: str
    status: str
    owner_id: int | None = None
    project_id: str | None = None
    scene: dict[str, Any] = field(default_factory=dict)

    @property
    def event(self) -> str | None:
        """The webhook event type this change is, if any (queued again, progress and take-overs are not)."""
        return EVENTS.get(self.transition)


EVENTS = {"claim": "scene.processing", "complete": "scene.completed", "fail": "scene.failed",
          "worker_lost": "scene.failed", "cancel": "scene.cancelled", "cancelled": "scene.cancelled",
          "delete": "scene.deleted"}
PROGRESS = "progress"

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
RETRY = _Transition("retry", (Status.FAILED, Status.CANCELLED), Status.QUEUED)
RESTART = _Transition("restart", (Status.QUEUED, Status.COMPLETED, Status.FAILED, Status.CANCELLED),
                      Status.QUEUED)
REQUEUE_STUCK = _Transition("requeue_stuck", (Status.PROCESSING, Status.QUEUED), Status.QUEUED)
RESEND = _Transition("resend", (Status.QUEUED,), Status.QUEUED)
CANCEL = _Transition("cancel", (Status.QUEUED,), Status.CANCELLED)
REQUEST_CANCEL = _Transition("request_cancel", (Status.PROCESSING,), Status.PROCESSING)
CANCELLED = _Transition("cancelled", (Status.PROCESSING,), Status.CANCELLED)
_NO_ERROR: dict[str, Any] = {"error_code": "", "error_message": "", "error_detail": ""}
# The worker's writes after its claim: only while no cancel waits (see the module's docstring).
_RUN_IS_ON = {"cancel_requested_at": None}


def _changes(transition: _Transition, now: dt.datetime, extra: dict[str, Any]) -> dict[str, Any]:
    # QuerySet.update() skips auto_now, and updated_at is the heartbeat: set it here, always.
    base: dict[str, Any] = {"updated_at": now, "status": transition.target}
    if transition.target == Status.QUEUED:
        base.update(stage=Stage.NONE, progress=None, cancel_requested_at=None)
    elif transition.target in Scene.TERMINAL_STATUSES:
        base["stage"] = Stage.NONE
    return {**base, **extra}


def _log(scene_id: str, transition: _Transition) -> None:
    if transition is not HEARTBEAT:
        logger.info("scene %s: %s → %s", scene_id, transition.name, transition.target)


def snapshot(scene: Scene, transition: str) -> Announcement:
    """The announcement of ``transition`` for a scene as it is now (read in the change's transaction)."""
    from scenes.serializers import scene_data

    return Announcement(scene_id=scene.pk, transition=transition, status=scene.status, owner_id=scene.owner_id,
                        project_id=scene.project_id, scene=scene_data(scene))


def _record(scene_id: str, name: str) -> Announcement | None:
    """Inside the change's transaction: the scene read back, and the webhook deliveries it owes."""
    from scenes import webhooks

    scene = Scene.objects.filter(pk=scene_id).first()
    if scene is None:
        return None
    announcement = snapshot(scene, name)
    webhooks.record(announcement)
    return announcement


def announce(announcement: Announcement) -> None:
    """After the commit: tell the listeners (live push, metrics). A listener's failure is logged, never
    raised into the transition that already happened."""
    _log_failures(announcement, transitioned.send_robust(sender=Scene, **_signal_kwargs(announcement)))


async def aannounce(announcement: Announcement) -> None:
    _log_failures(announcement, await transitioned.asend_robust(sender=Scene, **_signal_kwargs(announcement)))


def _signal_kwargs(announcement: Announcement) -> dict[str, Any]:
    return {"announcement": announcement, "scene_id": announcement.scene_id,
            "transition": announcement.transition, "status": announcement.status}


def _log_failures(announcement: Announcement, results: list[tuple[Any, Any]]) -> None:
    for receiver_fn, error in results:
        if isinstance(error, Exception):
            logger.warning("scene %s: %s listener %r failed: %s", announcement.scene_id, announcement.transition,
                           receiver_fn, error)


def _apply(transition: _Transition, *, scene_id: str, where: dict[str, Any] | None = None,
           **extra: Any) -> None:
    """The sync form (web, admin, commands): raises ``SceneStateConflict`` when no row matched."""
    changes = _changes(transition, timezone.now(), extra)
    with atomic():
        changed = Scene.objects.filter(pk=scene_id, status__in=transition.sources, **(where or {})).update(**changes)
        if changed != 1:
            raise SceneStateConflict(scene_id=scene_id, expected=transition.sources)
        announcement = _record(scene_id, transition.name)
    _log(scene_id, transition)
    if announcement is not None:
        transaction.on_commit(lambda: announce(announcement))


def atomic() -> Any:
    """A transaction on either backend: Django's ``atomic()`` is a no-op on MongoDB, whose backend has its
    own (a real transaction where the deployment supports them: replica sets, Atlas)."""
    from django.conf import settings

    if settings.DATABASE_IS_MONGODB:
        from django.db import connection
        from django_mongodb_backend import transaction as mongo_transaction

        # A standalone server has no transactions: the deliveries are then written right after the change.
        if not getattr(connection.features, "_supports_transactions", False):
            return contextlib.nullcontext()
        return mongo_transaction.atomic()
    return transaction.atomic()


async def _aapply(transition: _Transition, *, scene_id: str, where: dict[str, Any] | None = None,
                  increment: dict[str, int] | None = None, announce_as: str | None = None, **extra: Any) -> bool:
    """The worker's form: returns whether the row matched (the worker stops quietly when it did not).
    ``announce_as`` names a heartbeat worth announcing (``progress``); other heartbeats are not."""
    changes = _changes(transition, timezone.now(), extra)
    condition = {"status__in": transition.sources, **(where or {})}
    name = announce_as or (None if transition is HEARTBEAT else transition.name)
    changed, announcement = await scene_rows().update(scene_id, where=condition, changes=changes,
                                                      increment=increment, announce=name)
    if changed != 1:
        return False
    _log(scene_id, transition)
    if announcement is not None:
        await aannounce(announcement)
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
        if current["cancel_requested_at"] is not None:  # its worker died before it could stop the job
            await _aapply(CANCELLED, scene_id=scene_id, where={**where, "cancel_requested_at__isnull": False},
                          **_CANCELLED_NOTE)
            return Claim(claimed=False, reason="cancelled")
        if attempts >= max_attempts:
            await _aapply(WORKER_LOST_FAIL, scene_id=scene_id, where=where, **_worker_lost(attempts))
            return Claim(claimed=False, reason=WORKER_LOST)
        transition, reason = TAKE_OVER, "taken_over"
    else:
        reason = {Status.PROCESSING: "busy", Status.COMPLETED: "already_completed"}.get(status, f"already_{status}")
        return Claim(claimed=False, reason=reason)
    claimed = await _aapply(transition, scene_id=scene_id, where=where, increment={"attempts": 1},
                            stage=Stage.DOWNLOADING, progress=0, started_at=now, **_NO_ERROR)
    if not claimed:
        return Claim(claimed=False, reason="busy")
    return Claim(claimed=True, reason=reason, source_url=current["source_url"], title=current["title"] or "",
                 attempts=attempts + 1)


# The worker's writes after its claim carry the attempt it claimed (``attempts`` is the run's token): once
# the scene was taken over or queued again and claimed by another run, the old run's writes match nothing.


async def heartbeat(*, scene_id: str, attempt: int, stage: str | None = None, progress: int | None = None) -> bool:
    """Still alive (and, optionally, how far: then announced as ``progress``); False once the scene is no
    longer this run's, or a cancel waits for it (``cancel_waiting`` tells which)."""
    extra: dict[str, Any] = {}
    if stage is not None:
        extra["stage"] = stage
    if progress is not None:
        extra["progress"] = progress
    return await _aapply(HEARTBEAT, scene_id=scene_id, where={"attempts": attempt, **_RUN_IS_ON},
                         announce_as=PROGRESS if extra else None, **extra)


async def complete(*, scene_id: str, attempt: int, fields: dict[str, Any]) -> bool:
    """processing → completed, with where the media went and what ffprobe said of it."""
    return await _aapply(COMPLETE, scene_id=scene_id, where={"attempts": attempt, **_RUN_IS_ON}, **fields,
                         progress=100, completed_at=timezone.now(), **_NO_ERROR)


async def fail(*, scene_id: str, attempt: int, code: str, message: str, detail: str = "") -> bool:
    """processing → failed, with a stable code, a message for the person and the detail for engineers."""
    return await _aapply(FAIL, scene_id=scene_id, where={"attempts": attempt, **_RUN_IS_ON}, error_code=code,
                         error_message=message, error_detail=detail)


async def retry_later(*, scene_id: str, attempt: int, code: str, message: str, detail: str = "") -> bool:
    """processing → queued after a transient error, keeping the error visible until the next attempt."""
    return await _aapply(RETRY_LATER, scene_id=scene_id, where={"attempts": attempt, **_RUN_IS_ON},
                         error_code=code, error_message=message, error_detail=detail)


async def release(*, scene_id: str, attempt: int) -> bool:
    """processing → queued when the worker shuts down mid-job; the attempt does not count against the
    scene, since the job did nothing wrong."""
    return await _aapply(RELEASE, scene_id=scene_id, where={"attempts": attempt, **_RUN_IS_ON},
                         increment={"attempts": -1})


CANCELLED_MESSAGE = "Cancelled on request."
_CANCELLED_NOTE: dict[str, Any] = {**_NO_ERROR, "error_message": CANCELLED_MESSAGE}


async def cancelled(*, scene_id: str, attempt: int) -> bool:
    """processing (a cancel waits) → cancelled, written by the run that stopped for it."""
    return await _aapply(CANCELLED, scene_id=scene_id, **_CANCELLED_NOTE,
                         where={"attempts": attempt, "cancel_requested_at__isnull": False})


async def cancel_waiting(*, scene_id: str, attempt: int) -> bool:
    """Whether this run's scene has a cancel waiting for it (why a write of the run matched nothing)."""
    current = await scene_rows().read(scene_id)
    return (current is not None and current["status"] == Status.PROCESSING
            and int(current["attempts"] or 0) == attempt and current["cancel_requested_at"] is not None)


async def exists(*, scene_id: str) -> bool:
    return await scene_rows().read(scene_id) is not None


# --- The web's, admin's and commands' transitions ---------------------------------------------------------


def retry(*, scene_id: str, task_id: str) -> None:
    """failed → queued (a person asked for another try), clearing the last attempt's error; the attempts
    start again from zero."""
    _apply(RETRY, scene_id=scene_id, task_id=task_id, **_NO_ERROR, attempts=0)


def restart(*, scene_id: str, task_id: str, **changes: Any) -> None:
    """queued, completed or failed → queued (the scene is stored again); a scene being processed right now
    is not restarted under the worker's feet."""
    _apply(RESTART, scene_id=scene_id, task_id=task_id, **_NO_ERROR, attempts=0, **changes)


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


def cancel(*, scene_id: str) -> str:
    """A person's cancel. queued → cancelled at once; processing → marked, for its worker to stop the job
    and write ``cancelled`` (within a couple of seconds). Returns the status the scene has now;
    ``SceneStateConflict`` when it is neither (finished already, or a cancel waits already)."""
    now = timezone.now()
    try:
        _apply(CANCEL, scene_id=scene_id, **_CANCELLED_NOTE, cancel_requested_at=now)
        return Status.CANCELLED
    except SceneStateConflict:
        pass
    try:
        _apply(REQUEST_CANCEL, scene_id=scene_id, where={"cancel_requested_at__isnull": True},
               cancel_requested_at=now)
    except SceneStateConflict:
        raise SceneStateConflict(scene_id=scene_id, expected=(Status.QUEUED, Status.PROCESSING)) from None
    return Status.PROCESSING


def cancel_abandoned(*, scene_id: str, seen_updated_at: dt.datetime) -> None:
    """processing with a cancel waiting, whose worker is gone (stale heartbeat) → cancelled (the sweeper)."""
    _apply(CANCELLED, scene_id=scene_id, where={"updated_at": seen_updated_at, "cancel_requested_at__isnull": False},
           **_CANCELLED_NOTE)


@receiver(post_delete, sender=Scene, dispatch_uid="scenes.lifecycle.deleted")
def _scene_deleted(*, instance: Scene, origin: Any = None, **_: Any) -> None:
    from django.contrib.auth import get_user_model

    from scenes import webhooks

    logger.info("scene %s: deleted", instance.pk)
    seen = snapshot(instance, "delete")
    announcement = dataclasses.replace(seen, status="deleted", scene={**seen.scene, "status": "deleted"})
    # A user's own deletion takes their endpoints with it: nobody is left to tell.
    if not isinstance(origin, get_user_model()):
        webhooks.record(announcement)
    transaction.on_commit(lambda: announce(announcement))
