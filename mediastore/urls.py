from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect
from django.templatetags.static import static
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from mediastore import metrics
from mediastore.health import healthz, readyz
from scenes import check_sample
from scenes import views as pages
from scenes.api import MediaStoreView, MeView, ProjectViewSet, SceneViewSet
from scenes.live_api import scene_events
from scenes.token_api import ApiTokenViewSet
from scenes.views import SceneFileView
from scenes.webhook_api import WebhookDeliveryViewSet, WebhookEndpointViewSet


class OptionalSlashRouter(DefaultRouter):
    """``/api/v1/scenes/`` and ``/api/v1/scenes/<id>`` as the contract writes them, with or without a slash."""

    def __init__(self) -> None:
        super().__init__()
        self.trailing_slash = "/?"


router = OptionalSlashRouter()
router.register("scenes", SceneViewSet, basename="scene")
router.register("projects", ProjectViewSet, basename="project")
router.register("webhooks", WebhookEndpointViewSet, basename="webhook")
router.register("webhook-deliveries", WebhookDeliveryViewSet, basename="webhook-delivery")
router.register("tokens", ApiTokenViewSet, basename="token")

def favicon(request: HttpRequest) -> HttpResponse:
    # Browsers ask for /favicon.ico whatever the page links to.
    return HttpResponsePermanentRedirect(static("scenes/favicon.svg"))


urlpatterns = [
    path("favicon.ico", favicon),
    path("", pages.scene_page, name="scene-page"),
    path("scenes/", pages.scene_submit, name="page-submit"),
    path("scenes/<str:scene_id>/row", pages.scene_row, name="page-row"),
    path("scenes/<str:scene_id>/retry", pages.scene_retry, name="page-retry"),
    path("scenes/<str:scene_id>/cancel", pages.scene_cancel, name="page-cancel"),
    path("tokens/", pages.token_page, name="token-page"),
    path("tokens/<str:token_id>/revoke", pages.token_revoke, name="token-revoke"),
    path("scenes/<str:scene_id>/delete", pages.scene_delete, name="page-delete"),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/v1/media/store", metrics.store_view(MediaStoreView.as_view()), name="media-store"),
    path("api/v1/me", MeView.as_view(), name="me"),
    # Before the router, whose scenes/<id> would take "events" for an id.
    re_path(r"^api/v1/scenes/events/?$", scene_events, name="scene-events"),
    path("api/v1/", include(router.urls)),
    path("files/scenes/<str:scene_id>/<str:kind>", SceneFileView.as_view(), name="scene-file"),
    path(check_sample.SAMPLE_ROUTE, pages.check_sample_file, name=check_sample.URL_NAME),
]

handler404 = "mediastore.health.not_found"
handler500 = "mediastore.health.server_error"
