"""The REST API for API tokens: a person's own (staff with the permission: anyone's)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from scenes import tokens
from scenes.api import Pagination, _errors, _reach
from scenes.models import ApiToken


class ApiTokenSerializer(serializers.ModelSerializer[ApiToken]):
    owner = serializers.CharField(source="owner.get_username", read_only=True)

    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "owner", "created_at", "last_used_at", "revoked_at"]
        read_only_fields = ["id", "prefix", "owner", "created_at", "last_used_at", "revoked_at"]


class NewApiTokenSerializer(ApiTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="The token itself: shown this once, never again.")

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "token"]
        read_only_fields = [*ApiTokenSerializer.Meta.read_only_fields, "token"]


@extend_schema_view(
    list=extend_schema(responses={200: ApiTokenSerializer(many=True), **_errors()}),
    create=extend_schema(request=ApiTokenSerializer, responses={201: NewApiTokenSerializer, **_errors()},
                         summary="Make a token; the answer is the only time it is shown"),
    retrieve=extend_schema(responses={200: ApiTokenSerializer, **_errors()}),
    destroy=extend_schema(responses={204: None, **_errors()}, summary="Revoke a token"),
)
class ApiTokenViewSet(mixins.ListModelMixin, mixins.CreateModelMixin, mixins.RetrieveModelMixin,
                      mixins.DestroyModelMixin, viewsets.GenericViewSet[ApiToken]):
    serializer_class = ApiTokenSerializer
    pagination_class = Pagination

    def get_queryset(self) -> QuerySet[ApiToken]:
        if getattr(self, "swagger_fake_view", False):
            return ApiToken.objects.none()
        user = self.request.user
        assert isinstance(user, User)
        return tokens.api_token_list(owner=_reach(user, self.action, "apitoken"))

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        incoming = ApiTokenSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        user = request.user
        assert isinstance(user, User)
        row, token = tokens.api_token_create(owner=user, name=incoming.validated_data["name"])
        body = {**ApiTokenSerializer(row).data, "token": token}
        return Response(body, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: ApiToken) -> None:
        tokens.api_token_revoke(token=instance)
