"""How the API shows a scene: each answer its own, without the model's fields built again for each one."""

from __future__ import annotations

from unittest import mock

import pytest
from django.test import RequestFactory
from rest_framework import serializers

from scenes.models import Scene
from scenes.serializers import SceneSerializer


def _scene(pk: str, title: str) -> Scene:
    return Scene(pk=pk, title=title, source_url="https://example.com/v.mp4", storage_key=f"scenes/{pk}/media.mp4")


def _request(host: str) -> object:
    return RequestFactory(HTTP_HOST=host).get("/")


def test_each_serializer_shows_its_own_scene_for_its_own_request(settings):
    # Given two answers in the making at once (the fields each binds must be its own)
    settings.R2_BUCKET = None
    settings.R2_PUBLIC_BASE_URL = None
    settings.ALLOWED_HOSTS = ["one.example", "two.example"]
    first = SceneSerializer(_scene("a" * 24, "First"), context={"request": _request("one.example")})
    second = SceneSerializer(_scene("b" * 24, "Second"), context={"request": _request("two.example")})
    first.fields  # noqa: B018  # bound before the other one binds

    # When the second is shown first
    shown_second, shown_first = second.data, first.data

    # Then each shows its scene, with links for its own request
    assert (shown_first["title"], shown_second["title"]) == ("First", "Second")
    assert shown_first["media_url"].startswith("http://one.example/")
    assert shown_second["media_url"].startswith("http://two.example/")


def test_the_models_fields_are_built_once_not_for_every_scene_shown():
    SceneSerializer(_scene("a" * 24, "Warm")).data  # noqa: B018

    with mock.patch.object(serializers.ModelSerializer, "build_field",
                           autospec=True, side_effect=serializers.ModelSerializer.build_field) as build_field:
        shown = SceneSerializer(_scene("b" * 24, "Again")).data

    assert shown["title"] == "Again"
    assert build_field.call_count == 0


def test_a_request_body_is_read_without_its_fields_built_again():
    from scenes.api import StoreSerializer

    StoreSerializer(data={"url": "https://example.com/warm.mp4"}).is_valid()

    with mock.patch.object(serializers.Field, "__deepcopy__", autospec=True,
                           side_effect=serializers.Field.__deepcopy__) as deepcopy:
        body = StoreSerializer(data={"url": " https://example.com/v.mp4 ", "title": "A cat"})
        valid = body.is_valid()

    assert valid, body.errors
    assert body.validated_data == {"url": "https://example.com/v.mp4", "title": "A cat"}
    assert deepcopy.call_count == 0


def test_each_request_body_gets_its_own_errors():
    from scenes.api import StoreSerializer

    bad = StoreSerializer(data={"url": "x" * 10_001})
    good = StoreSerializer(data={"url": "https://example.com/v.mp4"})

    assert (bad.is_valid(), good.is_valid()) == (False, True)
    assert list(bad.errors) == ["url"]
    assert good.errors == {}
    assert good.validated_data["url"] == "https://example.com/v.mp4"


def test_the_class_does_not_keep_the_first_scene_shown_alive():
    import gc
    import weakref

    class Fresh(SceneSerializer):  # binds its own fields, so this one is the first
        pass

    serializer = Fresh(_scene("c" * 24, "First"), context={"request": _request("testserver")})
    serializer.data  # noqa: B018
    gone = weakref.ref(serializer)
    del serializer
    gc.collect()

    assert gone() is None


def test_a_nested_serializer_is_refused_as_a_field_bound_once():
    from scenes.serializers import FieldsBuiltOnce

    class Inner(serializers.Serializer):  # type: ignore[type-arg]
        name = serializers.CharField()

    class Outer(FieldsBuiltOnce, serializers.Serializer):  # type: ignore[type-arg]
        inner = Inner()

    with pytest.raises(TypeError, match="nested serializer"):
        Outer(data={}).fields  # noqa: B018


def test_a_field_with_a_child_is_refused_as_a_field_bound_once():
    from scenes.serializers import FieldsBuiltOnce

    class Tags(FieldsBuiltOnce, serializers.Serializer):  # type: ignore[type-arg]
        tags = serializers.ListField(child=serializers.CharField())

    with pytest.raises(TypeError, match="a field with a child"):
        Tags(data={}).fields  # noqa: B018
