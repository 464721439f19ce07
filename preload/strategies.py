"""What to preload: one SQL selector per strategy, and users' ranked preload sets.

Each strategy is a LATERAL subquery over one user's rows (alias `m`, correlated
to a row `u` of the users being preloaded, which carries their configuration):
it filters by account, namespace and user first, so it walks that user's
B-tree, never returns an expired memory, and stops after the user's limit.
preload_sets() joins every enabled strategy of a whole batch of users in one
statement, ranks the union by the core score in SQL and cuts each user's set
at max_memories_per_user: preloading 10,000 users is 20 queries, not 40,000,
and no Memory instance is built (a plain record, as the cache stores it).

Rows come without their vector, full-text vector and hash
(memories.records.DEFERRED): 0.8 KB of vector a row is not what a cache holds.

Nothing here writes to Redis: the engine takes the sets and decides keys,
TTLs and the byte budget.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.db import connection
from django.utils import timezone

from memories.cache import TieredCache, generation_prefix, memory_key_sql
from memories.models import Account, Memory, Session
from memories.ranking import score_sql
from memories.records import record_json_sql
from preload.config import EffectiveConfig
from preload.options import USER_STRATEGIES, Strategy


@dataclass(frozen=True)
class Candidate:
    """One strategy's pick."""

    memory_id: uuid.UUID
    # The memory's cache record as JSON (memories.records.record_json_sql).
    record_json: str
    strategy: Strategy
    # The strategy's own measure, larger is better: recent the creation time
    # (epoch seconds), frequent and trending the access count, important the
    # importance, context the cosine similarity to the user's context.
    value: float

    @property
    def record(self) -> dict[str, Any]:
        return orjson.loads(self.record_json)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class PreloadItem:
    memory_id: str
    expires_at: datetime | None
    # The memory's L2 entry, as memories.selectors would write it under the
    # user's generation token, marked as preloaded; its size in bytes with the key.
    key: str
    entry: str
    size: int
    # The record inside the entry (memories.records.record_json_sql): a
    # preloaded list page is made of these.
    record_json: str
    # Every strategy that chose it, in Strategy order: the engine files the id
    # under each strategy's key.
    strategies: tuple[Strategy, ...]
    # The core relevance score without a query (memories.ranking).
    score: float

    @property
    def record(self) -> dict[str, Any]:
        return orjson.loads(self.record_json)  # type: ignore[no-any-return]


def preload_entry(prefix: str, record_json: str) -> str:
    """The L2 entry of a memory by id (memories.selectors), after its user's
    generation_prefix, marked as preloaded: a read that finds the mark counts
    as a preload hit."""
    return f'{prefix}"memory":{record_json},"preloaded":true}}'


# -- the strategies ---------------------------------------------------------------

_MEMORY = Memory._meta.db_table
_SESSION = Session._meta.db_table
# The user's live rows: the leading columns of every per-user B-tree.
_USER_ROWS = (
    "m.account_id = %(account)s AND m.namespace = %(namespace)s AND m.user_id = u.user_id"
    " AND (m.expires_at IS NULL OR m.expires_at > %(now)s)"
)
_BIT = {strategy: 1 << index for index, strategy in enumerate(Strategy)}


@dataclass(frozen=True)
class _Selector:
    # A subquery aliased `m`: the user's chosen rows, best first, at most u.lim.
    rows: str
    # The strategy's measure (Candidate.value) and order, over `m`.
    value: str
    order: str


# Where each picked row is: the sets fetch the chosen rows again by it (a TID
# scan) rather than through the primary key's B-tree, 5-14 % of the sets
# query at 500 users x 100 memories. One statement, one snapshot: the tuple
# at a ctid is the version the picks saw.
_ROW_CTID = "m.ctid AS row_ctid"


def _simple(where: str, value: str, order: str, strategy: Strategy) -> _Selector:
    # `u.mask & bit` refers to the outer row only: PostgreSQL makes it a
    # one-time filter, so a disabled strategy costs no scan at all.
    rows = (
        f"SELECT m.*, {_ROW_CTID} FROM {_MEMORY} m WHERE (u.mask & {_BIT[strategy]}) <> 0 AND {_USER_ROWS} AND {where}"
        f" ORDER BY {order} LIMIT u.lim"
    )
    return _Selector(rows=rows, value=value, order=order)


_SELECTORS: Mapping[Strategy, _Selector] = {
    # memory_user_created's own order, so the scan stops after the limit.
    Strategy.RECENT: _simple(
        "m.created_at >= u.recent_since",
        "extract(epoch FROM m.created_at)::float8",
        "m.created_at DESC, m.id DESC",
        Strategy.RECENT,
    ),
    # No index orders a user's rows by access_count: the user's B-tree finds
    # their rows and the sort is over one user's memories only.
    Strategy.FREQUENT: _simple(
        "m.access_count >= u.min_access",
        "m.access_count::float8",
        "m.access_count DESC, m.created_at DESC, m.id",
        Strategy.FREQUENT,
    ),
    # Each side of the OR has an index on the user (memory_user_pinned,
    # memory_user_importance), so only qualifying rows are read (a BitmapOr).
    Strategy.IMPORTANT: _simple(
        "(m.pinned OR m.importance > u.min_importance)",
        "m.importance",
        "m.pinned DESC, m.importance DESC, m.created_at DESC, m.id",
        Strategy.IMPORTANT,
    ),
    # Nearest to the mean of the user's u.sample newest embedded memories and
    # of the summary of their newest session updated since u.active_since.
    # The seeds themselves are left out: recent already offers them, and
    # context is there to bring back older memories on the same subject.
    # Ordering by similarity DESC (not by the distance operator) keeps the
    # planner off the HNSW index, which filters after its scan and could come
    # back short: every embedded row of the user is compared, exactly.
    Strategy.CONTEXT: _Selector(
        rows=f"""
            SELECT m.*, {_ROW_CTID}, 1 - (m.embedding <=> ctx.v) AS similarity
            FROM (
                SELECT coalesce(array_agg(seed.id) FILTER (WHERE seed.id IS NOT NULL), '{{}}') AS ids,
                       avg(seed.embedding) AS v
                FROM (
                    (SELECT m.id, m.embedding FROM {_MEMORY} m
                     WHERE (u.mask & {_BIT[Strategy.CONTEXT]}) <> 0 AND {_USER_ROWS} AND m.embedding IS NOT NULL
                     ORDER BY m.created_at DESC, m.id DESC LIMIT u.sample)
                    UNION ALL
                    (SELECT NULL::uuid, s.summary_embedding FROM {_SESSION} s
                     WHERE (u.mask & {_BIT[Strategy.CONTEXT]}) <> 0
                       AND s.account_id = %(account)s AND s.namespace = %(namespace)s AND s.user_id = u.user_id
                       AND s.summary_embedding IS NOT NULL AND s.updated_at >= u.active_since
                     ORDER BY s.created_at DESC LIMIT 1)
                ) seed
            ) ctx
            JOIN {_MEMORY} m ON {_USER_ROWS} AND m.embedding IS NOT NULL AND m.id <> ALL(ctx.ids)
            WHERE ctx.v IS NOT NULL
            ORDER BY similarity DESC, m.id
            LIMIT u.lim
        """,
        value="m.similarity",
        order="m.similarity DESC, m.id",
    ),
}


@dataclass(frozen=True)
class _UserParams:
    user_id: str
    limit: int
    mask: int = 0
    recent_since: datetime | None = None
    min_access: int = 0
    min_importance: float = 1.0
    sample: int = 0
    active_since: datetime | None = None
    generation: str = ""


def _users_sql(users: Sequence[_UserParams]) -> tuple[str, dict[str, Any]]:
    """The users as a relation `u`, one row each with the parameters of their strategies."""
    columns = {
        "user_id": "text",
        "lim": "int",
        "mask": "int",
        "recent_since": "timestamptz",
        "min_access": "bigint",
        "min_importance": "float8",
        "sample": "int",
        "active_since": "timestamptz",
        "generation": "text",
    }
    fields = (
        "user_id",
        "limit",
        "mask",
        "recent_since",
        "min_access",
        "min_importance",
        "sample",
        "active_since",
        "generation",
    )
    params = {
        f"u_{column}": [getattr(user, name) for user in users] for column, name in zip(columns, fields, strict=True)
    }
    arrays = ", ".join(f"%(u_{column})s::{kind}[]" for column, kind in columns.items())
    return f"SELECT * FROM unnest({arrays}) AS u({', '.join(columns)})", params


# What ranking needs of a pick: carried through the union, so that only the
# chosen rows are read again for their records.
_RANKED_BY = ("id", "row_ctid", "updated_at", "importance", "access_count", "pinned", "created_at")


def _columns(alias: str, columns: Sequence[str]) -> str:
    return ", ".join(f"{alias}.{column}" for column in columns)


# A row's id, expiry and cache record: all a preload needs of a memory.
_RECORD_SQL = f"m.id, m.expires_at, {record_json_sql('m')}"


def _fetch(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall())


def _strategy_query(
    strategy: Strategy, *, account: Account, namespace: str, user: _UserParams, now: datetime
) -> tuple[str, dict[str, Any]]:
    selector = _SELECTORS[strategy]
    users_sql, params = _users_sql([user])
    sql = f"""
        WITH u AS ({users_sql})
        SELECT {selector.value}, {_RECORD_SQL}
        FROM u CROSS JOIN LATERAL ({selector.rows}) m
        ORDER BY {selector.order}
    """
    return sql, {**params, "account": account.id, "namespace": namespace, "now": now}


def _candidates(
    strategy: Strategy, *, account: Account, namespace: str, user: _UserParams, now: datetime
) -> list[Candidate]:
    rows = _fetch(*_strategy_query(strategy, account=account, namespace=namespace, user=user, now=now))
    return [_candidate(row, strategy) for row in rows]


def _candidate(row: tuple[Any, ...], strategy: Strategy) -> Candidate:
    value, memory_id, _, record_json = row
    return Candidate(memory_id=memory_id, record_json=record_json, strategy=strategy, value=float(value))


def recent_memories(
    *, account: Account, namespace: str, user_id: str, days: int, limit: int, now: datetime | None = None
) -> list[Candidate]:
    """The user's memories created in the last `days` days, newest first."""
    now = now or timezone.now()
    user = _UserParams(user_id, limit, mask=_BIT[Strategy.RECENT], recent_since=now - timedelta(days=days))
    return _candidates(Strategy.RECENT, account=account, namespace=namespace, user=user, now=now)


def frequent_memories(
    *, account: Account, namespace: str, user_id: str, min_access: int, limit: int, now: datetime | None = None
) -> list[Candidate]:
    """The user's memories read at least `min_access` times, most read first."""
    now = now or timezone.now()
    user = _UserParams(user_id, limit, mask=_BIT[Strategy.FREQUENT], min_access=min_access)
    return _candidates(Strategy.FREQUENT, account=account, namespace=namespace, user=user, now=now)


def important_memories(
    *, account: Account, namespace: str, user_id: str, min_importance: float, limit: int, now: datetime | None = None
) -> list[Candidate]:
    """The user's pinned memories and those with importance above `min_importance`:
    pinned first, then by importance."""
    now = now or timezone.now()
    user = _UserParams(user_id, limit, mask=_BIT[Strategy.IMPORTANT], min_importance=min_importance)
    return _candidates(Strategy.IMPORTANT, account=account, namespace=namespace, user=user, now=now)


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
    one and was updated since `active_since` (None: any session). No embedded
    memory, no context.
    """
    now = now or timezone.now()
    user = _UserParams(
        user_id,
        limit,
        mask=_BIT[Strategy.CONTEXT],
        sample=sample_size,
        active_since=active_since or datetime.min.replace(tzinfo=now.tzinfo),
    )
    return _candidates(Strategy.CONTEXT, account=account, namespace=namespace, user=user, now=now)


# -- the sets -------------------------------------------------------------------


def _params(
    user_id: str, config: EffectiveConfig, chosen: Sequence[Strategy], now: datetime, generation: str = ""
) -> _UserParams:
    since = now - timedelta(days=config.recent_days)
    return _UserParams(
        generation=generation,
        user_id=user_id,
        limit=config.max_memories_per_user,
        mask=sum(_BIT[strategy] for strategy in chosen) if config.enabled else 0,
        recent_since=since,
        min_access=config.frequent_min_access,
        min_importance=config.important_min_importance,
        sample=config.context_sample_size,
        active_since=since,
    )


def _sets_query(
    *, account: Account, namespace: str, users: Sequence[_UserParams], now: datetime
) -> tuple[str, dict[str, Any]]:
    users_sql, params = _users_sql(users)
    return _sets_sql(users_sql), {**params, "account": account.id, "namespace": namespace, "now": now}


def _sets_sql(users_sql: str) -> str:
    picks = " UNION ALL ".join(
        f"SELECT {_columns('m', _RANKED_BY)}, {_BIT[strategy]} AS bit FROM ({_SELECTORS[strategy].rows}) m"
        for strategy in USER_STRATEGIES
    )
    score = score_sql(
        updated_at="p.updated_at",
        importance="p.importance",
        access_count="p.access_count",
        pinned="p.pinned",
        now="%(now)s",
        weights=settings.MEMORY["WEIGHTS"],
        half_life_days=settings.MEMORY["RECENCY_HALF_LIFE_DAYS"],
    )
    # Ranked as memories.ranking scores a search without a query; ties go to
    # the memory more strategies chose, then to the newest. Deduplicated,
    # ranked and cut inside each user's LATERAL: a sort of a few hundred rows
    # in memory per user rather than one of the whole batch.
    return f"""
        WITH u AS ({users_sql})
        SELECT u.user_id, r.bits, r.score, e.memory_id, e.expires_at, e.key, e.record
        FROM u CROSS JOIN LATERAL (
            SELECT s.*, row_number() OVER (ORDER BY s.score DESC, s.chosen DESC, s.created_at DESC, s.id) AS rank
            FROM (
                SELECT p.id, p.row_ctid, p.created_at, bit_or(p.bit) AS bits, count(*) AS chosen, {score} AS score
                FROM ({picks}) p
                GROUP BY {_columns("p", _RANKED_BY)}
            ) s
            ORDER BY rank
            LIMIT u.lim
        ) r
        JOIN {_MEMORY} m ON m.ctid = r.row_ctid
        CROSS JOIN LATERAL (
            SELECT m.id::text AS memory_id, m.expires_at, {memory_key_sql("m.id")} AS key,
                   {record_json_sql("m")} AS record
        ) e
        ORDER BY u.user_id, r.rank
    """


def _strategies_of(bits: int) -> tuple[Strategy, ...]:
    return tuple(strategy for strategy in Strategy if bits & _BIT[strategy])


def preload_sets(
    *,
    account: Account,
    namespace: str,
    configs: Mapping[str, EffectiveConfig],
    strategies: Sequence[Strategy] | None = None,
    generations: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> dict[str, list[PreloadItem]]:
    """Each user's memories to preload, best first, at most their max_memories_per_user.

    `configs` maps the users' ids to their configurations. A user's set is
    the union of their enabled user strategies (or of `strategies`, e.g. the
    command's --strategy, limited to user strategies), each memory once with
    every strategy that chose it, ranked by the search score of
    memories.ranking without a query (similarity and keyword 0, so recency,
    importance, frequency and pinning decide), ties to the memory more
    strategies chose, then the newest. Empty when preloading is disabled.
    Each item carries its L2 entry under the user's token of `generations`.

    One query for all the users.
    """
    now = now or timezone.now()
    sets: dict[str, list[PreloadItem]] = {user_id: [] for user_id in configs}
    users = []
    for user_id, config in configs.items():
        chosen = config.user_strategies if strategies is None else tuple(s for s in strategies if s in USER_STRATEGIES)
        user = _params(user_id, config, chosen, now, (generations or {}).get(user_id, ""))
        if user.mask:
            users.append(user)
    if not users:
        return sets
    rows = _fetch(*_sets_query(account=account, namespace=namespace, users=users, now=now))
    strategies_of: dict[int, tuple[Strategy, ...]] = {}
    tokens = generations or {}
    prefixes: dict[str, str] = {}
    for user_id, bits, score, memory_id, expires_at, key, record in rows:
        chosen_by = strategies_of.get(bits)
        if chosen_by is None:
            chosen_by = strategies_of[bits] = _strategies_of(bits)
        prefix = prefixes.get(user_id)
        if prefix is None:
            generation_key = TieredCache.generation_key(account.id, namespace, user_id)
            prefix = prefixes[user_id] = generation_prefix(tokens.get(user_id, ""), generation_key)
        entry = preload_entry(prefix, record)
        size = len(key) + len(entry.encode())
        sets[user_id].append(PreloadItem(memory_id, expires_at, key, entry, size, record, chosen_by, score))
    return sets


@dataclass(frozen=True)
class Newest:
    """A user's newest live memories, as the first page of their list shows them."""

    # Ids newest first: the first page's, and one more when there is a next page.
    ids: list[str]
    # The creation time of the page's last memory (for the next page's cursor).
    last_created_at: datetime | None


def newest_memories(
    *, account: Account, namespace: str, user_ids: Sequence[str], count: int, now: datetime | None = None
) -> dict[str, Newest]:
    """Each user's `count` newest live memories, plus one to tell whether more
    follow: memory_user_created's own order, one query for the batch."""
    if not user_ids:
        return {}
    sql = f"""
        SELECT u.user_id, n.ids, n.times[%(count)s]
        FROM unnest(%(users)s::text[]) AS u(user_id)
        CROSS JOIN LATERAL (
            SELECT array_agg(m.id::text ORDER BY m.created_at DESC, m.id DESC) AS ids,
                   array_agg(m.created_at ORDER BY m.created_at DESC, m.id DESC) AS times
            FROM (
                SELECT m.id, m.created_at FROM {_MEMORY} m WHERE {_USER_ROWS}
                ORDER BY m.created_at DESC, m.id DESC LIMIT %(count)s + 1
            ) m
        ) n
    """
    params = {
        "users": list(user_ids),
        "count": count,
        "account": account.id,
        "namespace": namespace,
        "now": now or timezone.now(),
    }
    return {user_id: Newest(ids=ids or [], last_created_at=last) for user_id, ids, last in _fetch(sql, params)}


def preload_set(
    *,
    account: Account,
    namespace: str,
    user_id: str,
    config: EffectiveConfig,
    strategies: Sequence[Strategy] | None = None,
    now: datetime | None = None,
) -> list[PreloadItem]:
    """One user's preload set (preload_sets for one user)."""
    return preload_sets(
        account=account, namespace=namespace, configs={user_id: config}, strategies=strategies, now=now
    )[user_id]


def _trending_sql() -> str:
    # No index serves this on purpose: one on last_accessed_at would make every
    # access-count flush update an index entry per memory read (no more HOT
    # updates; see migration memories 0006). Trending runs once an hour per
    # account and namespace; a scan of the account's rows is the cheaper side.
    return f"""
        SELECT m.access_count::float8, {_RECORD_SQL} FROM {_MEMORY} m
        WHERE m.account_id = %(account)s AND m.namespace = %(namespace)s
          AND (m.expires_at IS NULL OR m.expires_at > %(now)s)
          AND m.last_accessed_at >= %(since)s AND m.access_count > 0
        ORDER BY m.access_count DESC, m.last_accessed_at DESC, m.id
        LIMIT %(limit)s
    """


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
    params = {
        "account": account.id,
        "namespace": namespace,
        "now": now,
        "since": now - timedelta(hours=window_hours),
        "limit": limit,
    }
    return [_candidate(row, Strategy.TRENDING) for row in _fetch(_trending_sql(), params)]


def trending_set(
    *, account: Account, namespace: str, config: EffectiveConfig, now: datetime | None = None
) -> list[Candidate]:
    """The account's trending memories for `preload:global:trending`, most read
    first (its strategy's own order: what the whole namespace reads, not one
    user's relevance). Empty unless the account's configuration enables trending."""
    if not config.trending_enabled:
        return []
    return trending_memories(
        account=account,
        namespace=namespace,
        window_hours=config.trending_window_hours,
        limit=config.trending_max_memories,
        now=now,
    )
