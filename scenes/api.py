"""The REST API, v1. Views parse and check input, then call services; no business logic here."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import exceptions, mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import UserRateThrottle
from rest_framework.views import APIView, exception_handler

from scenes import selectors, services
from scenes.lifecycle import SceneStateConflict
from scenes.models import Project, Scene
from scenes.serializers import FieldsBuiltOnce, SceneSerializer
from scenes.validators import UrlRejected, validate_media_url


class ApiError(exceptions.APIException):
    def __init__(self, *, status_code: int, code: str, message: str, fields: dict[str, Any] | None = None) -> None:
        super().__init__(detail=message, code=code)
        self.status_code = status_code
        self.fields = fields or {}


_CODES = {
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.Throttled: "throttled",
    exceptions.ParseError: "malformed_request",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
}


def error_envelope_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every 4xx as ``{"error": {"code", "message", "fields"}}``; DRF's headers (Retry-After …) are kept."""
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    response = exception_handler(exc, context)
    if response is None:
        return None
    fields: dict[str, Any] = {}
    if isinstance(exc, ApiError):
        code, message, fields = str(exc.get_codes()), str(exc.detail), exc.fields
    elif isinstance(exc, exceptions.ValidationError):
        code, message = "invalid", "Some fields are not valid."
        fields = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
    else:
        code = next((c for t, c in _CODES.items() if isinstance(exc, t)), "error")
        message = str(getattr(exc, "detail", exc))
    response.data = {"error": {"code": code, "message": message, "fields": fields}}
    return response


class ErrorSerializer(serializers.Serializer[Any]):
    # inline: a declared field named "fields" would collide with Serializer.fields
    error = inline_serializer(name="ErrorBody", fields={
        "code": serializers.CharField(), "message": serializers.CharField(), "fields": serializers.DictField(),
    })


_ERROR_MEANINGS = {
    400: "The request is malformed or a field is not valid (`fields` says which).",
    401: "No or bad credentials.",
    403: "The credentials may not do this.",
    404: "No such object (or not yours).",
    409: "The object is not in a state that allows this.",
    422: "The URL may not be fetched (`url_not_allowed`, `invalid_url`) or the key was reused.",
    429: "Too many requests or too many active scenes; `Retry-After` says when to try again.",
}


def _errors(*codes: int) -> dict[int, OpenApiResponse]:
    return {code: OpenApiResponse(ErrorSerializer, description=_ERROR_MEANINGS[code])
            for code in (400, 401, 403, 404, *codes)}


LOCATION = OpenApiParameter("Location", str, OpenApiParameter.HEADER, response=[202],
                            description="The scene's URL in this API.")
RETRY_AFTER = OpenApiParameter("Retry-After", int, OpenApiParameter.HEADER, response=[429],
                               description="Seconds to wait before trying again.")


class StoreThrottle(UserRateThrottle):
    scope = "media_store"

    def get_rate(self) -> str:
        return str(settings.MEDIA_STORE_RATE)  # read per request, so an operator's setting applies


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


class StoreSerializer(FieldsBuiltOnce, serializers.Serializer[Any]):
    url = serializers.CharField(max_length=10_000, trim_whitespace=True)
    project = serializers.CharField(required=False, allow_null=True, max_length=24)
    scene = serializers.CharField(required=False, allow_null=True, max_length=24)
    title = serializers.CharField(required=False, allow_blank=True, max_length=500, default="")


class ProjectSerializer(serializers.ModelSerializer[Project]):
    class Meta:
        model = Project
        fields = ["id", "name", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]


def _owned(queryset: QuerySet[Any], user: User, pk: str | None) -> Any:
    """The caller's own object (staff with the change permission: anyone's); someone else's id is a 404,
    never a 403."""
    if pk is None:
        return None
    if _reach(user, "update", queryset.model._meta.model_name) is not None:
        queryset = queryset.filter(owner=user)
    try:
        return queryset.get(pk=pk)
    except queryset.model.DoesNotExist as exc:
        raise exceptions.NotFound() from exc


class MediaStoreView(APIView):
    throttle_classes = [StoreThrottle]

    @extend_schema(
        request=StoreSerializer,
        responses={202: OpenApiResponse(SceneSerializer, description="Accepted: the scene, queued; follow it at "
                                                                     "`Location` (or with webhooks)."),
                   **_errors(409, 422, 429)},
        parameters=[
            OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, required=False,
                             description="Any unique string (≤ 255 characters): the same request sent again with "
                                         "it within 24 h gets the first answer instead of a second scene."),
            LOCATION, RETRY_AFTER,
        ],
        summary="Store a media URL: answers 202 at once and ingests it in the background",
        examples=[OpenApiExample("A Reddit post", request_only=True,
                                 value={"url": "https://www.reddit.com/r/aww/comments/abc123/a_cat/"})],
    )
    def post(self, request: Request) -> Response:
        payload = StoreSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        user = request.user
        assert isinstance(user, User)
        key = request.headers.get("Idempotency-Key", "").strip()
        if not key:
            return self._store(request, data, user)
        if len(key) > 255:
            raise ApiError(status_code=400, code="invalid", message="Idempotency-Key is longer than 255 characters.")
        request_hash = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
        record = self._replay(user, key, request_hash)
        if record is None:
            try:
                record = services.idempotent_claim(owner=user, key=key, request_hash=request_hash)
            except services.IdempotencyKeyTaken:
                record = self._replay(user, key, request_hash)  # the request that got there first
            else:
                try:
                    response = self._store(request, data, user)
                except BaseException:
                    services.idempotent_forget(record=record)
                    raise
                record = services.idempotent_remember(record=record, status_code=response.status_code,
                                                      response=dict(response.data))
        if record is None or record.status_code == 0:  # the first request is still at work (or just failed)
            raise ApiError(status_code=409, code="idempotency_key_in_use",
                           message="A request with this Idempotency-Key is still being processed; try again.")
        return Response(record.response, status=record.status_code,
                        headers={"Location": f"/api/v1/scenes/{record.response['id']}"})

    @staticmethod
    def _replay(user: User, key: str, request_hash: str) -> Any:
        try:
            return services.idempotent_replay(owner=user, key=key, request_hash=request_hash)
        except services.IdempotencyKeyReused as reused:
            raise ApiError(status_code=422, code="idempotency_key_reused",
                           message="This Idempotency-Key was used for a different request.") from reused

    def _store(self, request: Request, data: dict[str, Any], user: User) -> Response:
        try:
            url = validate_media_url(data["url"])
        except UrlRejected as rejected:
            raise ApiError(status_code=rejected.status, code=rejected.code, message=rejected.message,
                           fields={"url": [rejected.message]}) from rejected
        project = _owned(Project.objects.all(), user, data.get("project"))
        scene = _owned(Scene.objects.all(), user, data.get("scene"))
        try:
            scene = services.scene_store(owner=user, source_url=url, project=project, scene=scene,
                                         title=data.get("title", ""))
        except services.TooManyActive as busy:
            raise ApiError(status_code=429, code="too_many_active", message=busy.message) from busy
        except SceneStateConflict as conflict:
            message = "The scene is being processed right now; try again when it has finished."
            raise ApiError(status_code=409, code="conflict", message=message) from conflict
        body = SceneSerializer(scene, context={"request": request}).data
        return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": f"/api/v1/scenes/{scene.pk}"})


# Which permission (as in the admin) lets staff act on other users' scenes and projects, per API action.
_STAFF_VERBS = {"partial_update": "change", "update": "change", "destroy": "delete", "retry": "requeue",
                "cancel": "change", "rotate_secret": "change", "resend": "change"}


def _reach(user: User, action: str | None, model: str) -> User | None:
    return selectors.reach(user=user, permission=f"scenes.{_STAFF_VERBS.get(action or '', 'view')}_{model}")


@extend_schema_view(
    list=extend_schema(parameters=[OpenApiParameter("status", str, enum=list(Scene.Status.values)),
                                   OpenApiParameter("project", str)], responses={200: SceneSerializer(many=True),
                                                                                 **_errors()}),
    retrieve=extend_schema(responses={200: SceneSerializer, **_errors()}),
    destroy=extend_schema(responses={204: None, **_errors()}),
    retry=extend_schema(request=None, responses={202: SceneSerializer, **_errors(409, 422, 429)},
                        parameters=[RETRY_AFTER]),
    cancel=extend_schema(request=None, responses={202: SceneSerializer, **_errors(409)},
                         summary="Cancel a scene: a queued one at once, a processing one within seconds"),
)
class SceneViewSet(mixins.RetrieveModelMixin, mixins.ListModelMixin, mixins.DestroyModelMixin,
                   viewsets.GenericViewSet[Scene]):
    serializer_class = SceneSerializer
    pagination_class = Pagination

    def get_queryset(self) -> QuerySet[Scene]:
        if getattr(self, "swagger_fake_view", False):  # schema generation: no user
            return Scene.objects.none()
        user = self.request.user
        assert isinstance(user, User)
        status_filter = self.request.query_params.get("status") or None
        if status_filter is not None and status_filter not in Scene.Status.values:
            raise ApiError(status_code=400, code="invalid", message="Unknown status.",
                           fields={"status": [f"Choose one of {', '.join(Scene.Status.values)}."]})
        return selectors.scene_list(owner=_reach(user, self.action, "scene"), status=status_filter,
                                    project_id=self.request.query_params.get("project") or None)

    def perform_destroy(self, instance: Scene) -> None:
        services.scene_delete(scene=instance)

    @action(detail=True, methods=["post"], throttle_classes=[StoreThrottle])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        scene = self.get_object()
        try:
            scene = services.scene_retry(scene=scene)
        except UrlRejected as rejected:
            raise ApiError(status_code=rejected.status, code=rejected.code, message=rejected.message) from rejected
        except services.TooManyActive as busy:
            raise ApiError(status_code=429, code="too_many_active", message=busy.message) from busy
        except SceneStateConflict as conflict:
            message = f"Only failed or cancelled scenes can be retried; this one is {scene.status}."
            raise ApiError(status_code=409, code="conflict", message=message) from conflict
        return Response(self.get_serializer(scene).data, status=status.HTTP_202_ACCEPTED)

    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """202: the scene is ``cancelled`` (it was queued), or still ``processing`` with
        ``cancel_requested_at`` set until its worker has stopped it (a couple of seconds)."""
        scene = self.get_object()
        try:
            scene = services.scene_cancel(scene=scene)
        except SceneStateConflict as conflict:
            raise ApiError(status_code=409, code="conflict",
                           message=f"Only queued or processing scenes can be cancelled; this one is "
                                   f"{scene.status}.") from conflict
        return Response(self.get_serializer(scene).data, status=status.HTTP_202_ACCEPTED)


@extend_schema_view(
    list=extend_schema(responses={200: ProjectSerializer(many=True), **_errors()}),
    create=extend_schema(responses={201: ProjectSerializer, **_errors()}),
    retrieve=extend_schema(responses={200: ProjectSerializer, **_errors()}),
    partial_update=extend_schema(responses={200: ProjectSerializer, **_errors()}),
    destroy=extend_schema(responses={204: None, **_errors()}),
)
class ProjectViewSet(viewsets.ModelViewSet[Project]):
    serializer_class = ProjectSerializer
    pagination_class = Pagination
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self) -> QuerySet[Project]:
        if getattr(self, "swagger_fake_view", False):
            return Project.objects.none()
        user = self.request.user
        assert isinstance(user, User)
        return selectors.project_list(owner=_reach(user, self.action, "project"))

    def perform_create(self, serializer: serializers.BaseSerializer[Project]) -> None:
        user = self.request.user
        assert isinstance(user, User)
        serializer.instance = services.project_create(owner=user, name=serializer.validated_data["name"])

    def perform_update(self, serializer: serializers.BaseSerializer[Project]) -> None:
        assert serializer.instance is not None
        # A partial update may leave the name out (schemathesis found the 500 this was).
        name = serializer.validated_data.get("name", serializer.instance.name)
        serializer.instance = services.project_rename(project=serializer.instance, name=name)

    def perform_destroy(self, instance: Project) -> None:
        services.project_delete(project=instance)


class MeSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField(source="pk")
    username = serializers.CharField()
    is_staff = serializers.BooleanField()


class MeView(APIView):
    """Who the credentials belong to: lets a client check its token."""

    @extend_schema(responses={200: MeSerializer, **_errors()})
    def get(self, request: Request) -> Response:
        return Response(MeSerializer(request.user).data)
