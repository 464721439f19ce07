from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from django.conf import settings
from django.contrib.postgres.search import SearchQuery
from django.db import connection
from django.db.models.sql import Query
from django.utils import timezone
from rest_framework.test import APIClient

from memories import selectors
from memories.cache import tiered_cache
from memories.embedding import embed_query
from memories.models import Memory, content_hash
from memories.ranking import score
from memories.records import memory_to_record
from memories.selectors import MemoryFilters
from memories.vectors import VectorParam
from tests.conftest import SpyEmbedder, spy_redis_commands
from tests.factories import AccountWithKey, bulk_memories

pytestmark = pytest.mark.django_db

FACTS = [
    "I always book a window seat when I fly",
    "User is vegetarian and avoids fish",
    "User's daughter plays the violin",
    "User works as a nurse on night shifts",
    "User is learning Japanese for a trip to Kyoto",
    "User prefers emails over phone calls",
]


def _store(api: APIClient, content: str, user_id: str = "u1", **fields: Any) -> str:
    response = api.post("/memory/memories", {"user_id": user_id, "content": content, **fields}, format="json")
    assert response.status_code == 201, response.json()
    memory_id: str = response.json()["id"]
    return memory_id


def test_seat_question_finds_the_seat_memory_and_never_another_users(api: APIClient) -> None:
    for fact in FACTS:
        _store(api, fact, user_id="alice")
    _store(api, "My cat is called Miso", user_id="bob")

    response = api.get("/memory/relevant", {"user_id": "alice", "query": "where does she like to sit on planes"})

    assert response.status_code == 200
    results = response.json()["results"]
    assert results[0]["content"] == "I always book a window seat when I fly"
    assert all(hit["user_id"] == "alice" for hit in results)
    assert "My cat is called Miso" not in {hit["content"] for hit in results}


def test_each_hit_has_its_score_and_parts(api: APIClient) -> None:
    _store(api, "User is vegetarian and avoids fish", importance=0.9, pinned=True)

    hit = api.post("/memory/relevant", {"user_id": "u1", "query": "vegetarian food"}, format="json").json()["results"][
        0
    ]

    assert set(hit["score_parts"]) == {"similarity", "keyword", "recency", "importance", "frequency", "pinned"}
    assert hit["score_parts"]["pinned"] == 1.0
    assert hit["score_parts"]["importance"] == 0.9
    assert hit["score_parts"]["keyword"] > 0
    assert 0 < hit["score"] <= 1


def test_min_score_and_limit(api: APIClient) -> None:
    for fact in FACTS:
        _store(api, fact)

    limited = api.get("/memory/relevant", {"user_id": "u1", "query": "flying", "limit": "2"}).json()["results"]
    strict = api.get("/memory/relevant", {"user_id": "u1", "query": "flying", "min_score": "0.99"}).json()["results"]

    assert len(limited) == 2
    assert strict == []


def test_filters_apply_to_search(api: APIClient) -> None:
    _store(api, "User likes window seats", tags=["travel"])
    _store(api, "User likes aisle seats on trains", tags=["rail"])

    results = api.get("/memory/relevant", {"user_id": "u1", "query": "seats", "tags": "rail"}).json()["results"]

    assert [hit["content"] for hit in results] == ["User likes aisle seats on trains"]


def test_memory_without_vector_is_found_by_keyword(api: APIClient, account: AccountWithKey) -> None:
    Memory.objects.create(
        account=account.account, user_id="u1", content="Parking spot is B12", content_hash=content_hash("x")
    )

    results = api.get("/memory/relevant", {"user_id": "u1", "query": "parking"}).json()["results"]

    assert [hit["content"] for hit in results] == ["Parking spot is B12"]
    assert results[0]["score_parts"]["similarity"] == 0
    assert results[0]["embedding"] is None


@pytest.mark.parametrize("exact_max_rows", [10_000, 0], ids=["exact", "hnsw"])
def test_both_search_paths_return_the_right_memory(
    api: APIClient, account: AccountWithKey, settings: Any, exact_max_rows: int
) -> None:
    settings.MEMORY = {**settings.MEMORY, "EXACT_SEARCH_MAX_ROWS": exact_max_rows}
    bulk_memories(account.account, count=2_000, user_id="u1")
    target = _store(api, "I always book a window seat when I fly")

    filters = MemoryFilters(user_id="u1")
    hits = selectors.memory_search(
        account=account.account, filters=filters, query="window seat on planes", limit=5
    ).hits

    assert hits[0].record["id"] == target
    assert selectors._uses_exact_search(selectors._filtered(account.account, filters)) is (exact_max_rows > 0)


def test_hnsw_path_finds_a_small_users_memories_among_a_large_table(
    api: APIClient, account: AccountWithKey, settings: Any
) -> None:
    """pgvector filters after the index scan: without iterative scans this user's
    rows would be lost among the other user's nearer neighbours."""
    settings.MEMORY = {**settings.MEMORY, "EXACT_SEARCH_MAX_ROWS": 0}
    bulk_memories(account.account, count=3_000, user_id="crowd")
    wanted = {_store(api, fact, user_id="small") for fact in FACTS}

    hits = selectors.memory_search(
        account=account.account, filters=MemoryFilters(user_id="small"), query="something", limit=10
    ).hits

    assert {hit.record["id"] for hit in hits} == wanted


def test_query_embeddings_are_cached(api: APIClient, spy_embedder: SpyEmbedder) -> None:
    _store(api, "User prefers tea")
    stored_calls = spy_embedder.calls

    for _ in range(3):
        api.get("/memory/relevant", {"user_id": "u1", "query": "a hot drink"})

    assert spy_embedder.calls - stored_calls == 1


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Each count of a user's rows that picks exact or HNSW search, and its answer."""
    answers: list[bool] = []
    count = selectors._uses_exact_search

    def counting(scoped: Any) -> bool:
        answers.append(count(scoped))
        return answers[-1]

    monkeypatch.setattr(selectors, "_uses_exact_search", counting)
    return answers


def test_the_exact_or_hnsw_choice_is_counted_once_per_search_ttl_not_per_write(
    api: APIClient, account: AccountWithKey, settings: Any, counted: list[bool]
) -> None:
    settings.MEMORY = {**settings.MEMORY, "EXACT_SEARCH_MAX_ROWS": 2}
    settings.MEMORY_CACHE = {**settings.MEMORY_CACHE, "SEARCH_TTL": 1.0}
    _store(api, FACTS[0])
    _store(api, FACTS[1])
    filters = MemoryFilters(user_id="u1")
    vector = np.ones(384, dtype=np.float32) / np.sqrt(384)

    def search(query: str) -> selectors.SearchQuerySQL:
        return selectors.search_sql(
            account=account.account, filters=filters, query=query, vector=vector, limit=5, now=timezone.now()
        )

    for query in ("seats", "food", "music"):
        assert search(query).exact is True
    # A write does not bring the count back: the answer only picks the faster way.
    _store(api, FACTS[2])
    assert search("seats").exact is True
    assert counted == [True]

    time.sleep(1.1)

    assert search("seats").exact is False
    assert counted == [True, False]


def test_a_user_who_shrank_since_the_choice_is_compared_row_by_row(
    api: APIClient, settings: Any, counted: list[bool]
) -> None:
    settings.MEMORY = {**settings.MEMORY, "EXACT_SEARCH_MAX_ROWS": 2}
    ids = [_store(api, fact) for fact in FACTS[:3]]
    assert len(api.get("/memory/relevant", {"user_id": "u1", "query": "seats", "limit": "2"}).json()["results"]) == 2
    for memory_id in ids[1:]:
        assert api.delete(f"/memory/memories/{memory_id}").status_code == 204

    response = api.get("/memory/relevant", {"user_id": "u1", "query": "which seat on a plane", "limit": "2"})

    # HNSW came back with fewer rows than asked for: counted again, and searched exactly.
    assert counted == [False, True]
    assert [hit["id"] for hit in response.json()["results"]] == [ids[0]]


def test_a_hits_record_is_the_memorys_record(api: APIClient, account: AccountWithKey) -> None:
    memory_id = _store(
        api,
        FACTS[0],
        tags=["travel", "seats"],
        metadata={"source": "chat", "nested": {"n": 1}},
        key="seat",
        category="travel",
        ttl_seconds=3600,
    )

    (hit,) = selectors.memory_search(
        account=account.account, filters=MemoryFilters(user_id="u1"), query="window seat", limit=5
    ).hits

    assert hit.record == memory_to_record(Memory.objects.get(pk=memory_id))
    assert hit.record["metadata"] == {"source": "chat", "nested": {"n": 1}}


@pytest.mark.parametrize(
    "query",
    [
        "what does Zoe's sister think about the school play in Seoul",
        "Café crème: 3 x2, don't être naïve",
        "window-seat OR aisle or ORANGE",
        "or and not the",
        "or",
        "!!",
    ],
)
def test_keyword_query_is_any_of_the_words_stemmed(query: str) -> None:
    """The one websearch_to_tsquery means what an OR of plainto_tsquery per word does."""
    words = "".join(c if c.isalnum() else " " for c in query).split()
    any_word = SearchQuery(words[0], search_type="plain", config="english") if words else None
    for word in words[1:]:
        any_word = any_word | SearchQuery(word, search_type="plain", config="english")  # type: ignore[operator]

    def as_text(sql: str, params: Sequence[Any]) -> str:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT ({sql})::text", params)
            text: str = cursor.fetchone()[0]
        return text

    keyword = selectors._keyword_tsquery(query)
    expected = ""
    if any_word is not None:
        compiler = Query(Memory).get_compiler(connection=connection)
        expected = as_text(*any_word.resolve_expression(Query(Memory)).as_sql(compiler, connection))
    # None: no word to match (a query of "or" alone, which matches nothing either way).
    assert ("" if keyword is None else as_text(*keyword)) == expected


def test_the_hits_are_the_best_of_every_candidate_by_score(account: AccountWithKey) -> None:
    # Candidates are ranked in PostgreSQL (ranking.score_sql) and only the best
    # are sent; every row of this user is a candidate, so the hits must be the
    # best of all of them by score() itself.
    bulk_memories(account.account, count=90, user_id="u1")
    query, limit = "memory number 7", 5
    vector = embed_query(query)
    tsquery_sql, tsquery_params = selectors._keyword_tsquery(query) or ("", [])
    params: list[Any] = [VectorParam(vector), *tsquery_params]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, 1 - (embedding <=> %s::halfvec), ts_rank_cd(search_vector, {tsquery_sql}, 32), updated_at,"
            " importance, access_count, pinned FROM memories_memory WHERE user_id = 'u1'",
            params,
        )
        rows = cursor.fetchall()
    now = timezone.now()

    def total(row: tuple[Any, ...]) -> float:
        _, similarity, keyword, updated_at, importance, access_count, pinned = row
        return score(
            similarity=similarity,
            keyword=float(keyword),
            updated_at=updated_at,
            importance=importance,
            access_count=access_count,
            pinned=pinned,
            now=now,
            weights=settings.MEMORY["WEIGHTS"],
            half_life_days=settings.MEMORY["RECENCY_HALF_LIFE_DAYS"],
        ).total

    expected = [str(row[0]) for row in sorted(rows, key=lambda row: (-total(row), str(row[0])))[:limit]]

    hits = selectors._memory_search_db(
        account=account.account, filters=MemoryFilters(user_id="u1"), query=query, limit=limit, min_score=0.0
    )

    assert [hit.record["id"] for hit in hits] == expected


def test_a_new_query_needs_one_redis_read(
    api: APIClient, account: AccountWithKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The query's vector and the exact-or-HNSW choice ride with the lookup of
    # the results (cache.prefetch): a worker that has neither in its own cache
    # (here: the choice made by another worker) makes no round trip for them.
    for fact in FACTS:
        _store(api, fact)
    assert api.get("/memory/relevant", {"user_id": "u1", "query": "seats"}).status_code == 200
    tiered_cache().local.delete(selectors._search_path_key(account.account, MemoryFilters(user_id="u1")))
    commands = spy_redis_commands(monkeypatch)

    response = api.get("/memory/relevant", {"user_id": "u1", "query": "which seat on a plane"})

    assert response.status_code == 200
    assert response.json()["results"][0]["content"] == FACTS[0]
    # The lookup (a script: the user's token, the results, the query's vector),
    # then the query's vector and the results stored.
    assert [name for name in commands if name != "HINCRBY"] == ["EVALSHA", "SET", "SET"], commands
