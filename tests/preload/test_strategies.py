"""The strategies pick the right memories of the right user only, and the preload set ranks and cuts their union."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from memories.models import Account, Memory, Session
from memories.ranking import Score, score
from memories.records import memory_from_record, memory_to_record, record_json_sql
from preload import strategies
from preload.config import EffectiveConfig, resolve_config
from preload.options import USER_STRATEGIES, Strategy
from preload.strategies import (
    Candidate,
    context_memories,
    frequent_memories,
    important_memories,
    preload_set,
    recent_memories,
    trending_memories,
    trending_set,
)
from tests.factories import AccountWithKey, bulk_memories, make_memory

pytestmark = pytest.mark.django_db

DAY = timedelta(days=1)


def _contents(candidates: Iterable[Candidate]) -> list[str]:
    return [candidate.record["content"] for candidate in candidates]


def _strangers(account: Account, other: Account, content: str, **fields: Any) -> None:
    """The same memory for another user, in another namespace and in another account: never to be chosen."""
    make_memory(account, f"{content} (u2)", user_id="u2", **fields)
    make_memory(account, f"{content} (travel)", user_id="u1", namespace="travel", **fields)
    make_memory(other, f"{content} (globex)", user_id="u1", **fields)


def _scope(account: Account) -> dict[str, Any]:
    return {"account": account, "namespace": "default", "user_id": "u1"}


def test_recent_is_the_users_newest_within_the_window(account: AccountWithKey, other_account: AccountWithKey) -> None:
    acme, now = account.account, timezone.now()
    make_memory(acme, "two days old", created_at=now - 2 * DAY)
    make_memory(acme, "one hour old", created_at=now - timedelta(hours=1))
    make_memory(acme, "ten days old", created_at=now - 10 * DAY)
    make_memory(acme, "expired", created_at=now - timedelta(minutes=5), expires_at=now - timedelta(seconds=1))
    make_memory(acme, "expires later", created_at=now - 3 * DAY, expires_at=now + DAY)
    _strangers(acme, other_account.account, "fresh", created_at=now)

    picked = recent_memories(**_scope(acme), days=7, limit=10)
    limited = recent_memories(**_scope(acme), days=7, limit=1)

    assert _contents(picked) == ["one hour old", "two days old", "expires later"]
    assert {candidate.strategy for candidate in picked} == {Strategy.RECENT}
    assert _contents(limited) == ["one hour old"]
    # What the cache stores: no vector, no full-text vector.
    assert not {"embedding", "search_vector"} & set(picked[0].record)


def test_frequent_is_the_most_read_above_the_threshold(account: AccountWithKey, other_account: AccountWithKey) -> None:
    acme, now = account.account, timezone.now()
    make_memory(acme, "read 5 times", access_count=5)
    make_memory(acme, "read 40 times", access_count=40)
    make_memory(acme, "read 4 times", access_count=4)
    make_memory(acme, "read 90 times but expired", access_count=90, expires_at=now - DAY)
    _strangers(acme, other_account.account, "read 1000 times", access_count=1000)

    picked = frequent_memories(**_scope(acme), min_access=5, limit=10)

    assert _contents(picked) == ["read 40 times", "read 5 times"]
    assert [candidate.value for candidate in picked] == [40.0, 5.0]


def test_important_is_pinned_or_above_the_threshold(account: AccountWithKey, other_account: AccountWithKey) -> None:
    acme, now = account.account, timezone.now()
    make_memory(acme, "pinned trivia", pinned=True, importance=0.1)
    make_memory(acme, "vital", importance=0.95)
    make_memory(acme, "notable", importance=0.8)
    make_memory(acme, "at the threshold", importance=0.7)
    make_memory(acme, "ordinary", importance=0.5)
    make_memory(acme, "vital but expired", importance=1.0, pinned=True, expires_at=now - DAY)
    _strangers(acme, other_account.account, "stranger's vital", importance=1.0, pinned=True)

    picked = important_memories(**_scope(acme), min_importance=0.7, limit=10)
    stricter = important_memories(**_scope(acme), min_importance=0.9, limit=10)

    assert _contents(picked) == ["pinned trivia", "vital", "notable"]
    assert _contents(stricter) == ["pinned trivia", "vital"]


def _unit(*weights: float) -> np.ndarray:
    vector = np.zeros(384, dtype=np.float32)
    vector[: len(weights)] = weights
    return vector / np.linalg.norm(vector)


def test_context_is_nearest_to_the_newest_memories_and_the_active_session(
    account: AccountWithKey, other_account: AccountWithKey
) -> None:
    """Axis-aligned vectors make the expected order exact: the seed is axis 0."""
    acme, now = account.account, timezone.now()
    make_memory(acme, "seed", embedding=_unit(1), created_at=now)
    make_memory(acme, "near the seed", embedding=_unit(1, 0.5), created_at=now - 5 * DAY)
    make_memory(acme, "unrelated", embedding=_unit(0, 1), created_at=now - 6 * DAY)
    make_memory(acme, "session topic", embedding=_unit(0, 0, 1), created_at=now - 7 * DAY)
    make_memory(acme, "not embedded yet", created_at=now - 8 * DAY)
    make_memory(
        acme, "near but expired", embedding=_unit(1, 0.1), created_at=now - DAY, expires_at=now - timedelta(seconds=1)
    )
    _strangers(acme, other_account.account, "stranger's twin", embedding=_unit(1, 0.01), created_at=now - 2 * DAY)
    since = now - DAY

    without_session = context_memories(**_scope(acme), limit=10, sample_size=1, active_since=since)
    session = Session.objects.create(
        account=acme, external_id="s1", user_id="u1", summary="about axis 2", summary_embedding=_unit(0, 0, 1)
    )
    with_session = context_memories(**_scope(acme), limit=10, sample_size=1, active_since=since)
    Session.objects.filter(pk=session.pk).update(updated_at=now - 2 * DAY)
    stale_session = context_memories(**_scope(acme), limit=10, sample_size=1, active_since=since)

    # The seed itself is left out; the unembedded and expired never come back.
    assert _contents(without_session)[:1] == ["near the seed"]
    assert set(_contents(without_session)) == {"near the seed", "unrelated", "session topic"}
    assert _contents(with_session)[:1] == ["session topic"]
    assert _contents(stale_session)[:1] == ["near the seed"]
    assert without_session[0].value == pytest.approx(1 / np.sqrt(1.25), abs=1e-4)


def test_context_without_any_embedded_memory_is_empty(account: AccountWithKey) -> None:
    make_memory(account.account, "pending")

    assert context_memories(**_scope(account.account), limit=10) == []


def test_trending_spans_the_accounts_users_within_the_window(
    account: AccountWithKey, other_account: AccountWithKey
) -> None:
    acme, now = account.account, timezone.now()
    recently = now - timedelta(hours=1)
    make_memory(acme, "u1's hit", user_id="u1", access_count=30, last_accessed_at=recently)
    make_memory(acme, "u2's hit", user_id="u2", access_count=50, last_accessed_at=recently)
    make_memory(acme, "old favourite", user_id="u3", access_count=500, last_accessed_at=now - 3 * DAY)
    make_memory(
        acme,
        "expired hit",
        user_id="u3",
        access_count=99,
        last_accessed_at=recently,
        expires_at=now - timedelta(seconds=1),
    )
    make_memory(acme, "never read", user_id="u3")
    make_memory(acme, "travel hit", user_id="u1", namespace="travel", access_count=80, last_accessed_at=recently)
    make_memory(other_account.account, "globex hit", access_count=900, last_accessed_at=recently)

    picked = trending_memories(account=acme, namespace="default", window_hours=24, limit=10)

    assert _contents(picked) == ["u2's hit", "u1's hit"]
    assert _contents(trending_memories(account=acme, namespace="default", window_hours=96, limit=1)) == [
        "old favourite"
    ]


def _score_without_query(memory: Memory, now: datetime) -> Score:
    return score(
        similarity=None,
        keyword=0.0,
        updated_at=memory.updated_at,
        importance=memory.importance,
        access_count=memory.access_count,
        pinned=memory.pinned,
        now=now,
        weights=settings.MEMORY["WEIGHTS"],
        half_life_days=settings.MEMORY["RECENCY_HALF_LIFE_DAYS"],
    )


def _config(account: Account, **changes: Any) -> EffectiveConfig:
    return dataclasses.replace(resolve_config(account_id=account.id, namespace="default", user_id="u1"), **changes)


def test_preload_set_is_the_deduplicated_ranked_union_cut_at_the_maximum(
    account: AccountWithKey, other_account: AccountWithKey, django_assert_num_queries: Callable[..., Any]
) -> None:
    acme, now = account.account, timezone.now()
    make_memory(acme, "pinned and recent", pinned=True, importance=0.9, created_at=now - DAY, updated_at=now - DAY)
    make_memory(acme, "recent only", importance=0.2, created_at=now - DAY, updated_at=now - DAY)
    make_memory(
        acme, "frequent only", importance=0.2, access_count=20, created_at=now - 60 * DAY, updated_at=now - 60 * DAY
    )
    make_memory(acme, "old and ordinary", importance=0.2, created_at=now - 60 * DAY, updated_at=now - 60 * DAY)
    make_memory(acme, "recent but expired", pinned=True, created_at=now - DAY, expires_at=now - timedelta(seconds=1))
    _strangers(acme, other_account.account, "stranger", pinned=True, importance=1.0, access_count=1000, created_at=now)

    config = _config(acme)
    with django_assert_num_queries(1):
        items = preload_set(**_scope(acme), config=config, now=now)
    cut = preload_set(**_scope(acme), config=_config(acme, max_memories_per_user=2), now=now)

    # Recency outweighs 20 reads two months ago (weights of memories.ranking).
    assert [item.record["content"] for item in items] == ["pinned and recent", "recent only", "frequent only"]
    assert [item.strategies for item in items] == [
        (Strategy.RECENT, Strategy.IMPORTANT),
        (Strategy.RECENT,),
        (Strategy.FREQUENT,),
    ]
    # The score of a search without a query.
    assert [item.score for item in items] == [
        _score_without_query(Memory.objects.get(id=item.memory_id), now).total for item in items
    ]
    assert [item.record["content"] for item in cut] == ["pinned and recent", "recent only"]


def test_preload_set_follows_enabled_and_the_chosen_strategies(account: AccountWithKey) -> None:
    acme = account.account
    make_memory(acme, "pinned", pinned=True, created_at=timezone.now() - 30 * DAY)
    make_memory(acme, "recent")
    only_important = _config(acme, strategies=(Strategy.IMPORTANT, Strategy.TRENDING))

    assert preload_set(**_scope(acme), config=_config(acme, enabled=False)) == []
    assert [item.record["content"] for item in preload_set(**_scope(acme), config=only_important)] == ["pinned"]
    only_recent = preload_set(**_scope(acme), config=_config(acme), strategies=[Strategy.RECENT])
    assert [item.record["content"] for item in only_recent] == ["recent"]


def test_trending_set_needs_trending_enabled(account: AccountWithKey) -> None:
    acme = account.account
    make_memory(acme, "hit", access_count=3, last_accessed_at=timezone.now())

    on = trending_set(account=acme, namespace="default", config=_config(acme))
    off = trending_set(account=acme, namespace="default", config=_config(acme, strategies=(Strategy.RECENT,)))

    assert [(item.record["content"], item.strategy) for item in on] == [("hit", Strategy.TRENDING)]
    assert off == []


# -- query plans --------------------------------------------------------------------------


@pytest.fixture
def big_table(account: AccountWithKey) -> Account:
    """6,000 rows: 3,000 of user "big", the rest spread over 100 users."""
    bulk_memories(account.account, count=6_000, user_id="big", spread_users=100)
    return account.account


def _explain(sql: str, params: dict[str, Any]) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


def _user(user_id: str, strategy: Strategy, now: datetime) -> strategies._UserParams:
    return strategies._params(user_id, _config_defaults(), [strategy], now)


def _config_defaults() -> EffectiveConfig:
    return resolve_config(account_id=0, namespace="default", user_id="nobody")


def test_user_strategies_use_the_users_indexes(big_table: Account) -> None:
    now = timezone.now()
    scope: dict[str, Any] = {"account": big_table, "namespace": "default", "now": now}

    def plan(strategy: Strategy, user_id: str) -> str:
        return _explain(*strategies._strategy_query(strategy, user=_user(user_id, strategy, now), **scope))

    # A typical user: 30 of the 6,000 rows. ("big" holds half the table, where
    # reading it all is the planner's right choice for an unindexed order.)
    recent, important = plan(Strategy.RECENT, "big"), plan(Strategy.IMPORTANT, "big")
    frequent, context, big_context = (
        plan(Strategy.FREQUENT, "user7"),
        plan(Strategy.CONTEXT, "user7"),
        plan(Strategy.CONTEXT, "big"),
    )
    users = [strategies._params(f"user{n}", _config_defaults(), USER_STRATEGIES, now) for n in range(1, 51)]
    batch = _explain(*strategies._sets_query(users=users, **scope))

    assert "memory_user_created" in recent
    assert "memory_user_pinned" in important
    assert re.search(r"memory_user_important|memory_user_importance", important), important
    for each in (frequent, context, batch):
        # Any B-tree that starts with (account, namespace, user_id), the upsert key's included.
        assert re.search(r"(Index (Only )?Scan using|Bitmap Index Scan on) memory_(user_\w+|unique_key)", each), each
        assert "Seq Scan on memories_memory" not in each, each
    # Exact search over the user's rows, never the post-filtered HNSW scan.
    for each in (context, big_context, batch):
        assert "memory_embedding_hnsw" not in each


def test_a_sets_record_encodes_as_the_memorys_own_record(account: AccountWithKey) -> None:
    memory = make_memory(account.account, "recent", metadata={"city": "Lyon", "n": [1, 2]}, tags=["a"])

    (item,) = preload_set(**_scope(account.account), config=_config(account.account))

    # Read back as the read path reads it, it is the memory itself.
    assert memory_to_record(memory_from_record(item.record)) == memory_to_record(Memory.objects.get(id=memory.id))


@pytest.mark.parametrize("microsecond", [0, 1, 500_000])
def test_a_record_made_by_sql_is_the_record_python_makes(account: AccountWithKey, microsecond: int) -> None:
    """Cached reads answer with a record's timestamps as they are: PostgreSQL must write them as Python does."""
    when = datetime(2026, 3, 4, 5, 6, 7, microsecond, tzinfo=timezone.get_fixed_timezone(120))
    memory = make_memory(account.account, "recent", metadata={"city": "Lyon"}, tags=["a"], expires_at=when)
    Memory.objects.filter(pk=memory.pk).update(created_at=when, last_accessed_at=when)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {record_json_sql('m')} FROM memories_memory m WHERE m.id = %s", [memory.id])
        (text,) = cursor.fetchone()

    assert orjson.loads(text) == memory_to_record(Memory.objects.get(id=memory.id))
