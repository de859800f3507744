"""Projects and scenes: one schema and one set of migrations for SQLite and MongoDB."""

from __future__ import annotations

import secrets

from bson import ObjectId
from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


def new_object_id() -> str:
    """A 24-hex ObjectId string, made by the app so both backends hold the same kind of key. Random, not
    ``ObjectId()``: its time, process and counter parts let anyone who sees one id guess the next."""
    return str(ObjectId(secrets.token_bytes(12)))


class ObjectIdModel(models.Model):
    # db_column "_id": on MongoDB this string *is* the document's _id, so the worker's
    # update_one({"_id": pk}) and the ORM address the same field; SQLite accepts the name as it is.
    id = models.CharField(
        primary_key=True, max_length=24, default=new_object_id, editable=False, db_column="_id"
    )

    class Meta:
        abstract = True


class Project(ObjectIdModel):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="projects")
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name


class Scene(ObjectIdModel):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        PROCESSING = "processing", "Processing"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Stage(models.TextChoices):
        NONE = "", "—"
        DOWNLOADING = "downloading", "Downloading"
        POSTPROCESSING = "postprocessing", "Post-processing"
        UPLOADING = "uploading", "Uploading"

    TERMINAL_STATUSES = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})

    project = models.ForeignKey(Project, on_delete=models.CASCADE, null=True, blank=True, related_name="scenes")
    # No index of its own: scene_owner_status_idx starts with the owner and serves every lookup by owner.
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="scenes",
                              db_index=False)
    source_url = models.URLField(max_length=2048)

    # No index of its own either: scene_status_updated_idx starts with the status.
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    stage = models.CharField(max_length=16, choices=Stage.choices, default=Stage.NONE, blank=True)
    progress = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(0), MaxValueValidator(100)]
    )

    title = models.CharField(max_length=500, blank=True)
    duration = models.FloatField(null=True, blank=True, help_text="Seconds.")
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    size_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    video_codec = models.CharField(max_length=64, blank=True)
    audio_codec = models.CharField(max_length=64, blank=True)
    content_type = models.CharField(max_length=128, blank=True)

    storage_key = models.CharField(max_length=512, blank=True)
    thumbnail_key = models.CharField(max_length=512, blank=True)

    error_code = models.CharField(max_length=64, blank=True, db_index=True)
    error_message = models.TextField(blank=True)  # for the person: what happened, what they can do
    error_detail = models.TextField(blank=True)  # for engineers: the tool's own words, without server paths
    attempts = models.PositiveIntegerField(default=0)
    task_id = models.CharField(max_length=255, blank=True)

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    # Set while a processing scene waits for its worker to stop (a cancel); the worker's writes are
    # conditional on it being empty, so a cancel and a completion cannot both win.
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # Also the worker's heartbeat while processing: the stuck-job sweeper reads it.
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "updated_at"], name="scene_status_updated_idx"),
            # The active cap's count on every store and retry: with the owner's index alone it read every
            # scene the owner ever made; with this one it counts the queued and processing entries only.
            models.Index(fields=["owner", "status"], name="scene_owner_status_idx"),
        ]
        permissions = [("requeue_scene", "Can re-queue failed scenes")]

    def __str__(self) -> str:
        return self.title or self.source_url

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL_STATUSES


class IdempotencyRecord(ObjectIdModel):
    """The first answer to a store request sent with an ``Idempotency-Key``, replayed for 24 hours."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField()
    response = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "key"], name="idempotency_owner_key")]


class PendingDeletion(ObjectIdModel):
    """The stored objects of a deleted scene, until its delete task says they are gone. Written in the
    transaction that deletes the scene, so a delete task that was never sent (broker down) or was lost is
    sent again by the sweeper."""

    scene_id = models.CharField(max_length=24, unique=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)


class WebhookEndpoint(ObjectIdModel):
    """Where a user wants to hear of their scenes' transitions: signed to the Standard Webhooks spec."""

    class Event(models.TextChoices):
        PROCESSING = "scene.processing", "scene.processing"
        COMPLETED = "scene.completed", "scene.completed"
        FAILED = "scene.failed", "scene.failed"
        CANCELLED = "scene.cancelled", "scene.cancelled"
        DELETED = "scene.deleted", "scene.deleted"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_endpoints")
    # Only this project's scenes; empty: all of the owner's.
    project = models.ForeignKey(Project, on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    url = models.URLField(max_length=2048)
    description = models.CharField(max_length=200, blank=True)
    events = models.JSONField(default=list)  # Event values; empty: every event
    secret = models.CharField(max_length=100)
    # The secret before the last rotation, still signed with until it expires: receivers switch at leisure.
    previous_secret = models.CharField(max_length=100, blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    # Set when a delivery used up its retries; cleared by the next success.
    failing_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.url

    def wants(self, event: str) -> bool:
        return not self.events or event in self.events


class WebhookDelivery(ObjectIdModel):
    """One event for one endpoint; its id is the ``webhook-id`` (the receiver's idempotency key). Recorded
    in the transaction of the transition it announces, so a broker that is down loses nothing: the sweeper
    sends what is due."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"  # waiting for its (next) attempt at next_attempt_at
        SENDING = "sending", "Sending"  # an attempt is running; leased until next_attempt_at
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"  # retries used up

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=32)
    scene_id = models.CharField(max_length=24, db_index=True)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(db_index=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "webhook deliveries"
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="delivery_status_due_idx")]


class WebhookAttempt(ObjectIdModel):
    """One try of a delivery: what the receiver answered and how long it took (the delivery log)."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="log")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)  # why there was no answer (refused, timeout, …)
    response_excerpt = models.TextField(blank=True)

    class Meta:
        ordering = ["number"]


class ApiToken(ObjectIdModel):
    """A person's API token. Only its SHA-256 digest is stored (the token has 256 random bits, so a fast hash
    is enough); the token itself is shown once, when it is made. ``prefix`` names it in lists."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16)
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"
