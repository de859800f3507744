from __future__ import annotations

from django.contrib import admin

from scenes.models import Project, Scene


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin[Project]):
    list_display = ["name", "owner", "created_at"]
    search_fields = ["name", "id"]


@admin.register(Scene)
class SceneAdmin(admin.ModelAdmin[Scene]):
    list_display = ["id", "title", "status", "stage", "progress", "error_code", "attempts", "owner", "created_at"]
    list_filter = ["status", "error_code", "stage"]
    search_fields = ["source_url", "title", "id"]
    readonly_fields = [f.name for f in Scene._meta.fields if f.name not in {"title", "project"}]
