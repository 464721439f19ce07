"""The hot queries use the named indexes (EXPLAIN on a table big enough for the planner to care)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from memories import selectors
from memories.embedding import embed_query
from memories.models import Account
from memories.selectors import MemoryFilters
from tests.factories import AccountWithKey, bulk_memories

pytestmark = pytest.mark.django_db


@pytest.fixture
def big_table(account: AccountWithKey) -> Account:
    """6,000 rows: 3,000 of user "big", the rest spread over 100 users."""
    bulk_memories(account.account, count=6_000, user_id="big", spread_users=100)
    return account.account


def _plan(sql: str, params: list[Any]) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_list_queries_use_their_indexes(big_table: Account) -> None:
    page = selectors._filtered(big_table, MemoryFilters(user_id="user7")).order_by("-created_at", "-id")[:51]
    pinned = selectors._filtered(big_table, MemoryFilters(user_id="big", pinned=True)).order_by("-created_at")[:51]

    assert "memory_user_created" in page.explain()
    assert "memory_user_pinned" in pinned.explain()


def _search(account: Account, user_id: str) -> selectors.SearchQuerySQL:
    return selectors.search_sql(
        account=account,
        filters=MemoryFilters(user_id=user_id),
        query="window seat",
        vector=embed_query("window seat"),
        limit=10,
        now=timezone.now(),
    )


def test_search_paths_use_their_indexes(big_table: Account, settings: Any) -> None:
    settings.MEMORY = {**settings.MEMORY, "EXACT_SEARCH_MAX_ROWS": 1_000}

    small = _search(big_table, "user7")
    large = _search(big_table, "big")
    small_plan = _plan(small.sql, small.params)
    with transaction.atomic():
        selectors._configure_hnsw()
        large_plan = _plan(large.sql, large.params)

    # A small user: the B-tree on (account, namespace, user_id, ...) finds the rows, and all
    # are compared by vector: not the HNSW index, whose filter comes after its scan.
    assert small.exact
    assert re.search(r"Index Scan using memory_(user_\w+|unique_key)", small_plan), small_plan
    assert "memory_embedding_hnsw" not in small_plan
    assert "Seq Scan on memories_memory" not in small_plan
    # A large user: the HNSW index, with iterative scans.
    assert not large.exact
    assert "memory_embedding_hnsw" in large_plan
    # Keyword candidates come from the user's own posting lists, not from those
    # of every user's rows (a user of 30 rows may be read through the B-tree).
    assert "memory_user_search_vector_gin" in large_plan
    settings.MEMORY = {**settings.MEMORY, "EXACT_SEARCH_MAX_ROWS": 5_000}
    large_exact = _search(big_table, "big")
    assert large_exact.exact
    large_exact_plan = _plan(large_exact.sql, large_exact.params)
    assert "memory_user_search_vector_gin" in large_exact_plan
    assert "memory_embedding_hnsw" not in large_exact_plan
