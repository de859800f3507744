"""Django admin for staff: see what happened to every scene and fix it with the API's own services."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django_celery_results.models import TaskResult

from scenes import services, webhooks
from scenes.lifecycle import SceneStateConflict
from scenes.links import media_url, thumbnail_url
from scenes.models import Project, Scene, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from scenes.templatetags.scene_format import clock
from scenes.validators import UrlRejected

_BADGE_COLOURS: dict[str, str] = {
    Scene.Status.QUEUED: "#6c757d", Scene.Status.PROCESSING: "#0d6efd",
    Scene.Status.COMPLETED: "#198754", Scene.Status.FAILED: "#dc3545", Scene.Status.CANCELLED: "#6f42c1",
}


def naturaltime_delta(delta: Any) -> str:
    seconds = max(0.0, delta.total_seconds())
    return f"{seconds:.1f} s" if seconds < 60 else clock(seconds)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@admin.register(Scene)
class SceneAdmin(admin.ModelAdmin[Scene]):
    # Thumbnail, title, status, owner, added: it fits beside the admin's sidebar and filters at 1280 px with
    # Status in view (the source is the title's tooltip; stage, progress and the error code are in the status
    # cell; project, attempts and timings are on the change page).
    list_display = ["preview", "title_or_url", "badge", "owner", "added"]
    list_display_links = ["title_or_url"]
    list_filter = ["status", "error_code", "stage", "created_at"]
    search_fields = ["source_url", "title", "id"]
    ordering = ["-created_at"]
    list_select_related = ["owner", "project"]
    actions = ["requeue_failed", "cancel", "delete_with_media"]
    fieldsets = [
        (None, {"fields": ["title", "source", "project", "owner", "badge"]}),
        ("Media", {"fields": ["media_link", "thumbnail_link", "human_duration", "human_size", "dimensions",
                              "codecs", "content_type"]}),
        ("Failure", {"fields": ["error_code", "error_message", "error_detail"]}),
        ("Processing", {"fields": ["attempts", "task_link", "timings", "cancel_requested_at", "id"]}),
        ("Storage keys", {"classes": ["collapse"], "fields": ["storage_key", "thumbnail_key"]}),
    ]
    readonly_fields = ["source", "owner", "badge", "media_link", "thumbnail_link", "human_duration", "human_size",
                       "dimensions", "codecs", "content_type", "error_code", "error_message", "error_detail",
                       "attempts", "task_link", "timings", "cancel_requested_at", "id", "storage_key",
                       "thumbnail_key"]

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
        # An untitled scene shows its URL once, here; the full URL is the tooltip.
        return format_html('<span title="{}">{}</span>', scene.source_url, _short(scene.title or scene.source_url, 36))

    @admin.display(description="Added", ordering="created_at")
    def added(self, scene: Scene) -> str:
        return format_html('<span title="{}" style="white-space:nowrap">{}</span>',
                           f"{scene.created_at:%Y-%m-%d %H:%M:%S %Z}", f"{scene.created_at:%b %d %H:%M}")

    @admin.display(description="Source")
    def source(self, scene: Scene) -> str:
        return format_html('<a href="{}" rel="noreferrer noopener" target="_blank">{}</a>', scene.source_url,
                           scene.source_url)

    @admin.display(description="Status", ordering="status")
    def badge(self, scene: Scene) -> str:
        badge = format_html('<span style="background:{};color:#fff;padding:2px 8px;border-radius:9px;'
                            'white-space:nowrap">{}</span>',
                            _BADGE_COLOURS.get(scene.status, "#6c757d"), scene.get_status_display())
        if scene.status == Scene.Status.PROCESSING:
            progress = scene.progress or 0
            return format_html('{} <progress max="100" value="{}" title="{}%" style="width:5em"></progress> {}',
                               badge, progress, progress, scene.get_stage_display())
        if scene.status == Scene.Status.FAILED and scene.error_code:
            return format_html('{} <code>{}</code>', badge, scene.error_code)
        return badge

    @admin.display(description="Duration")
    def human_duration(self, scene: Scene) -> str:
        return clock(scene.duration) or "—"

    @admin.display(description="Size")
    def human_size(self, scene: Scene) -> str:
        return filesizeformat(scene.size_bytes) if scene.size_bytes is not None else "—"

    @admin.display(description="Dimensions")
    def dimensions(self, scene: Scene) -> str:
        return f"{scene.width}x{scene.height}" if scene.width and scene.height else "—"

    @admin.display(description="Codecs")
    def codecs(self, scene: Scene) -> str:
        return " / ".join(codec for codec in (scene.video_codec, scene.audio_codec) if codec) or "—"

    @admin.display(description="Timings")
    def timings(self, scene: Scene) -> str:
        parts = [f"added {scene.created_at:%Y-%m-%d %H:%M:%S}"]
        if scene.started_at:
            parts.append(f"started {naturaltime_delta(scene.started_at - scene.created_at)} later")
        if scene.completed_at and scene.started_at:
            parts.append(f"took {naturaltime_delta(scene.completed_at - scene.started_at)}")
        parts.append(f"last change {scene.updated_at:%Y-%m-%d %H:%M:%S}")
        return "; ".join(parts)

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
        self._each(request, queryset, lambda scene: services.scene_requeue_failed(scene=scene),
                   done="Queued {} scene(s).", rule="only failed scenes can be re-queued")

    @admin.action(description="Cancel selected queued or processing scenes", permissions=["change"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[Scene]) -> None:
        self._each(request, queryset, lambda scene: services.scene_cancel(scene=scene),
                   done="Cancelled {} scene(s) (processing ones stop within seconds).",
                   rule="only queued or processing scenes can be cancelled")

    def _each(self, request: HttpRequest, queryset: QuerySet[Scene], action: Any, *, done: str, rule: str) -> None:
        """Apply a lifecycle service to each scene; say how many it changed and which it skipped, and why."""
        changed, skipped = 0, []
        for scene in queryset:
            try:
                action(scene)
                changed += 1
            except SceneStateConflict:
                skipped.append(f"{_short(scene.title or scene.source_url, 30)} ({scene.status})")
        message = done.format(changed)
        if skipped:
            message += f" Skipped {len(skipped)}, {rule}: {', '.join(skipped)}."
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
