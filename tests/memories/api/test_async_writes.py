"""Fire-and-forget writes through the API: `?async=true` on create and batch."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from redis.client import Pipeline
from rest_framework.test import APIClient

import memories.embedder as embedder
from memories.cache import tiered_cache
from memories.embedder import embed_pending
from memories.models import Memory, MemoryHistory, PendingInvalidation
from memories.services import MemoryInput, WriteResult, memory_batch_create_pending
from tests.concurrency import in_threads
from tests.conftest import SpyEmbedder
from tests.factories import AccountWithKey
from tests.servers import redis_down_caches

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


# -- the new memory's one-statement path (memories.services._store_new_pending) -------------------


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the embedder tasks enqueued, instead of enqueuing them."""
    calls: list[int] = []
    monkeypatch.setattr(embedder, "_enqueue", lambda: calls.append(1))
    return calls


def _redis_round_trips(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What this process sends to Redis from now on: a command's name, or a
    pipeline's list of names, one entry per round trip."""
    trips: list[Any] = []
    client = tiered_cache()._redis()
    command: Callable[..., Any] = client.execute_command
    execute: Callable[..., Any] = Pipeline.execute

    def execute_command(*args: Any, **options: Any) -> Any:
        trips.append(args[0])
        return command(*args, **options)

    def execute_pipeline(self: Pipeline, *args: Any, **options: Any) -> Any:
        trips.append([queued[0][0] for queued in self.command_stack])
        return execute(self, *args, **options)

    monkeypatch.setattr(client, "execute_command", execute_command)
    monkeypatch.setattr(Pipeline, "execute", execute_pipeline)
    return trips


@pytest.mark.django_db(transaction=True)
def test_a_new_memory_is_one_statement_and_two_redis_round_trips(
    account: AccountWithKey, enqueued: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    trips = _redis_round_trips(monkeypatch)
    item = MemoryInput(user_id="u1", content="User collects vinyl records", tags=("music",))

    with CaptureQueriesContext(connection) as queries:
        (result,) = memory_batch_create_pending(account=account.account, items=[item], actor="api:test")

    # No BEGIN and COMMIT: the statement is its own transaction, committed when it returns.
    assert len(queries.captured_queries) == 1, [q["sql"] for q in queries.captured_queries]
    assert result.created
    memory = Memory.objects.get(pk=result.memory.pk)
    assert (memory.content, memory.tags, memory.embedding, memory.account_id) == (
        "User collects vinyl records",
        ["music"],
        None,
        account.account.pk,
    )
    assert list(MemoryHistory.objects.filter(memory_id=memory.pk).values_list("action", "actor", "new_content")) == [
        ("create", "api:test", "User collects vinyl records")
    ]
    # The user's token before the statement; after it, the token again and the
    # embedder's flag (request_embedding's SET NX) on the same round trip.
    assert trips == [["SET"], ["SET", "SET"]]
    assert enqueued == [1]
    with CaptureQueriesContext(connection) as queries:
        memory_batch_create_pending(account=account.account, items=[MemoryInput(user_id="u1", content="x")], actor="t")
    assert len(queries.captured_queries) == 1
    assert enqueued == [1], "the flag says a task is on its way"


@pytest.mark.django_db(transaction=True)
def test_a_key_a_concurrent_writer_takes_first_updates_its_memory(account: AccountWithKey, enqueued: list[int]) -> None:
    item = MemoryInput(user_id="u1", category="profile", key="city", content="User lives in Lisbon")
    holding = threading.Event()
    results: list[WriteResult] = []

    def first_writer() -> None:
        with transaction.atomic():
            memory_batch_create_pending(account=account.account, items=[item], actor="first")
            holding.set()
            # The second writer's INSERT waits for this transaction on the unique key, then fails.
            time.sleep(0.5)

    def second_writer() -> None:
        assert holding.wait(30)
        (result,) = memory_batch_create_pending(
            account=account.account, items=[replace(item, content="User lives in Porto")], actor="second"
        )
        results.append(result)

    in_threads([first_writer, second_writer])

    (result,) = results
    assert (result.created, result.matched_by) == (False, "key")
    memory = Memory.objects.get()
    assert (memory.pk, memory.content) == (result.memory.pk, "User lives in Porto")
    assert list(MemoryHistory.objects.order_by("created_at").values_list("action", "actor")) == [
        ("create", "first"),
        ("update", "second"),
    ]


@pytest.mark.django_db(transaction=True)
def test_an_async_store_while_redis_is_down_is_recorded_and_enqueues(api: APIClient, enqueued: list[int]) -> None:
    with override_settings(CACHES=redis_down_caches()):
        body = _store_async(api, "User is learning the cello")

    assert Memory.objects.filter(pk=body["id"]).exists()
    # Replayed by the first process to reach Redis again, before it serves from the cache.
    assert PendingInvalidation.objects.filter(user_id="u1").exists()
    # Redis could not say whether a task is on its way: one is enqueued.
    assert enqueued == [1]
