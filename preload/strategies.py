"""What to preload: one selector per strategy, and a user's ranked preload set.

Each selector is one query that filters by account, namespace and user first
(trending: by account and namespace) and never returns an expired memory. Rows
come without their vector, full-text vector and hash (memories.records.DEFERRED):
they are what the cache stores, and 1.5 KB of vector a row is not.

Nothing here writes to Redis: the engine takes preload_set() and trending_set()
and decides keys, TTLs and the byte budget.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from memories.models import Account, Memory, Session
from memories.ranking import Score, score
from memories.records import DEFERRED
from preload.config import EffectiveConfig
from preload.options import USER_STRATEGIES, Strategy


@dataclass(frozen=True)
class Candidate:
    memory: Memory
    strategy: Strategy
    # The strategy's own measure, larger is better: recent the creation time
    # (epoch seconds), frequent and trending the access count, important the
    # importance, context the cosine similarity to the user's context.
    value: float

    @property
    def memory_id(self) -> uuid.UUID:
        return self.memory.id


@dataclass(frozen=True)
class PreloadItem:
    memory: Memory
    # Every strategy that chose it, in Strategy order: the engine files the id
    # under each strategy's key.
    strategies: tuple[Strategy, ...]
    score: Score


def _live(now: datetime) -> Q:
    return Q(expires_at__isnull=True) | Q(expires_at__gt=now)


def _user_rows(account: Account, namespace: str, user_id: str, now: datetime) -> QuerySet[Memory]:
    return Memory.objects.filter(account=account, namespace=namespace, user_id=user_id).filter(_live(now))


def _candidates(queryset: QuerySet[Memory], strategy: Strategy, value: str) -> list[Candidate]:
    rows = queryset.defer(*DEFERRED)
    return [Candidate(memory=row, strategy=strategy, value=float(_number(getattr(row, value)))) for row in rows]


def _number(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


# -- the strategies ---------------------------------------------------------------


def _recent_queryset(
    *, account: Account, namespace: str, user_id: str, days: int, limit: int, now: datetime
) -> QuerySet[Memory]:
    # The order is memory_user_created's own, so the scan stops after `limit` rows.
    return (
        _user_rows(account, namespace, user_id, now)
        .filter(created_at__gte=now - timedelta(days=days))
        .order_by("-created_at", "-id")[:limit]
    )


def recent_memories(
    *, account: Account, namespace: str, user_id: str, days: int, limit: int, now: datetime | None = None
) -> list[Candidate]:
    """The user's memories created in the last `days` days, newest first."""
    now = now or timezone.now()
    queryset = _recent_queryset(account=account, namespace=namespace, user_id=user_id, days=days, limit=limit, now=now)
    return _candidates(queryset, Strategy.RECENT, "created_at")


def _frequent_queryset(
    *, account: Account, namespace: str, user_id: str, min_access: int, limit: int, now: datetime
) -> QuerySet[Memory]:
    # No index orders a user's rows by access_count: the user's B-tree finds
    # their rows and the sort is over one user's memories only.
    return (
        _user_rows(account, namespace, user_id, now)
        .filter(access_count__gte=min_access)
        .order_by("-access_count", "-created_at", "id")[:limit]
    )


def frequent_memories(
    *, account: Account, namespace: str, user_id: str, min_access: int, limit: int, now: datetime | None = None
) -> list[Candidate]:
    """The user's memories read at least `min_access` times, most read first."""
    now = now or timezone.now()
    queryset = _frequent_queryset(
        account=account, namespace=namespace, user_id=user_id, min_access=min_access, limit=limit, now=now
    )
    return _candidates(queryset, Strategy.FREQUENT, "access_count")


def _important_queryset(
    *, account: Account, namespace: str, user_id: str, min_importance: float, limit: int, now: datetime
) -> QuerySet[Memory]:
    # Each side of the OR matches a partial index (memory_user_pinned,
    # memory_user_important when the threshold is at least 0.7), so PostgreSQL
    # reads only the qualifying rows through a BitmapOr.
    return (
        _user_rows(account, namespace, user_id, now)
        .filter(Q(pinned=True) | Q(importance__gt=min_importance))
        .order_by("-pinned", "-importance", "-created_at", "id")[:limit]
    )


def important_memories(
    *, account: Account, namespace: str, user_id: str, min_importance: float, limit: int, now: datetime | None = None
) -> list[Candidate]:
    """The user's pinned memories and those with importance above `min_importance`:
    pinned first, then by importance."""
    now = now or timezone.now()
    queryset = _important_queryset(
        account=account, namespace=namespace, user_id=user_id, min_importance=min_importance, limit=limit, now=now
    )
    return _candidates(queryset, Strategy.IMPORTANT, "importance")


def _context_sql(
    *,
    account: Account,
    namespace: str,
    user_id: str,
    sample_size: int,
    active_since: datetime | None,
    limit: int,
    now: datetime,
) -> tuple[str, list[Any]]:
    embedded = _user_rows(account, namespace, user_id, now).filter(embedding__isnull=False)
    seeds_sql, seeds_params = (
        embedded.order_by("-created_at", "-id").values("id", "embedding")[:sample_size].query.sql_with_params()
    )
    sessions = Session.objects.filter(
        account=account, namespace=namespace, user_id=user_id, summary_embedding__isnull=False
    )
    if active_since is not None:
        sessions = sessions.filter(updated_at__gte=active_since)
    session_sql, session_params = (
        sessions.order_by("-created_at").annotate(embedding=F("summary_embedding")).values("embedding")[:1]
    ).query.sql_with_params()
    scoped_sql, scoped_params = embedded.values("id", "embedding").query.sql_with_params()
    columns = ", ".join(
        f"m.{field.column}"
        for field in Memory._meta.concrete_fields
        if field.name not in DEFERRED and not field.generated
    )
    # MATERIALIZED keeps the planner from trading the user's B-tree for the
    # HNSW scan, which filters after the index and could come back short: every
    # row of the user is compared (exact, as memories.selectors does for small users).
    sql = f"""
        WITH seeds AS MATERIALIZED ({seeds_sql}),
             active_session AS ({session_sql}),
             centre AS (
                 SELECT avg(embedding) AS v
                 FROM (SELECT embedding FROM seeds UNION ALL SELECT embedding FROM active_session) AS context
             ),
             scoped AS MATERIALIZED ({scoped_sql}),
             nearest AS (
                 SELECT s.id, 1 - (s.embedding <=> c.v) AS similarity
                 FROM scoped s CROSS JOIN centre c
                 WHERE c.v IS NOT NULL AND s.id NOT IN (SELECT id FROM seeds)
                 ORDER BY s.embedding <=> c.v, s.id
                 LIMIT %s
             )
        SELECT {columns}, n.similarity
        FROM nearest n JOIN memories_memory m ON m.id = n.id
        ORDER BY n.similarity DESC, m.id
    """
    return sql, [*seeds_params, *session_params, *scoped_params, limit]


def context_memories(
    *,
    account: Account,
    namespace: str,
    user_id: str,
    limit: int,
    sample_size: int = 10,
    active_since: datetime | None = None,
    now: datetime | None = None,
) -> list[Candidate]:
    """The user's memories nearest to what they are talking about now.

    "Now" is the mean of the vectors of the user's `sample_size` newest
    embedded memories and of the summary of their newest session, if it has
    one and was updated since `active_since` (None: any session). The seeds
    themselves are left out: recent already offers them, and context is there
    to bring back older memories on the same subject. No seeds, no context.
    """
    now = now or timezone.now()
    sql, params = _context_sql(
        account=account,
        namespace=namespace,
        user_id=user_id,
        sample_size=sample_size,
        active_since=active_since,
        limit=limit,
        now=now,
    )
    return [
        Candidate(memory=row, strategy=Strategy.CONTEXT, value=float(row.similarity))  # type: ignore[attr-defined]
        for row in Memory.objects.raw(sql, params)
    ]


def _trending_queryset(
    *, account: Account, namespace: str, window_hours: int, limit: int, now: datetime
) -> QuerySet[Memory]:
    # No index serves this on purpose: one on last_accessed_at would make every
    # access-count flush update an index entry per memory read (no more HOT
    # updates; see migration memories 0006). Trending runs once an hour per
    # account and namespace; a scan of the account's rows is the cheaper side.
    return (
        Memory.objects.filter(account=account, namespace=namespace)
        .filter(_live(now))
        .filter(last_accessed_at__gte=now - timedelta(hours=window_hours), access_count__gt=0)
        .order_by("-access_count", "-last_accessed_at", "id")[:limit]
    )


def trending_memories(
    *, account: Account, namespace: str, window_hours: int, limit: int, now: datetime | None = None
) -> list[Candidate]:
    """The namespace's memories read within the last `window_hours`, most read first.

    Across all the account's users: for the account-wide trending key only,
    never for a user's own set. Reads are counted over the memory's lifetime
    (access_count): the window says which memories are still being read, not
    how often within it.
    """
    now = now or timezone.now()
    queryset = _trending_queryset(account=account, namespace=namespace, window_hours=window_hours, limit=limit, now=now)
    return _candidates(queryset, Strategy.TRENDING, "access_count")


# -- the sets -------------------------------------------------------------------


def preload_set(
    *,
    account: Account,
    namespace: str,
    user_id: str,
    config: EffectiveConfig,
    strategies: Sequence[Strategy] | None = None,
    now: datetime | None = None,
) -> list[PreloadItem]:
    """The user's memories to preload, best first, at most max_memories_per_user.

    The union of the enabled user strategies (or of `strategies`, e.g. the
    command's --strategy, limited to user strategies), each memory once with
    every strategy that chose it. Ranked by the search score of
    memories.ranking without a query (similarity and keyword 0, so recency,
    importance, frequency and pinning decide), ties to the memory more
    strategies chose, then the newest. Empty when preloading is disabled.

    One query per strategy (at most four round trips).
    """
    if not config.enabled:
        return []
    now = now or timezone.now()
    chosen = config.user_strategies if strategies is None else tuple(s for s in strategies if s in USER_STRATEGIES)
    limit = config.max_memories_per_user
    scope: dict[str, Any] = {"account": account, "namespace": namespace, "user_id": user_id, "limit": limit, "now": now}
    candidates: list[Candidate] = []
    if Strategy.RECENT in chosen:
        candidates += recent_memories(**scope, days=config.recent_days)
    if Strategy.FREQUENT in chosen:
        candidates += frequent_memories(**scope, min_access=config.frequent_min_access)
    if Strategy.IMPORTANT in chosen:
        candidates += important_memories(**scope, min_importance=config.important_min_importance)
    if Strategy.CONTEXT in chosen:
        candidates += context_memories(
            **scope,
            sample_size=config.context_sample_size,
            active_since=now - timedelta(days=config.recent_days),
        )
    return _rank(candidates, now=now)[:limit]


def trending_set(
    *, account: Account, namespace: str, config: EffectiveConfig, now: datetime | None = None
) -> list[PreloadItem]:
    """The account's trending memories for `preload:global:trending`, most read
    first (its strategy's own order: what the whole namespace reads, not one
    user's relevance). Empty unless the account's configuration enables trending."""
    if not config.trending_enabled:
        return []
    now = now or timezone.now()
    candidates = trending_memories(
        account=account,
        namespace=namespace,
        window_hours=config.trending_window_hours,
        limit=config.trending_max_memories,
        now=now,
    )
    return [
        PreloadItem(memory=candidate.memory, strategies=(Strategy.TRENDING,), score=_score(candidate.memory, now))
        for candidate in candidates
    ]


def _score(memory: Memory, now: datetime) -> Score:
    return score(
        similarity=0.0,
        keyword=0.0,
        updated_at=memory.updated_at,
        importance=memory.importance,
        access_count=memory.access_count,
        pinned=memory.pinned,
        now=now,
        weights=settings.MEMORY["WEIGHTS"],
        half_life_days=settings.MEMORY["RECENCY_HALF_LIFE_DAYS"],
    )


def _rank(candidates: Sequence[Candidate], *, now: datetime) -> list[PreloadItem]:
    memories: dict[Any, Memory] = {}
    chosen_by: dict[Any, set[Strategy]] = {}
    for candidate in candidates:
        memories.setdefault(candidate.memory_id, candidate.memory)
        chosen_by.setdefault(candidate.memory_id, set()).add(candidate.strategy)
    order = list(Strategy)
    items = [
        PreloadItem(
            memory=memory,
            strategies=tuple(sorted(chosen_by[memory_id], key=order.index)),
            score=_score(memory, now),
        )
        for memory_id, memory in memories.items()
    ]
    items.sort(
        key=lambda item: (
            -item.score.total,
            -len(item.strategies),
            -item.memory.created_at.timestamp(),
            str(item.memory.id),
        )
    )
    return items
