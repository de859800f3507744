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

    class Stage(models.TextChoices):
        NONE = "", "—"
        DOWNLOADING = "downloading", "Downloading"
        POSTPROCESSING = "postprocessing", "Post-processing"
        UPLOADING = "uploading", "Uploading"

    TERMINAL_STATUSES = frozenset({Status.COMPLETED, Status.FAILED})

    project = models.ForeignKey(Project, on_delete=models.CASCADE, null=True, blank=True, related_name="scenes")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="scenes")
    source_url = models.URLField(max_length=2048)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
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
    error_message = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    task_id = models.CharField(max_length=255, blank=True)

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    # Also the worker's heartbeat while processing: the stuck-job sweeper reads it.
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "updated_at"], name="scene_status_updated_idx")]
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
