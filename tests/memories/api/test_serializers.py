"""Input serializers share their declared fields between instances (memories.api.serializers._unbound_copy)."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.http import QueryDict
from django.test import override_settings

from memories.api.serializers import ListQuerySerializer, MemoryCreateSerializer, SearchSerializer


def test_declared_fields_stay_unbound() -> None:
    first = SearchSerializer(data=QueryDict("user_id=alice&query=trains"))
    second = SearchSerializer(data=QueryDict("user_id=bob&query=planes&limit=3"))
    assert first.is_valid()
    assert second.is_valid()
    assert (first.validated_data["user_id"], second.validated_data["user_id"]) == ("alice", "bob")
    assert first.fields["user_id"] is not second.fields["user_id"]
    assert first.fields["user_id"].parent is first
    assert second.fields["user_id"].parent is second
    for field in SearchSerializer._declared_fields.values():
        assert field.parent is None
        assert field.field_name is None


def test_each_instance_reports_its_own_errors() -> None:
    bad = MemoryCreateSerializer(data={"user_id": "u", "content": "", "tags": ["x" * 10_000]})
    good = MemoryCreateSerializer(data={"user_id": "u", "content": "likes tea", "tags": ["drinks"]})
    assert not bad.is_valid()
    assert good.is_valid(), good.errors
    assert set(bad.errors) == {"content", "tags"}
    assert good.validated_data["tags"] == ["drinks"]


@pytest.mark.parametrize(("maximum", "sent", "valid"), [(20, "20", True), (20, "21", False), (100, "21", True)])
def test_page_size_limit_follows_settings(maximum: int, sent: str, valid: bool) -> None:
    with override_settings(MEMORY={**settings.MEMORY, "MAX_PAGE_SIZE": maximum}):
        assert ListQuerySerializer(data=QueryDict(f"user_id=u&limit={sent}")).is_valid() is valid


def test_content_limit_follows_settings() -> None:
    data = {"user_id": "u", "content": "x" * 30}
    with override_settings(MEMORY={**settings.MEMORY, "MAX_CONTENT_CHARS": 20}):
        assert not MemoryCreateSerializer(data=data).is_valid()
    assert MemoryCreateSerializer(data=data).is_valid()
