from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pytest
from django.db import connection
from rest_framework import serializers as drf
from rest_framework.test import APIClient

from memories.access import flush_access_counts
from memories.api.serializers import MemoryOutputSerializer
from memories.models import Memory, MemoryHistory
from memories.records import memory_output, memory_to_record, record_json_sql
from tests.factories import AccountWithKey

pytestmark = pytest.mark.django_db


def _store(api: APIClient, content: str, **fields: Any) -> dict[str, Any]:
    response = api.post("/memory/memories", {"user_id": "u1", "content": content, **fields}, format="json")
    assert response.status_code in (200, 201), response.json()
    body: dict[str, Any] = response.json()
    return body


def test_create_stores_an_embedded_memory(api: APIClient) -> None:
    response = api.post(
        "/memory/memories",
        {"user_id": "u1", "content": "I always book a window seat", "tags": ["travel"], "importance": 0.8},
        format="json",
    )

    assert response.status_code == 201
    body = response.json()
    assert body["content"] == "I always book a window seat"
    assert body["embedding"] == {"model": "all-MiniLM-L6-v2", "dimensions": 384}
    memory = Memory.objects.get(pk=body["id"])
    assert memory.embedding is not None
    assert memory.tags == ["travel"]
    assert MemoryHistory.objects.filter(memory_id=memory.id, action="create").count() == 1


def test_get_patch_delete_and_history(api: APIClient) -> None:
    created = _store(api, "User likes green tea")
    url = f"/memory/memories/{created['id']}"

    assert api.get(url).json()["content"] == "User likes green tea"
    patched = api.patch(url, {"content": "User likes black coffee", "pinned": True}, format="json")
    assert patched.status_code == 200
    assert patched.json()["pinned"] is True
    assert api.delete(url).status_code == 204
    assert api.get(url).status_code == 404

    history = api.get(f"{url}/history").json()["history"]
    assert [entry["action"] for entry in history] == ["create", "update", "delete"]
    assert history[1]["old_content"] == "User likes green tea"
    assert history[1]["new_content"] == "User likes black coffee"
    assert history[1]["changes"] == {"pinned": [False, True]}


def test_content_change_reembeds(api: APIClient) -> None:
    created = _store(api, "User likes green tea")
    before = Memory.objects.get(pk=created["id"]).embedding
    api.patch(f"/memory/memories/{created['id']}", {"content": "User owns a motorcycle"}, format="json")
    after = Memory.objects.get(pk=created["id"]).embedding
    assert before is not None
    assert after is not None
    assert float(np.dot(before, after)) < 0.9


def test_same_key_upserts(api: APIClient) -> None:
    first = api.post(
        "/memory/memories",
        {"user_id": "u1", "category": "profile", "key": "city", "content": "User lives in Lisbon"},
        format="json",
    )
    second = api.post(
        "/memory/memories",
        {"user_id": "u1", "category": "profile", "key": "city", "content": "User lives in Porto"},
        format="json",
    )

    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert Memory.objects.get().content == "User lives in Porto"


def test_exact_duplicate_updates_instead_of_adding(api: APIClient) -> None:
    first = _store(api, "My cat is called Miso", tags=["pets"])
    second = api.post(
        "/memory/memories", {"user_id": "u1", "content": "my cat is  called Miso", "tags": ["cat"]}, format="json"
    )

    assert second.status_code == 200
    assert second.json()["id"] == first["id"]
    assert second.json()["tags"] == ["pets", "cat"]
    assert Memory.objects.count() == 1
    assert MemoryHistory.objects.filter(action="merge").count() == 1


def test_near_duplicate_updates_but_different_fact_is_added(api: APIClient) -> None:
    first = _store(api, "User is allergic to peanuts.")
    near = api.post("/memory/memories", {"user_id": "u1", "content": "User is allergic to peanuts!"}, format="json")
    other = api.post("/memory/memories", {"user_id": "u1", "content": "User is allergic to cats."}, format="json")

    assert near.status_code == 200
    assert near.json()["id"] == first["id"]
    assert other.status_code == 201
    assert Memory.objects.count() == 2


def test_duplicate_threshold_comes_from_settings(api: APIClient, settings: Any) -> None:
    settings.MEMORY = {**settings.MEMORY, "DUPLICATE_SIMILARITY": 1.01}
    _store(api, "User is allergic to peanuts.")
    near = api.post("/memory/memories", {"user_id": "u1", "content": "User is allergic to peanuts!"}, format="json")
    assert near.status_code == 201


def test_same_content_for_another_user_is_not_a_duplicate(api: APIClient) -> None:
    _store(api, "Likes jazz")
    response = api.post("/memory/memories", {"user_id": "u2", "content": "Likes jazz"}, format="json")
    assert response.status_code == 201


@pytest.mark.parametrize("padding", [0, 5], ids=["looked-up-per-item", "one-pass"])
def test_a_batch_matches_each_near_duplicate_to_its_own_users_memory_of_its_kind(api: APIClient, padding: int) -> None:
    peanuts_u1 = _store(api, "User is allergic to peanuts.")
    peanuts_u2 = _store(api, "User is allergic to peanuts.", user_id="u2")
    seat_u1 = _store(api, "User always books a window seat.")
    flight_event_u1 = _store(api, "User booked a window seat on the Lisbon flight.", kind="event")

    response = api.post(
        "/memory/memories/batch",
        {
            "memories": [
                {"user_id": "u2", "content": "User is allergic to peanuts!"},
                {"user_id": "u1", "content": "User booked a window seat on the Lisbon flight!", "kind": "event"},
                {"user_id": "u1", "content": "User is allergic to peanuts!"},
                {"user_id": "u1", "content": "User always books a window seat!"},
                {"user_id": "u3", "content": "User is allergic to peanuts!"},
                {"user_id": "u1", "content": "User is allergic to peanuts!", "kind": "preference"},
                # Enough items for the one pass over the users' rows (services._ONE_PASS_ITEMS).
                *({"user_id": "u4", "content": f"User owns {n} bicycles"} for n in range(padding)),
            ]
        },
        format="json",
    )

    assert response.status_code == 201, response.json()
    ids = [result["memory"]["id"] for result in response.json()["results"]]
    assert ids[:4] == [peanuts_u2["id"], flight_event_u1["id"], peanuts_u1["id"], seat_u1["id"]]
    # Another user, another kind: new memories.
    assert [result["created"] for result in response.json()["results"]][:6] == [False, False, False, False, True, True]


def test_metadata_integers_up_to_64_bits_are_stored_and_read_back(api: APIClient) -> None:
    # The limits of what the caches' JSON writer (orjson) writes: larger ones are refused with a 400.
    metadata = {"smallest": -(2**63), "largest": 2**64 - 1}
    created = api.post("/memory/memories", {"user_id": "u1", "content": "x", "metadata": metadata}, format="json")

    assert created.status_code == 201, created.json()
    assert api.get(f"/memory/memories/{created.json()['id']}").json()["metadata"] == metadata
    listed = api.get("/memory/memories", {"user_id": "u1", "metadata": orjson.dumps(metadata).decode()}).json()
    assert [memory["id"] for memory in listed["results"]] == [created.json()["id"]]


def test_ttl_sets_expiry_and_expired_memories_are_gone(api: APIClient) -> None:
    created = _store(api, "Temporary note", ttl_seconds=3600)
    assert created["expires_at"] is not None
    Memory.objects.filter(pk=created["id"]).update(expires_at="2000-01-01T00:00:00Z")

    assert api.get(f"/memory/memories/{created['id']}").status_code == 404
    assert api.get("/memory/memories", {"user_id": "u1"}).json()["results"] == []


def test_batch_is_one_transaction_with_per_item_results(api: APIClient) -> None:
    response = api.post(
        "/memory/memories/batch",
        {
            "memories": [
                {"user_id": "u1", "content": "User speaks Portuguese"},
                {"user_id": "u1", "content": "User runs marathons"},
                {"user_id": "u2", "content": "User speaks Portuguese"},
                {"user_id": "u1", "content": "user speaks portuguese"},
            ]
        },
        format="json",
    )

    assert response.status_code == 201
    body = response.json()
    assert body["created"] == 3
    assert body["updated"] == 1
    assert body["results"][3]["memory"]["id"] == body["results"][0]["memory"]["id"]
    assert Memory.objects.count() == 3


def test_batch_with_one_bad_item_stores_nothing(api: APIClient) -> None:
    response = api.post(
        "/memory/memories/batch",
        {"memories": [{"user_id": "u1", "content": "fine"}, {"user_id": "u1", "importance": 3}]},
        format="json",
    )

    assert response.status_code == 400
    fields = response.json()["error"]["fields"]["memories"]
    assert set(fields) == {"1"}
    assert set(fields["1"]) == {"content", "importance"}
    assert Memory.objects.count() == 0


def test_list_is_newest_first_with_cursor_paging(api: APIClient) -> None:
    ids = [_store(api, f"Fact number {n} about a distinct topic {n * 7}")["id"] for n in range(5)]

    first = api.get("/memory/memories", {"user_id": "u1", "limit": "2"}).json()
    second = api.get("/memory/memories", {"user_id": "u1", "limit": "2", "cursor": str(first["next_cursor"])}).json()
    third = api.get("/memory/memories", {"user_id": "u1", "limit": "2", "cursor": str(second["next_cursor"])}).json()

    seen = [m["id"] for page in (first, second, third) for m in page["results"]]
    assert seen == list(reversed(ids))
    assert third["next_cursor"] is None


def test_list_filters(api: APIClient) -> None:
    _store(api, "User prefers aisle seats", kind="preference", tags=["travel", "flights"], metadata={"src": "chat"})
    _store(api, "User visited Rome in May", kind="event", tags=["travel"], pinned=True)
    _store(api, "User's sister is Ana", category="family", metadata={"src": "form", "n": 1})

    def contents(**params: Any) -> set[str]:
        response = api.get("/memory/memories", {"user_id": "u1", **params})
        assert response.status_code == 200, response.json()
        return {m["content"] for m in response.json()["results"]}

    assert contents(kind="preference") == {"User prefers aisle seats"}
    assert contents(kind="discrete") == {"User prefers aisle seats", "User visited Rome in May", "User's sister is Ana"}
    assert contents(tags="flights,nothing") == {"User prefers aisle seats"}
    assert contents(tags_all="travel,flights") == {"User prefers aisle seats"}
    assert contents(metadata='{"src": "form"}') == {"User's sister is Ana"}
    assert contents(pinned="true") == {"User visited Rome in May"}
    assert contents(category="family") == {"User's sister is Ana"}
    assert contents(since="2100-01-01T00:00:00Z") == set()


def test_no_key_gets_401(db: None) -> None:
    response = APIClient().get("/memory/memories", {"user_id": "u1"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_wrong_key_gets_401(db: None) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer mp_not-a-key")
    assert client.get("/memory/memories", {"user_id": "u1"}).status_code == 401


def test_revoked_key_gets_401(api: APIClient, account: AccountWithKey) -> None:
    account.key.revoked_at = account.key.created_at
    account.key.save()
    assert api.get("/memory/memories", {"user_id": "u1"}).status_code == 401


def test_other_account_gets_404_on_every_memory_url(api: APIClient, other_api: APIClient) -> None:
    created = _store(api, "Secret of the first account")
    url = f"/memory/memories/{created['id']}"

    assert other_api.get(url).status_code == 404
    assert other_api.patch(url, {"pinned": True}, format="json").status_code == 404
    assert other_api.delete(url).status_code == 404
    assert other_api.get(f"{url}/history").status_code == 404
    assert other_api.get("/memory/memories", {"user_id": "u1"}).json()["results"] == []
    found = other_api.get("/memory/relevant", {"user_id": "u1", "query": "secret"}).json()["results"]
    assert found == []
    assert Memory.objects.get(pk=created["id"]).pinned is False


def test_other_account_can_use_the_same_user_id_and_key(api: APIClient, other_api: APIClient) -> None:
    mine = {"user_id": "u1", "category": "profile", "key": "city", "content": "Lives in Oslo"}
    theirs = {**mine, "content": "Lives in Oslo"}
    assert api.post("/memory/memories", mine, format="json").status_code == 201
    assert other_api.post("/memory/memories", theirs, format="json").status_code == 201
    assert Memory.objects.count() == 2


def test_fast_output_matches_drf_generic_output(api: APIClient) -> None:
    created = _store(api, "User likes tea", tags=["a"], metadata={"k": [1, {"x": None}]}, ttl_seconds=60)
    memory = Memory.objects.get(pk=created["id"])
    memory.last_accessed_at = memory.created_at
    fast = MemoryOutputSerializer(memory).data
    generic = drf.ModelSerializer.to_representation(MemoryOutputSerializer(), memory)

    assert fast == dict(generic)


@pytest.mark.parametrize("embedded", [True, False], ids=["embedded", "pending"])
def test_cached_records_answer_as_the_serializer_does(api: APIClient, embedded: bool) -> None:
    created = _store(api, "User likes tea", tags=["a"], metadata={"k": [1, {"x": None}]}, ttl_seconds=60)
    Memory.objects.filter(pk=created["id"]).update(last_accessed_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    if not embedded:
        Memory.objects.filter(pk=created["id"]).update(embedding=None, embedding_model="")
    memory = Memory.objects.get(pk=created["id"])
    expected = dict(drf.ModelSerializer.to_representation(MemoryOutputSerializer(), memory))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {record_json_sql('m')} FROM memories_memory m WHERE m.id = %s", [memory.id])
        (from_sql,) = cursor.fetchone()
    # As a record cached before records wrote timestamps the API's way.
    stamps = ("created_at", "updated_at", "last_accessed_at", "expires_at")
    old_style = {**memory_to_record(memory), **{name: getattr(memory, name).isoformat() for name in stamps}}

    assert memory_output(memory_to_record(memory)) == expected
    assert memory_output(orjson.loads(from_sql)) == expected
    assert memory_output(old_style) == expected


def test_reads_are_counted_and_flushed_in_the_background(api: APIClient) -> None:
    created = _store(api, "User likes tea")
    api.get(f"/memory/memories/{created['id']}")
    api.get("/memory/memories", {"user_id": "u1"})
    api.get("/memory/relevant", {"user_id": "u1", "query": "tea"})
    assert Memory.objects.get(pk=created["id"]).access_count == 0  # nothing written per read

    flush_access_counts()

    memory = Memory.objects.get(pk=created["id"])
    assert memory.access_count == 3
    assert memory.last_accessed_at is not None


def test_flushed_counts_show_on_the_next_read(api: APIClient) -> None:
    created = _store(api, "User likes tea")
    url = f"/memory/memories/{created['id']}"
    api.get(url)
    api.get(url)

    flush_access_counts()

    assert api.get(url).json()["access_count"] == 2
