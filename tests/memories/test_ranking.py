from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from memories.ranking import score, score_sql

pytestmark = pytest.mark.django_db

WEIGHTS = {"similarity": 0.55, "keyword": 0.15, "recency": 0.1, "importance": 0.1, "frequency": 0.05, "pinned": 0.05}
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Row:
    similarity: float | None
    keyword: float
    updated_at: datetime
    importance: float
    access_count: int
    pinned: bool


def _sql_total(row: Row, *, with_query: bool) -> float:
    expression = score_sql(
        similarity="%(similarity)s::float8" if with_query else None,
        keyword="%(keyword)s::real" if with_query else None,
        updated_at="%(updated_at)s",
        importance="%(importance)s::float8",
        access_count="%(access_count)s::int",
        pinned="%(pinned)s",
        now="%(now)s",
        weights=WEIGHTS,
        half_life_days=30.0,
    )
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {expression}", {**asdict(row), "now": NOW})
        (total,) = cursor.fetchone()
    return float(total)


def _python_total(row: Row) -> float:
    with connection.cursor() as cursor:
        # The search hands score() ts_rank_cd's value, a float4.
        cursor.execute("SELECT %s::real::float8", [row.keyword])
        (keyword,) = cursor.fetchone()
    return score(
        similarity=row.similarity,
        keyword=float(keyword),
        updated_at=row.updated_at,
        importance=row.importance,
        access_count=row.access_count,
        pinned=row.pinned,
        now=NOW,
        weights=WEIGHTS,
        half_life_days=30.0,
    ).total


def test_score_sql_agrees_with_score() -> None:
    # The search ranks its candidates with score_sql and reports score(): the two must agree.
    rng = random.Random(7)
    for _ in range(200):
        row = Row(
            similarity=rng.choice([None, -0.2, rng.uniform(-1, 1)]),
            keyword=rng.choice([0.0, rng.random()]),
            updated_at=NOW - timedelta(seconds=rng.uniform(0, 400 * 86_400)),
            importance=rng.random(),
            access_count=rng.randrange(0, 500),
            pinned=rng.random() < 0.2,
        )
        assert _sql_total(row, with_query=True) == pytest.approx(_python_total(row), abs=1e-6)


def test_score_sql_without_a_query_counts_similarity_and_keyword_as_zero() -> None:
    row = Row(
        similarity=None, keyword=0.0, updated_at=NOW - timedelta(days=30), importance=0.5, access_count=10, pinned=True
    )
    assert _sql_total(row, with_query=False) == pytest.approx(_python_total(row), abs=1e-6)
