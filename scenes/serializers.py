"""How the API shows a scene: in its answers, in webhook payloads and in the live stream alike."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

from rest_framework import serializers

from downloads.exceptions import ERROR_CODE_CHOICES
from scenes.links import media_url, thumbnail_url
from scenes.models import Scene


class SceneSerializer(serializers.ModelSerializer[Scene]):
    project = serializers.CharField(source="project_id", read_only=True, allow_null=True)
    media_url = serializers.SerializerMethodField()
    error_code = serializers.ChoiceField(choices=ERROR_CODE_CHOICES, read_only=True,
                                         help_text="Stable code of the last failure; empty when there is none.")
    error_message = serializers.CharField(read_only=True, help_text="What happened, for the person.")
    error_detail = serializers.CharField(read_only=True, help_text="The tool's own words, for engineers.")
    thumbnail_url = serializers.SerializerMethodField()

    class Meta:
        model = Scene
        fields = [
            "id", "project", "source_url", "status", "stage", "progress", "title", "duration", "width",
            "height", "size_bytes", "video_codec", "audio_codec", "content_type", "storage_key", "media_url",
            "thumbnail_key", "thumbnail_url", "error_code", "error_message", "error_detail", "attempts",
            "task_id",
            "created_at", "started_at", "completed_at", "cancel_requested_at", "updated_at",
        ]
        read_only_fields = fields

    _built_fields: ClassVar[dict[str, serializers.Field[Any, Any, Any, Any]] | None] = None

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        # ModelSerializer builds every field from the model again for each instance: 0.5 ms of CPU per scene
        # shown, most of a store request's answer. Built once per process here; each instance binds shallow
        # copies of its own (every field is read-only: binding is the only state a field takes on).
        built = vars(type(self)).get("_built_fields")  # a subclass builds its own
        if built is None:
            built = type(self)._built_fields = super().get_fields()
        return {name: copy.copy(field) for name, field in built.items()}

    def get_media_url(self, scene: Scene) -> str | None:
        return media_url(scene, request=self.context.get("request"))

    def get_thumbnail_url(self, scene: Scene) -> str | None:
        return thumbnail_url(scene, request=self.context.get("request"))


def scene_data(scene: Scene) -> dict[str, Any]:
    """The scene as the API shows it, as plain JSON values (for a webhook payload or a live event)."""
    return dict(SceneSerializer(scene).data)
