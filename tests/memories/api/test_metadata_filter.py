"""The `metadata` filter of list and search is one JSON value contained in the
memories' metadata: nothing in it is a lookup, a path or an operator, and it is
bounded like stored metadata (memories.api.serializers.MetadataQueryField)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

STORED = {
    "plain": {"topic": "travel", "level": 3},
    "lookup-like key": {"topic__contains": "tr"},
    "path-like key": {"$.topic": "travel"},
    "arrow key": {"topic->>0": "t"},
    "operator-like value": {"topic": {"$ne": "food"}},
}


def _nested(levels: int) -> Any:
    value: Any = "deep"
    for _ in range(levels):
        value = {"a": value}
    return value


@pytest.fixture
def stored(api: APIClient) -> dict[str, str]:
    """One memory per metadata of STORED: its id by name."""
    ids = {}
    for name, metadata in STORED.items():
        response = api.post(
            "/memory/memories",
            {"user_id": "u1", "content": f"A memory about {name}", "metadata": metadata},
            format="json",
        )
        assert response.status_code == 201, response.content
        ids[name] = response.json()["id"]
    return ids


def _listed(api: APIClient, metadata: Any) -> Any:
    return api.get("/memory/memories", {"user_id": "u1", "metadata": json.dumps(metadata)})


def _searched(api: APIClient, metadata: Any) -> Any:
    # json.dumps, not the test client's encoder: it writes a lone surrogate as the escape a client would send.
    body = json.dumps({"user_id": "u1", "query": "memory", "metadata": metadata})
    return api.generic("POST", "/memory/relevant", body, content_type="application/json")


def _ids(response: Any) -> set[str]:
    assert response.status_code == 200, response.content
    return {hit["id"] for hit in response.json()["results"]}


@pytest.mark.parametrize("read", [_listed, _searched], ids=["list", "search"])
@pytest.mark.parametrize(
    ("metadata", "found"),
    [
        ({"topic": "travel"}, {"plain"}),
        ({"topic__contains": "tr"}, {"lookup-like key"}),  # a key, not Django's lookup
        ({"topic__icontains": "TRAVEL"}, set()),
        ({"topic__in": ["travel"]}, set()),
        ({"$.topic": "travel"}, {"path-like key"}),  # a key, not a JSON path
        ({"topic->>0": "t"}, {"arrow key"}),  # a key, not PostgreSQL's operator
        ({"topic": {"$ne": "food"}}, {"operator-like value"}),  # a value, not an operator
        ({"topic": {"$ne": "travel"}}, set()),
        ({"level": 3}, {"plain"}),
        ({"level": "3"}, set()),  # jsonb compares types too
    ],
)
def test_filter_keys_and_values_are_literal(
    api: APIClient, stored: dict[str, str], read: Any, metadata: dict[str, Any], found: set[str]
) -> None:
    assert _ids(read(api, metadata)) == {stored[name] for name in found}


@pytest.mark.parametrize("read", [_listed, _searched], ids=["list", "search"])
@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (["topic"], "JSON object"),
        ("topic", "JSON object"),
        (42, "JSON object"),
        (_nested(33), "nest at most 32 levels"),
        (_nested(300), "nest at most 32 levels"),  # deeper than orjson writes: a 500 before
        ({"blob": "x" * 20_000}, "at most 16384 bytes"),
        ({"nul\u0000key": 1}, "NUL"),
        ({"k": "\ud800"}, "surrogate"),
    ],
)
def test_a_bad_filter_is_400_with_a_clear_message(api: APIClient, read: Any, metadata: Any, message: str) -> None:
    response = read(api, metadata)

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert message in json.dumps(error["fields"]["metadata"], ensure_ascii=False)


@pytest.mark.parametrize(
    "raw",
    ["{broken", '{"a": NaN}', "[" * 5_000 + "]" * 5_000, '{"a":' * 5_000 + "1" + "}" * 5_000],
    ids=["malformed", "nan", "deep-array", "deep-object"],
)
def test_an_unreadable_filter_in_a_query_string_is_400(api: APIClient, raw: str) -> None:
    response = api.get("/memory/memories", {"user_id": "u1", "metadata": raw})

    assert response.status_code == 400, response.content
    assert "metadata" in response.json()["error"]["fields"]


def test_a_filter_as_deep_as_allowed_is_served(api: APIClient) -> None:
    metadata = _nested(32)
    created = api.post(
        "/memory/memories", {"user_id": "u1", "content": "Deep notes", "metadata": metadata}, format="json"
    )
    assert created.status_code == 201, created.content

    for _ in range(2):  # from PostgreSQL, then from the cache
        assert _ids(_listed(api, metadata)) == {created.json()["id"]}
        assert api.get(f"/memory/memories/{created.json()['id']}").json()["metadata"] == metadata


def test_stored_metadata_nested_too_deep_is_400_and_stores_nothing(api: APIClient) -> None:
    response = api.post(
        "/memory/memories", {"user_id": "u1", "content": "Deep notes", "metadata": _nested(33)}, format="json"
    )

    assert response.status_code == 400
    assert "nest at most 32 levels" in response.json()["error"]["fields"]["metadata"][0]
    assert api.get("/memory/memories", {"user_id": "u1"}).json()["results"] == []


@pytest.mark.parametrize(
    "field",
    ["user_id", "namespace", "category", "query", "limit", "min_score", "pinned", "since", "until", "kind", "tags"],
)
@pytest.mark.parametrize("value", [{"$gt": ""}, [["u1"]]], ids=["object", "nested-array"])
def test_search_fields_that_take_scalars_refuse_objects_and_arrays(api: APIClient, field: str, value: Any) -> None:
    body = {"user_id": "u1", "query": "tea", field: value}

    response = api.post("/memory/relevant", body, format="json")

    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]
