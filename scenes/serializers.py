"""How the API shows a scene: in its answers, in webhook payloads and in the live stream alike; and the fields
of a serializer built once per process."""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar

from rest_framework import serializers
from rest_framework.utils.serializer_helpers import BindingDict

from downloads.exceptions import ERROR_CODE_CHOICES
from scenes.links import media_url, thumbnail_url
from scenes.models import Scene


class FieldsBuiltOnce(serializers.Serializer[Any]):
    """A serializer whose fields are built and bound once per process, not for each instance.

    DRF builds the fields for every instance: it deep-copies the declared ones, and a ModelSerializer builds
    the others from the model (0.5 ms of CPU for a scene). Even shallow copies, bound one by one, took 0.1 ms:
    two thirds of showing a scene, and most of reading a store request's body. Here each instance gets
    shallow copies of fields bound once, with the instance as their ``parent``, so ``context`` (the request,
    for links) is its own. A field's own state is fixed once bound: what changes per instance lives on the
    serializer. That does not hold for a nested serializer, nor for a field with a child of its own (a list,
    a many relation), whose child would stay bound to the shared field: both are refused."""

    _bound_fields: ClassVar[dict[str, serializers.Field[Any, Any, Any, Any]] | None] = None

    @cached_property
    def fields(self) -> BindingDict:
        template = vars(type(self)).get("_bound_fields")  # a subclass binds its own
        if template is None:
            template = type(self)._bound_fields = self._bind_once()
        fields = BindingDict(self)
        for name, bound in template.items():
            field = object.__new__(type(bound))
            state = bound.__dict__.copy()  # what copy.copy does, at a third of its cost
            state["parent"] = self
            field.__dict__ = state
            fields.fields[name] = field
        return fields

    def _bind_once(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        bound = BindingDict(self)
        for name, field in self.get_fields().items():
            if isinstance(field, serializers.BaseSerializer) or hasattr(field, "child") \
                    or hasattr(field, "child_relation"):
                raise TypeError(f"{type(self).__name__}.{name}: a nested serializer, or a field with a child, "
                                "keeps state per instance")
            bound[name] = field
        # The class must not keep the first instance (its request, its scene) alive.
        for field in bound.fields.values():
            field.parent = None  # type: ignore[assignment]
        return dict(bound.fields)


class SceneSerializer(FieldsBuiltOnce, serializers.ModelSerializer[Scene]):
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

    def get_media_url(self, scene: Scene) -> str | None:
        return media_url(scene, request=self.context.get("request"))

    def get_thumbnail_url(self, scene: Scene) -> str | None:
        return thumbnail_url(scene, request=self.context.get("request"))


def scene_data(scene: Scene) -> dict[str, Any]:
    """The scene as the API shows it, as plain JSON values (for a webhook payload or a live event)."""
    return dict(SceneSerializer(scene).data)
