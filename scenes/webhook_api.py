"""The REST API for webhooks: a user's endpoints, and the delivery log with "send again"."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from scenes import webhooks
from scenes.api import ApiError, Pagination, _errors, _owned, _reach
from scenes.models import Project, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from scenes.validators import UrlRejected


class WebhookEndpointSerializer(serializers.ModelSerializer[WebhookEndpoint]):
    project = serializers.CharField(source="project_id", required=False, allow_null=True, max_length=24)
    events = serializers.ListField(child=serializers.ChoiceField(choices=webhooks.EVENTS), required=False,
                                   help_text="Empty: every event.")
    url = serializers.CharField(max_length=2048)

    class Meta:
        model = WebhookEndpoint
        fields = ["id", "url", "description", "project", "events", "enabled", "secret", "failing_since",
                  "created_at", "updated_at"]
        read_only_fields = ["id", "secret", "failing_since", "created_at", "updated_at"]


class WebhookAttemptSerializer(serializers.ModelSerializer[WebhookAttempt]):
    class Meta:
        model = WebhookAttempt
        fields = ["number", "started_at", "status_code", "latency_ms", "error", "response_excerpt"]
        read_only_fields = fields


class WebhookDeliverySerializer(serializers.ModelSerializer[WebhookDelivery]):
    endpoint = serializers.CharField(source="endpoint_id", read_only=True)
    log = WebhookAttemptSerializer(many=True, read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = ["id", "endpoint", "event", "scene_id", "status", "attempts", "next_attempt_at",
                  "last_status_code", "created_at", "delivered_at", "payload", "log"]
        read_only_fields = fields


def _user(request: Request) -> User:
    user = request.user
    assert isinstance(user, User)
    return user


def _rejected(rejected: UrlRejected) -> ApiError:
    return ApiError(status_code=rejected.status, code=rejected.code, message=rejected.message,
                    fields={"url": [rejected.message]})


@extend_schema_view(
    list=extend_schema(responses={200: WebhookEndpointSerializer(many=True), **_errors()}),
    create=extend_schema(responses={201: WebhookEndpointSerializer, **_errors(422)},
                         summary="Register a webhook endpoint; the answer carries its signing secret"),
    retrieve=extend_schema(responses={200: WebhookEndpointSerializer, **_errors()}),
    partial_update=extend_schema(responses={200: WebhookEndpointSerializer, **_errors(422)}),
    destroy=extend_schema(responses={204: None, **_errors()}),
    rotate_secret=extend_schema(request=None, responses={200: WebhookEndpointSerializer, **_errors()},
                                summary="A new secret; the old one also signs for WEBHOOK_ROTATION_OVERLAP"),
)
class WebhookEndpointViewSet(viewsets.ModelViewSet[WebhookEndpoint]):
    serializer_class = WebhookEndpointSerializer
    pagination_class = Pagination
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self) -> QuerySet[WebhookEndpoint]:
        if getattr(self, "swagger_fake_view", False):
            return WebhookEndpoint.objects.none()
        return webhooks.endpoint_list(owner=_reach(_user(self.request), self.action, "webhookendpoint"))

    def _project(self, data: dict[str, Any]) -> Project | None:
        project: Project | None = _owned(Project.objects.all(), _user(self.request), data.get("project_id"))
        return project

    def perform_create(self, serializer: serializers.BaseSerializer[WebhookEndpoint]) -> None:
        data = serializer.validated_data
        try:
            serializer.instance = webhooks.webhook_endpoint_create(
                owner=_user(self.request), url=data["url"], events=data.get("events"), project=self._project(data),
                description=data.get("description", ""))
        except UrlRejected as rejected:
            raise _rejected(rejected) from rejected

    def perform_update(self, serializer: serializers.BaseSerializer[WebhookEndpoint]) -> None:
        assert serializer.instance is not None
        data = serializer.validated_data
        try:
            serializer.instance = webhooks.webhook_endpoint_update(
                endpoint=serializer.instance, url=data.get("url"), events=data.get("events"),
                description=data.get("description"), enabled=data.get("enabled"))
        except UrlRejected as rejected:
            raise _rejected(rejected) from rejected

    def perform_destroy(self, instance: WebhookEndpoint) -> None:
        webhooks.webhook_endpoint_delete(endpoint=instance)

    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request: Request, pk: str | None = None) -> Response:
        endpoint = webhooks.webhook_secret_rotate(endpoint=self.get_object())
        return Response(self.get_serializer(endpoint).data)


@extend_schema_view(
    list=extend_schema(parameters=[OpenApiParameter("endpoint", str), OpenApiParameter("scene", str)],
                       responses={200: WebhookDeliverySerializer(many=True), **_errors()}),
    retrieve=extend_schema(responses={200: WebhookDeliverySerializer, **_errors()}),
    resend=extend_schema(request=None, responses={202: WebhookDeliverySerializer, **_errors()},
                         summary="Send a delivery again now"),
)
class WebhookDeliveryViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin,
                             viewsets.GenericViewSet[WebhookDelivery]):
    """The delivery log: every event sent to the caller's endpoints, each with its attempts."""

    serializer_class = WebhookDeliverySerializer
    pagination_class = Pagination

    def get_queryset(self) -> QuerySet[WebhookDelivery]:
        if getattr(self, "swagger_fake_view", False):
            return WebhookDelivery.objects.none()
        owner = _reach(_user(self.request), self.action, "webhookdelivery")
        params = self.request.query_params
        return webhooks.delivery_list(owner=owner, endpoint_id=params.get("endpoint") or None,
                                      scene_id=params.get("scene") or None).prefetch_related("log")

    @action(detail=True, methods=["post"])
    def resend(self, request: Request, pk: str | None = None) -> Response:
        delivery = webhooks.webhook_delivery_resend(delivery=self.get_object())
        return Response(self.get_serializer(delivery).data, status=status.HTTP_202_ACCEPTED)
