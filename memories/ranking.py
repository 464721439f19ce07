"""The relevance score of search: one number in 0..1 made of six parts.

Each part is in 0..1; the total is their weighted mean (weights from
settings.MEMORY["WEIGHTS"], normalised so they need not sum to one):

- similarity: cosine similarity of query and memory vectors, below zero as zero;
  0 for a memory still waiting for its vector.
- keyword: PostgreSQL's ts_rank_cd of the query's words (any of them) in the
  content, normalised as rank / (rank + 1).
- recency: 0.5 ** (age / half-life), the age counted from the last update.
- importance: as stored (0..1).
- frequency: access_count / (access_count + 10): the first reads count most.
- pinned: 1 when pinned.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

PARTS = ("similarity", "keyword", "recency", "importance", "frequency", "pinned")
_FREQUENCY_SATURATION = 10.0


@dataclass(frozen=True)
class Score:
    total: float
    parts: dict[str, float]


def score(
    *,
    similarity: float | None,
    keyword: float,
    updated_at: datetime,
    importance: float,
    access_count: int,
    pinned: bool,
    now: datetime,
    weights: Mapping[str, float],
    half_life_days: float,
) -> Score:
    age_days = max((now - updated_at).total_seconds(), 0.0) / 86_400
    parts = {
        "similarity": max(similarity or 0.0, 0.0),
        "keyword": min(max(keyword, 0.0), 1.0),
        "recency": 0.5 ** (age_days / half_life_days),
        "importance": importance,
        "frequency": access_count / (access_count + _FREQUENCY_SATURATION),
        "pinned": 1.0 if pinned else 0.0,
    }
    weight_sum = sum(weights[name] for name in PARTS) or 1.0
    total = sum(weights[name] * parts[name] for name in PARTS) / weight_sum
    return Score(total=round(total, 6), parts={name: round(value, 6) for name, value in parts.items()})


def score_sql(
    *,
    updated_at: str,
    importance: str,
    access_count: str,
    pinned: str,
    now: str,
    weights: Mapping[str, float],
    half_life_days: float,
    similarity: str | None = None,
    keyword: str | None = None,
) -> str:
    """score(...).total as a SQL expression over the given column expressions,
    for ranking many rows in the database instead of in Python: preloading
    (without a query: similarity and keyword count 0) and a search's
    candidates. `now` is a SQL expression or placeholder of the same instant
    score() would get. The parts are added in score()'s order with the same
    float8 operations, so the two agree but for the last rounding
    (tests/memories/test_ranking.py)."""
    weight_sum = sum(weights[name] for name in PARTS) or 1.0
    age_days = f"greatest(extract(epoch FROM ({now} - {updated_at}))::float8, 0) / 86400.0"
    parts = {
        "similarity": None if similarity is None else f"greatest(coalesce({similarity}, 0.0)::float8, 0.0)",
        "keyword": None if keyword is None else f"least(greatest({keyword}::float8, 0.0), 1.0)",
        "recency": f"power(0.5, {age_days} / {float(half_life_days)!r})",
        "importance": f"{importance}::float8",
        "frequency": f"({access_count}::float8 / ({access_count}::float8 + {_FREQUENCY_SATURATION!r}))",
        "pinned": f"(CASE WHEN {pinned} THEN 1.0 ELSE 0.0 END)",
    }
    total = " + ".join(f"{float(weights[name])!r} * {sql}" for name, sql in parts.items() if sql is not None)
    return f"round(((({total}) / {float(weight_sum)!r}))::numeric, 6)::float8"
