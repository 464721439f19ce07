"""Anything a client can send gets a JSON 4xx with the error shape, and changes nothing."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from rest_framework.test import APIClient

from memories.models import Memory, MemoryHistory, RawTranscript, Session

pytestmark = pytest.mark.django_db

GOOD = {"user_id": "u1", "content": "User likes tea"}


def _assert_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["code"]
    assert error["message"]
    return error


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"content": "no user"}, "user_id"),
        ({"user_id": "u1"}, "content"),
        ({"user_id": "u1", "content": ""}, "content"),
        ({"user_id": "u1", "content": 42}, None),
        ({"user_id": ["u1"], "content": "x"}, "user_id"),
        ({**GOOD, "importance": "high"}, "importance"),
        ({**GOOD, "importance": 1.5}, "importance"),
        ({**GOOD, "pinned": "maybe"}, "pinned"),
        ({**GOOD, "kind": "rumour"}, "kind"),
        ({**GOOD, "tags": "not-a-list"}, "tags"),
        ({**GOOD, "tags": [f"t{n}" for n in range(51)]}, "tags"),
        ({**GOOD, "tags": ["x" * 101]}, "tags"),
        ({**GOOD, "metadata": [1, 2]}, "metadata"),
        ({**GOOD, "metadata": {"blob": "x" * 20_000}}, "metadata"),
        ({**GOOD, "metadata": {"nul": "a\u0000b"}}, "metadata"),
        # Beyond 64 bits: PostgreSQL would store it, but orjson (cache entries, cache keys) cannot write it.
        ({**GOOD, "metadata": {"n": 2**64}}, "metadata"),
        ({**GOOD, "content": "a\u0000b"}, "content"),
        ({**GOOD, "content": "x" * 10_001}, "content"),
        ({**GOOD, "user_id": "u" * 256}, "user_id"),
        ({**GOOD, "namespace": "no spaces allowed"}, "namespace"),
        ({**GOOD, "expires_at": "yesterday"}, "expires_at"),
        ({**GOOD, "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({**GOOD, "ttl_seconds": 0}, "ttl_seconds"),
        ({**GOOD, "ttl_seconds": 60, "expires_at": "2100-01-01T00:00:00Z"}, None),
        ({**GOOD, "key": ""}, "key"),
        ({**GOOD, "colour": "blue"}, "colour"),
        ([GOOD], None),
        ("just a string", None),
    ],
)
def test_bad_create_is_400_and_stores_nothing(api: APIClient, body: Any, field: str | None) -> None:
    error = _assert_error(api.post("/memory/memories", body, format="json"), 400)
    if field is not None:
        assert field in error["fields"]
    assert Memory.objects.count() == 0
    assert MemoryHistory.objects.count() == 0


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b'{"user_id": "u1", "content": NaN}', b"[" * 100_000 + b"]" * 100_000, b"", b"\xff\xfe"],
    ids=["malformed", "nan", "deeply-nested", "empty", "not-utf8"],
)
def test_unparseable_body_is_400(api: APIClient, raw: bytes) -> None:
    # Django sends bytes as they are; its stubs only admit str.
    _assert_error(api.generic("POST", "/memory/memories", raw, content_type="application/json"), 400)  # type: ignore[arg-type]
    assert Memory.objects.count() == 0


def test_body_over_the_upload_limit_is_413(api: APIClient, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    items = [{"user_id": "u1", "content": "x" * 1_000} for _ in range(20)]
    error = _assert_error(api.post("/memory/memories/batch", {"memories": items}, format="json"), 413)
    assert "10000 bytes" in error["message"]
    assert Memory.objects.count() == 0


_LARGE_BODIES = {
    "/memory/memories": {"user_id": "u1", "content": "x" * 9_000, "metadata": {"note": "y" * 5_000}},
    "/memory/memories?async=true": {"user_id": "u1", "content": "x" * 9_000, "metadata": {"note": "y" * 5_000}},
    "/memory/memories/batch": {"memories": [{"user_id": "u1", "content": "x" * 1_000} for _ in range(20)]},
    "/memory/memories/batch?async=true": {"memories": [{"user_id": "u1", "content": "x" * 1_000} for _ in range(20)]},
    "/api/memory/default/store_raw": {"session_data": "User: I like tea.\n" * 1_000, "metadata": {"user_id": "u1"}},
}


@pytest.mark.parametrize("path", list(_LARGE_BODIES))
def test_every_write_over_the_upload_limit_is_413_and_writes_nothing(api: APIClient, settings: Any, path: str) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000

    error = _assert_error(api.post(path, _LARGE_BODIES[path], format="json"), 413)

    assert error["code"] == "too_large"
    assert not Memory.objects.exists()
    assert not MemoryHistory.objects.exists()
    assert not RawTranscript.objects.exists()
    assert not Session.objects.exists()


def test_an_async_batch_over_the_item_limit_is_413_and_writes_nothing(api: APIClient) -> None:
    items = [{"user_id": "u1", "content": f"fact {n}"} for n in range(1_001)]

    error = _assert_error(api.post("/memory/memories/batch?async=true", {"memories": items}, format="json"), 413)

    assert "at most 1000" in error["message"]
    assert not Memory.objects.exists()


def test_a_body_over_the_default_upload_limit_is_413(api: APIClient) -> None:
    body = b'{"user_id": "u1", "content": "' + b"x" * (21 * 1024 * 1024) + b'"}'

    # Django sends bytes as they are; its stubs only admit str.
    _assert_error(api.generic("POST", "/memory/memories", body, content_type="application/json"), 413)  # type: ignore[arg-type]
    assert not Memory.objects.exists()


def test_unpaired_surrogate_in_metadata_is_400(api: APIClient) -> None:
    body = '{"user_id": "u1", "content": "ok", "metadata": {"k": "\\ud800"}}'
    error = _assert_error(api.generic("POST", "/memory/memories", body, content_type="application/json"), 400)
    assert "metadata" in error["fields"]
    assert Memory.objects.count() == 0


def test_wrong_content_type_is_415(api: APIClient) -> None:
    _assert_error(api.generic("POST", "/memory/memories", "user_id=u1", content_type="text/plain"), 415)


def test_batch_of_1001_is_413(api: APIClient) -> None:
    items = [{"user_id": "u1", "content": f"fact {n}"} for n in range(1_001)]
    _assert_error(api.post("/memory/memories/batch", {"memories": items}, format="json"), 413)
    assert Memory.objects.count() == 0


@pytest.mark.parametrize(
    "body",
    [{}, {"memories": []}, {"memories": "x"}, {"memories": [GOOD], "extra": 1}, [GOOD]],
    ids=["missing", "empty", "not-a-list", "unknown-field", "bare-list"],
)
def test_bad_batch_envelope_is_400(api: APIClient, body: Any) -> None:
    _assert_error(api.post("/memory/memories/batch", body, format="json"), 400)
    assert Memory.objects.count() == 0


def test_batch_item_that_is_not_an_object_is_reported_by_index(api: APIClient) -> None:
    error = _assert_error(api.post("/memory/memories/batch", {"memories": [GOOD, "oops"]}, format="json"), 400)
    assert set(error["fields"]["memories"]) == {"1"}


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"user_id": "u1", "limit": 0},
        {"user_id": "u1", "limit": 1_001},
        {"user_id": "u1", "limit": "ten"},
        {"user_id": "u1", "cursor": "garbage"},
        {"user_id": "u1", "cursor": "MjAyNi0wMS0wMXxub3QtYS11dWlk"},
        {"user_id": "u1", "colour": "blue"},
        {"user_id": "u1", "kind": "rumour"},
        {"user_id": "u1", "pinned": "perhaps"},
        {"user_id": "u1", "since": "last week"},
        {"user_id": "u1", "metadata": "{broken"},
        {"user_id": "u1", "metadata": "[1]"},
        {"user_id": "u1", "metadata": '{"n": 18446744073709551616}'},
    ],
)
def test_bad_list_query_is_400(api: APIClient, params: dict[str, Any]) -> None:
    _assert_error(api.get("/memory/memories", params), 400)


def test_repeated_query_parameter_is_400(api: APIClient) -> None:
    _assert_error(api.get("/memory/memories?user_id=a&user_id=b"), 400)


@pytest.mark.parametrize(
    "params",
    [
        {"user_id": "u1"},
        {"query": "tea"},
        {"user_id": "u1", "query": "tea", "limit": 1_001},
        {"user_id": "u1", "query": "tea", "min_score": 2},
        {"user_id": "u1", "query": "tea", "min_score": "nan"},
        {"user_id": "u1", "query": "x" * 2_001},
        {"user_id": "u1", "query": "tea", "sort": "asc"},
        {"user_id": "u1", "query": "tea", "metadata": '{"n": -9223372036854775809}'},
    ],
)
def test_bad_search_is_400(api: APIClient, params: dict[str, Any]) -> None:
    _assert_error(api.get("/memory/relevant", params), 400)
    _assert_error(api.post("/memory/relevant", params, format="json"), 400)


@pytest.mark.parametrize("path", ["/memory/memories/not-a-uuid", "/memory/memories/123/history", "/memory/nothing"])
def test_unknown_paths_are_json_404(api: APIClient, path: str) -> None:
    _assert_error(api.get(path), 404)


def test_unknown_memory_is_404(api: APIClient) -> None:
    _assert_error(api.get(f"/memory/memories/{uuid.uuid4()}"), 404)
    _assert_error(api.get(f"/memory/memories/{uuid.uuid4()}/history"), 404)


def test_bad_patch_is_400_and_changes_nothing(api: APIClient) -> None:
    memory_id = api.post("/memory/memories", GOOD, format="json").json()["id"]
    url = f"/memory/memories/{memory_id}"

    for body in [{}, {"user_id": "u2"}, {"importance": -1}, {"content": ""}, {"id": str(uuid.uuid4())}]:
        _assert_error(api.patch(url, body, format="json"), 400)

    memory = Memory.objects.get()
    assert (memory.user_id, memory.importance, memory.content) == ("u1", 0.5, "User likes tea")
    assert MemoryHistory.objects.count() == 1


def test_patch_to_a_taken_key_is_409(api: APIClient) -> None:
    api.post("/memory/memories", {**GOOD, "category": "c", "key": "k1"}, format="json")
    other = api.post("/memory/memories", {"user_id": "u1", "content": "Other", "category": "c"}, format="json").json()

    _assert_error(api.patch(f"/memory/memories/{other['id']}", {"key": "k1"}, format="json"), 409)
    assert Memory.objects.get(pk=other["id"]).key is None


def test_wrong_method_is_405(api: APIClient) -> None:
    _assert_error(api.put("/memory/memories", GOOD, format="json"), 405)


def test_unknown_query_parameter_on_write_is_400(api: APIClient) -> None:
    _assert_error(api.post("/memory/memories?bogus=1", GOOD, format="json"), 400)
    assert Memory.objects.count() == 0
