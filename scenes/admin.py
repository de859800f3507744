"""Django admin for staff: see what happened to every scene and fix it with the API's own services."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django_celery_results.models import TaskResult

from scenes import services, webhooks
from scenes.lifecycle import SceneStateConflict
from scenes.links import media_url, thumbnail_url
from scenes.models import Project, Scene, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from scenes.validators import UrlRejected

_BADGE_COLOURS: dict[str, str] = {
    Scene.Status.QUEUED: "#6c757d", Scene.Status.PROCESSING: "#0d6efd",
    Scene.Status.COMPLETED: "#198754", Scene.Status.FAILED: "#dc3545", Scene.Status.CANCELLED: "#6f42c1",
}


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@admin.register(Scene)
class SceneAdmin(admin.ModelAdmin[Scene]):
    list_display = ["preview", "title_or_url", "source", "badge", "stage", "progress_bar", "error_code", "attempts",
                    "owner", "project", "created_at", "updated_at"]
    list_filter = ["status", "error_code", "stage", "created_at"]
    search_fields = ["source_url", "title", "id"]
    ordering = ["-created_at"]
    list_select_related = ["owner", "project"]
    actions = ["requeue_failed", "cancel", "delete_with_media"]
    readonly_fields = ["media_link", "thumbnail_link", "task_link", "error_message",
                       *[f.name for f in Scene._meta.fields if f.name not in {"title", "project", "error_message"}]]

    # Bulk delete must go through scene_delete, which also deletes the stored objects.
    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # scenes come from the API, which validates and enqueues them

    def delete_model(self, request: HttpRequest, obj: Scene) -> None:
        services.scene_delete(scene=obj)

    @admin.display(description="")
    def preview(self, scene: Scene) -> str:
        url = thumbnail_url(scene)
        return format_html('<img src="{}" alt="" style="height:36px;border-radius:3px">', url) if url else ""

    @admin.display(description="Title", ordering="title")
    def title_or_url(self, scene: Scene) -> str:
        return _short(scene.title or scene.source_url, 50)

    @admin.display(description="Source")
    def source(self, scene: Scene) -> str:
        return format_html('<a href="{}" rel="noreferrer noopener" target="_blank">{}</a>', scene.source_url,
                           _short(scene.source_url, 40))

    @admin.display(description="Status", ordering="status")
    def badge(self, scene: Scene) -> str:
        return format_html('<span style="background:{};color:#fff;padding:2px 8px;border-radius:9px">{}</span>',
                           _BADGE_COLOURS.get(scene.status, "#6c757d"), scene.get_status_display())

    @admin.display(description="Progress")
    def progress_bar(self, scene: Scene) -> str:
        if scene.status != Scene.Status.PROCESSING or scene.progress is None:
            return ""
        return format_html('<progress max="100" value="{}" title="{}%"></progress> {}%', scene.progress,
                           scene.progress, scene.progress)

    @admin.display(description="Media")
    def media_link(self, scene: Scene) -> str:
        url = media_url(scene)
        return format_html('<a href="{}">{}</a>', url, scene.storage_key) if url else "—"

    @admin.display(description="Thumbnail")
    def thumbnail_link(self, scene: Scene) -> str:
        url = thumbnail_url(scene)
        return format_html('<a href="{}"><img src="{}" style="max-height:120px"></a>', url, url) if url else "—"

    @admin.display(description="Celery task")
    def task_link(self, scene: Scene) -> str:
        if not scene.task_id:
            return "—"
        result = TaskResult.objects.filter(task_id=scene.task_id).first()
        if result is None:
            return scene.task_id
        try:
            url = reverse("admin:django_celery_results_taskresult_change", args=[result.pk])
        except NoReverseMatch:
            return scene.task_id
        return format_html('<a href="{}">{}</a> ({})', url, scene.task_id, result.status)

    @admin.action(description="Re-queue selected failed scenes", permissions=["requeue"])
    def requeue_failed(self, request: HttpRequest, queryset: QuerySet[Scene]) -> None:
        queued, skipped = 0, []
        for scene in queryset:
            try:
                services.scene_requeue_failed(scene=scene)
                queued += 1
            except SceneStateConflict:
                skipped.append(f"{_short(scene.title or scene.source_url, 30)} ({scene.status})")
        message = f"Queued {queued} scene(s)."
        if skipped:
            message += f" Skipped {len(skipped)}, only failed scenes can be re-queued: {', '.join(skipped)}."
        self.message_user(request, message, messages.SUCCESS if not skipped else messages.WARNING)

    @admin.action(description="Cancel selected queued or processing scenes", permissions=["change"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[Scene]) -> None:
        done, skipped = 0, []
        for scene in queryset:
            try:
                services.scene_cancel(scene=scene)
                done += 1
            except SceneStateConflict:
                skipped.append(f"{_short(scene.title or scene.source_url, 30)} ({scene.status})")
        message = f"Cancelled {done} scene(s) (processing ones stop within seconds)."
        if skipped:
            message += f" Skipped {len(skipped)}, only queued or processing scenes can be cancelled: " \
                       f"{', '.join(skipped)}."
        self.message_user(request, message, messages.SUCCESS if not skipped else messages.WARNING)

    def has_requeue_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("scenes.requeue_scene"))

    @admin.action(description="Delete selected scenes and their media", permissions=["delete"])
    def delete_with_media(self, request: HttpRequest, queryset: QuerySet[Scene]) -> None:
        count = 0
        for scene in queryset:
            services.scene_delete(scene=scene)
            count += 1
        self.message_user(request, f"Deleted {count} scene(s); their stored media is being removed.")


class SceneInline(admin.TabularInline[Scene, Project]):
    model = Scene
    fields = ["title", "source_url", "status", "stage", "progress", "error_code", "created_at"]
    readonly_fields = ["title", "source_url", "status", "stage", "progress", "error_code", "created_at"]
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin[Project]):
    list_display = ["name", "owner", "created_at"]
    search_fields = ["name", "id"]
    inlines = [SceneInline]

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # project_delete also deletes the scenes' objects
        return actions

    def delete_model(self, request: HttpRequest, obj: Project) -> None:
        services.project_delete(project=obj)


class WebhookEndpointForm(forms.ModelForm[WebhookEndpoint]):
    """The address policy and the events, checked as the API checks them."""

    url = forms.CharField(max_length=2048, help_text="http(s) URL that receives signed POSTs.")

    class Meta:
        model = WebhookEndpoint
        exclude = ["previous_secret"]

    def clean_url(self) -> str:
        try:
            return webhooks.checked_url(self.cleaned_data["url"])
        except UrlRejected as rejected:
            raise forms.ValidationError(rejected.message) from rejected

    def clean_events(self) -> list[str]:
        try:
            return webhooks.checked_events(self.cleaned_data.get("events") or [])
        except webhooks.InvalidEvents as invalid:
            raise forms.ValidationError(invalid.message) from invalid


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin[WebhookEndpoint]):
    form = WebhookEndpointForm
    list_display = ["url", "owner", "project", "event_list", "enabled", "failing_since", "created_at"]
    list_filter = ["enabled", "failing_since"]
    search_fields = ["url", "description", "id"]
    list_select_related = ["owner", "project"]
    readonly_fields = ["secret", "previous_secret_expires_at", "failing_since", "created_at", "updated_at"]
    actions = ["rotate_secret"]

    @admin.display(description="Events")
    def event_list(self, endpoint: WebhookEndpoint) -> str:
        return ", ".join(endpoint.events) or "all"

    def save_model(self, request: HttpRequest, obj: WebhookEndpoint, form: Any, change: bool) -> None:
        # The address policy and the events are checked by the same services as the API's.
        if change:
            webhooks.webhook_endpoint_update(endpoint=obj, url=obj.url, events=obj.events,
                                             description=obj.description, enabled=obj.enabled)
        else:
            created = webhooks.webhook_endpoint_create(owner=obj.owner, url=obj.url, events=obj.events,
                                                       project=obj.project, description=obj.description)
            obj.pk, obj.secret = created.pk, created.secret

    @admin.action(description="Rotate the signing secret (the old one signs too for a while)", permissions=["change"])
    def rotate_secret(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        for endpoint in queryset:
            webhooks.webhook_secret_rotate(endpoint=endpoint)
        self.message_user(request, f"Rotated the secret of {queryset.count()} endpoint(s).")


class WebhookAttemptInline(admin.TabularInline[WebhookAttempt, WebhookDelivery]):
    model = WebhookAttempt
    fields = ["number", "started_at", "status_code", "latency_ms", "error", "response_excerpt"]
    readonly_fields = ["number", "started_at", "status_code", "latency_ms", "error", "response_excerpt"]
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin[WebhookDelivery]):
    """The delivery log: what was sent where, every attempt, and "send again"."""

    list_display = ["id", "event", "scene_id", "endpoint", "status", "attempts", "last_status_code", "created_at",
                    "delivered_at"]
    list_filter = ["status", "event", "created_at"]
    search_fields = ["id", "scene_id", "endpoint__url"]
    list_select_related = ["endpoint"]
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]
    inlines = [WebhookAttemptInline]
    actions = ["send_again"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Send the selected deliveries again", permissions=["change"])
    def send_again(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        count = 0
        for delivery in queryset:
            webhooks.webhook_delivery_resend(delivery=delivery)
            count += 1
        self.message_user(request, f"Sending {count} delivery(ies) again.")
