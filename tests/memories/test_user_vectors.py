from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from memories import selectors
from memories.embedding import embed_query
from memories.models import Account, Memory
from memories.selectors import MemoryFilters
from memories.user_vectors import HeldVectors, UserVectors, held_vectors, load_user_vectors, parse_copy
from memories.vectors import VectorParam
from tests.factories import AccountWithKey, bulk_memories

pytestmark = pytest.mark.django_db

FACTS = [
    "I always book a window seat when I fly",
    "User is vegetarian and avoids fish",
    "User's daughter plays the violin",
    "User works as a nurse on night shifts",
]


@pytest.fixture
def held(settings: Any) -> HeldVectors:
    """Users of three memories or more are held (the default is 2,000)."""
    settings.MEMORY = {**settings.MEMORY, "USER_VECTORS_MIN_ROWS": 3}
    return held_vectors()


def _store(api: APIClient, content: str, user_id: str = "u1", **fields: Any) -> str:
    response = api.post("/memory/memories", {"user_id": user_id, "content": content, **fields}, format="json")
    assert response.status_code == 201, response.json()
    memory_id: str = response.json()["id"]
    return memory_id


def _search(api: APIClient, query: str, user_id: str = "u1", **params: Any) -> list[str]:
    response = api.get("/memory/relevant", {"user_id": user_id, "query": query, **params})
    assert response.status_code == 200, response.json()
    return [hit["content"] for hit in response.json()["results"]]


def _owner(account: AccountWithKey, user_id: str = "u1") -> tuple[int, str, str]:
    return (account.account.id, "default", user_id)


def _load(account: Account, user_id: str, token: str = "t") -> UserVectors:
    where, params = selectors._where_sql(selectors._filtered(account, MemoryFilters(user_id=user_id)))
    return load_user_vectors(where=where, params=params, token=token)


def test_a_users_vectors_are_held_from_their_second_search_under_one_token(
    api: APIClient, account: AccountWithKey, held: HeldVectors
) -> None:
    for fact in FACTS:
        _store(api, fact)

    _search(api, "what does the user eat")
    assert held.held(_owner(account)) is None
    assert _search(api, "what instrument does the child play")[0] == "User's daughter plays the violin"
    vectors = held.held(_owner(account))

    assert vectors is not None
    assert len(vectors.ids) == len(FACTS)
    assert _search(api, "where does she like to sit on planes")[0] == "I always book a window seat when I fly"
    assert held.held(_owner(account)) is vectors


def test_the_nearest_held_rows_are_postgresqls_nearest_rows(account: AccountWithKey) -> None:
    bulk_memories(account.account, count=3_000, user_id="u1")
    vectors = _load(account.account, "u1")
    rng = np.random.default_rng(7)

    assert len(vectors.ids) == 3_000
    for _ in range(5):
        query = rng.normal(size=384).astype(np.float32)
        params: list[Any] = [account.account.id, VectorParam(query)]
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT id FROM memories_memory WHERE account_id = %s AND user_id = 'u1'"
                " ORDER BY cosine_distance(embedding, %s::halfvec) LIMIT 100",
                params,
            )
            exact = {row[0] for row in cursor.fetchall()}
        found = set(vectors.nearest(query, count=100, now=timezone.now()))
        # Both compare the same 16-bit vectors; only float rounding in the sums
        # differs, which could swap the 100th and 101st.
        assert len(found) == 100
        assert len(found & exact) >= 99


def test_writes_and_deletions_show_in_the_next_searches(
    api: APIClient, account: AccountWithKey, held: HeldVectors
) -> None:
    ids = [_store(api, fact) for fact in FACTS]
    _search(api, "what does the user eat")
    _search(api, "what instrument does the child play")
    assert held.held(_owner(account)) is not None

    _store(api, "User drives a red electric car")
    assert _search(api, "which car does the user drive")[0] == "User drives a red electric car"
    assert _search(api, "what vehicle do they own")[0] == "User drives a red electric car"
    assert len(held.held(_owner(account)).ids) == len(FACTS) + 1  # type: ignore[union-attr]

    assert api.delete(f"/memory/memories/{ids[0]}").status_code == 204
    _search(api, "tell me about travel")
    assert "I always book a window seat when I fly" not in _search(api, "where does she sit on planes")
    assert len(held.held(_owner(account)).ids) == len(FACTS)  # type: ignore[union-attr]


def test_an_expired_memory_is_never_a_candidate(api: APIClient, account: AccountWithKey) -> None:
    for fact in FACTS:
        _store(api, fact)
    soon = timezone.now() + timedelta(hours=1)
    expiring = _store(api, "User is staying at the Grand Hotel this week", expires_at=soon.isoformat())
    vectors = _load(account.account, "u1")
    query = embed_query("which hotel is the user staying at")

    before = vectors.nearest(query, count=1, now=timezone.now())
    after = vectors.nearest(query, count=10, now=soon + timedelta(seconds=1))

    assert [str(memory_id) for memory_id in before] == [expiring]
    assert len(after) == len(FACTS)
    assert expiring not in {str(memory_id) for memory_id in after}


def test_the_least_recently_searched_user_goes_first_when_the_budget_is_full(
    api: APIClient, account: AccountWithKey
) -> None:
    for user_id in ("a", "b"):
        for fact in FACTS:
            _store(api, fact, user_id=user_id)
    size = _load(account.account, "a").nbytes
    held = HeldVectors(max_bytes=size * 3 // 2)
    query = embed_query("seats")

    def search(user_id: str) -> list[Any] | None:
        return held.nearest(
            _owner(account, user_id),
            token="t",
            vector=query,
            count=2,
            now=timezone.now(),
            load=lambda: _load(account.account, user_id),
        )

    assert search("a") is None  # the first search under a token
    assert search("a") is not None
    assert search("b") is None
    assert search("b") is not None

    assert held.held(_owner(account, "a")) is None
    assert held.held(_owner(account, "b")) is not None
    assert held.nbytes == size


def test_a_user_larger_than_the_budget_is_compared_in_postgresql(api: APIClient, account: AccountWithKey) -> None:
    for fact in FACTS:
        _store(api, fact)
    held = HeldVectors(max_bytes=100)
    for _ in range(3):
        found = held.nearest(
            _owner(account),
            token="t",
            vector=embed_query("seats"),
            count=2,
            now=timezone.now(),
            load=lambda: _load(account.account, "u1"),
        )

    # The loaded vectors still answer the search that loaded them.
    assert found is not None
    assert len(found) == 2
    assert held.held(_owner(account)) is None
    assert held.nbytes == 0


def test_a_filtered_search_is_compared_in_postgresql(
    api: APIClient, account: AccountWithKey, held: HeldVectors
) -> None:
    for fact in FACTS:
        _store(api, fact)
    preferences = {"User likes jazz", "User prefers aisle seats", "User prefers green tea"}
    for preference in preferences:
        _store(api, preference, kind="preference")

    for query in ("music", "what music do they like", "songs"):
        assert set(_search(api, query, kind="preference")) == preferences

    assert held.held(_owner(account)) is None


def test_small_users_are_compared_in_postgresql(api: APIClient, account: AccountWithKey) -> None:
    for fact in FACTS:
        _store(api, fact)

    for query in ("seats", "food", "music"):
        _search(api, query)

    assert held_vectors().held(_owner(account)) is None


def test_no_budget_holds_nothing(api: APIClient, account: AccountWithKey, settings: Any) -> None:
    settings.MEMORY = {**settings.MEMORY, "USER_VECTORS_MIN_ROWS": 1, "USER_VECTORS_MAX_BYTES": 0}
    for fact in FACTS:
        _store(api, fact)

    for query in ("seats", "food", "music"):
        assert len(_search(api, query)) == len(FACTS)

    assert held_vectors().held(_owner(account)) is None


def test_other_account_never_gets_the_held_vectors_of_its_user_of_the_same_name(
    api: APIClient, other_api: APIClient, account: AccountWithKey, held: HeldVectors
) -> None:
    for fact in FACTS:
        _store(api, fact)
    for fact in ("My cat is called Miso", "I live in Lisbon", "I play chess on Sundays"):
        _store(other_api, fact)
    for query in ("seats", "food", "music"):
        _search(api, query)

    found = [_search(other_api, query) for query in ("where do I sit on planes", "what do I eat", "my pet")]

    assert held.held(_owner(account)) is not None
    assert {content for results in found for content in results} == {
        "My cat is called Miso",
        "I live in Lisbon",
        "I play chess on Sundays",
    }


def test_anything_but_a_binary_copy_is_refused() -> None:
    with pytest.raises(ValueError, match="binary COPY"):
        parse_copy(b"id,embedding\n", token="t")


def test_a_copy_with_rows_of_another_shape_is_refused(account: AccountWithKey) -> None:
    Memory.objects.create(account=account.account, user_id="u1", content="x", content_hash="x")
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy("COPY (SELECT id, id, 1::float8 FROM memories_memory) TO STDOUT (FORMAT binary)") as copy,
    ):
        data = b"".join(bytes(chunk) for chunk in copy)

    with pytest.raises(ValueError, match="COPY rows"):
        parse_copy(data, token="t")
