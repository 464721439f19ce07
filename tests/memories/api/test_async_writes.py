"""Fire-and-forget writes through the API: `?async=true` on create and batch."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from memories.embedder import embed_pending
from memories.models import Memory, MemoryHistory
from tests.conftest import SpyEmbedder

pytestmark = pytest.mark.django_db


def _store_async(api: APIClient, content: str, **fields: Any) -> dict[str, Any]:
    response = api.post("/memory/memories?async=true", {"user_id": "u1", "content": content, **fields}, format="json")
    assert response.status_code == 202, response.json()
    body: dict[str, Any] = response.json()
    return body


def _search(api: APIClient, query: str) -> list[dict[str, Any]]:
    response = api.get("/memory/relevant", {"user_id": "u1", "query": query})
    assert response.status_code == 200, response.json()
    hits: list[dict[str, Any]] = response.json()["results"]
    return hits


def test_async_create_answers_202_with_the_id_of_a_stored_pending_row(
    api: APIClient, spy_embedder: SpyEmbedder
) -> None:
    body = _store_async(api, "User always books a window seat", tags=["travel"])

    assert body == {"id": body["id"], "status": "pending", "created": True, "matched_by": None}
    # Durable at answer time, without a vector, and no model call was made for it.
    memory = Memory.objects.get(pk=body["id"])
    assert memory.embedding is None
    assert memory.embedding_model == ""
    assert memory.tags == ["travel"]
    assert spy_embedder.calls == 0
    assert MemoryHistory.objects.filter(memory_id=memory.id, action="create").count() == 1


def test_async_batch_answers_202_with_ids_in_input_order(api: APIClient, spy_embedder: SpyEmbedder) -> None:
    response = api.post(
        "/memory/memories/batch?async=1",
        {
            "memories": [
                {"user_id": "u1", "content": "User speaks Portuguese"},
                {"user_id": "u1", "content": "User runs marathons"},
                {"user_id": "u1", "content": "user  speaks portuguese"},
            ]
        },
        format="json",
    )

    assert response.status_code == 202
    body = response.json()
    assert body["created"] == 2
    assert body["updated"] == 1
    assert body["pending"] == 2
    ids = body["ids"]
    # The exact duplicate merged into the first item, within the batch.
    assert ids[2] == ids[0]
    rows = {str(m.id): m for m in Memory.objects.all()}
    assert set(rows) == set(ids)
    assert rows[ids[1]].content == "User runs marathons"
    assert all(row.embedding is None for row in rows.values())
    assert spy_embedder.calls == 0


def test_async_false_is_the_sync_write(api: APIClient) -> None:
    response = api.post("/memory/memories?async=false", {"user_id": "u1", "content": "Likes jazz"}, format="json")

    assert response.status_code == 201
    assert response.json()["embedding"] is not None


@pytest.mark.parametrize("query", ["async=yes", "async=", "async=true&async=false", "async=true&debug=1"])
def test_bad_query_parameters_are_refused(api: APIClient, query: str) -> None:
    response = api.post(f"/memory/memories?{query}", {"user_id": "u1", "content": "Likes jazz"}, format="json")

    assert response.status_code == 400
    assert Memory.objects.count() == 0


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/memory/memories", {"user_id": "u1", "content": "x", "importance": 3}),
        ("/memory/memories", {"user_id": "u1"}),
        ("/memory/memories", {"user_id": "u1", "content": "x", "colour": "red"}),
        ("/memory/memories/batch", {"memories": [{"user_id": "u1", "content": "fine"}, {"user_id": "u1"}]}),
        ("/memory/memories/batch", {"memories": "nope"}),
    ],
)
def test_bad_input_gets_the_sync_error_and_stores_nothing(api: APIClient, path: str, payload: Any) -> None:
    sync = api.post(path, payload, format="json")
    fire_and_forget = api.post(f"{path}?async=true", payload, format="json")

    assert sync.status_code == 400
    assert fire_and_forget.status_code == sync.status_code
    assert fire_and_forget.json() == sync.json()
    assert Memory.objects.count() == 0


def test_async_batch_above_the_limit_is_413(api: APIClient, settings: Any) -> None:
    settings.MEMORY = {**settings.MEMORY, "MAX_BATCH_ITEMS": 2}
    items = [{"user_id": "u1", "content": f"fact {i}"} for i in range(3)]

    response = api.post("/memory/memories/batch?async=true", {"memories": items}, format="json")

    assert response.status_code == 413
    assert Memory.objects.count() == 0


def test_a_pending_memory_is_read_at_once_by_get_and_list(api: APIClient) -> None:
    # Cached pages of the user exist before the write: the write must retire them.
    assert api.get("/memory/memories", {"user_id": "u1"}).json()["results"] == []
    body = _store_async(api, "User is learning the cello")

    got = api.get(f"/memory/memories/{body['id']}")
    listed = api.get("/memory/memories", {"user_id": "u1"}).json()["results"]

    assert got.status_code == 200
    assert got.json()["content"] == "User is learning the cello"
    assert got.json()["embedding"] is None
    assert [item["id"] for item in listed] == [body["id"]]


def test_keyword_search_finds_a_pending_memory_with_similarity_zero(api: APIClient) -> None:
    body = _store_async(api, "User is learning the cello")

    hits = _search(api, "cello lessons")

    assert [hit["id"] for hit in hits] == [body["id"]]
    assert hits[0]["score_parts"]["similarity"] == 0.0
    assert hits[0]["score_parts"]["keyword"] > 0.0
    assert hits[0]["embedding"] is None


def test_once_embedded_it_is_found_by_similarity_and_cached_answers_are_fresh(api: APIClient) -> None:
    body = _store_async(api, "User is allergic to peanuts")
    # Nothing in common with the content but the meaning.
    query = "food intolerance to nuts"
    assert _search(api, query) == []
    assert api.get(f"/memory/memories/{body['id']}").json()["embedding"] is None

    assert embed_pending() == 1

    hits = _search(api, query)
    assert [hit["id"] for hit in hits] == [body["id"]]
    assert hits[0]["score_parts"]["similarity"] > 0.3
    assert hits[0]["score_parts"]["keyword"] == 0.0
    assert api.get(f"/memory/memories/{body['id']}").json()["embedding"] == {
        "model": "all-MiniLM-L6-v2",
        "dimensions": 384,
    }


def test_another_account_cannot_see_a_pending_memory(api: APIClient, other_api: APIClient) -> None:
    body = _store_async(api, "User is learning the cello")

    assert other_api.get(f"/memory/memories/{body['id']}").status_code == 404
    assert other_api.get("/memory/memories", {"user_id": "u1"}).json()["results"] == []
    assert other_api.get("/memory/relevant", {"user_id": "u1", "query": "cello"}).json()["results"] == []


def test_async_upsert_by_key_updates_and_waits_for_the_new_vector(api: APIClient) -> None:
    first = api.post(
        "/memory/memories",
        {"user_id": "u1", "category": "profile", "key": "city", "content": "User lives in Lisbon"},
        format="json",
    ).json()

    second = _store_async(api, "User lives in Porto", category="profile", key="city")

    assert second == {"id": first["id"], "status": "pending", "created": False, "matched_by": "key"}
    memory = Memory.objects.get()
    assert memory.content == "User lives in Porto"
    # The old vector described Lisbon: gone until the embedder brings Porto's.
    assert memory.embedding is None
    assert [h.action for h in MemoryHistory.objects.order_by("created_at")] == ["create", "update"]


def test_async_key_upsert_without_a_content_change_keeps_the_vector(api: APIClient) -> None:
    first = api.post(
        "/memory/memories",
        {"user_id": "u1", "category": "profile", "key": "city", "content": "User lives in Lisbon"},
        format="json",
    ).json()

    second = _store_async(api, "User lives in Lisbon", category="profile", key="city", pinned=True)

    assert second["status"] == "embedded"
    assert second["id"] == first["id"]
    assert Memory.objects.get().embedding is not None


def test_async_exact_duplicate_merges_but_near_duplicates_are_not_merged(api: APIClient) -> None:
    first = _store_async(api, "My cat is called Miso", tags=["pets"])

    same = _store_async(api, "my cat is  called MISO", tags=["cat"])
    near = _store_async(api, "My cat is called Miso!")

    assert same["id"] == first["id"]
    assert same["matched_by"] == "duplicate"
    # Cosine merging needs the vector the async write does not wait for.
    assert near["id"] != first["id"]
    assert Memory.objects.get(pk=first["id"]).tags == ["pets", "cat"]


def test_a_sync_write_merges_into_a_pending_exact_duplicate(api: APIClient) -> None:
    pending = _store_async(api, "User owns a motorcycle")

    response = api.post("/memory/memories", {"user_id": "u1", "content": "user owns a motorcycle"}, format="json")

    assert response.status_code == 200
    assert response.json()["id"] == pending["id"]
    assert Memory.objects.get().embedding is not None
