"""Reads of memories: get, list, history and relevance search.

Every function takes the caller's account and filters by it first: another
account's memory is never found, so the API answers 404 for it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import numpy as np
import orjson
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from memories.cache import CacheUnavailable, TieredCache, cache_key, prefetch, tiered_cache
from memories.embedding import EmbeddingUnavailable, embed_query, get_embedder, query_cache_key
from memories.invalidation import replay_pending_invalidations
from memories.models import (
    DISCRETE_KINDS,
    TEXT_SEARCH_CONFIG,
    Account,
    Memory,
    MemoryHistory,
)
from memories.operations import operation
from memories.pages import Page, decode_page, encode_page, page_of_records
from memories.ranking import Score, score, score_sql
from memories.records import (
    DEFERRED,
    earliest_expiry,
    memory_from_record,
    memory_to_record,
    record_json_sql,
)
from memories.vectors import VectorParam

logger = logging.getLogger(__name__)


class InvalidCursor(ValueError):
    pass


@dataclass(frozen=True)
class MemoryFilters:
    user_id: str
    namespace: str = "default"
    kinds: Sequence[str] = ()
    category: str | None = None
    tags_any: Sequence[str] = ()
    tags_all: Sequence[str] = ()
    # Containment: every key of this object must be in the memory's metadata with this value.
    metadata: Mapping[str, Any] = field(default_factory=dict)
    pinned: bool | None = None
    since: datetime | None = None
    until: datetime | None = None


def expand_kinds(kinds: Sequence[str]) -> list[str]:
    """`discrete` stands for the hierarchy's single statements: fact, preference, event."""
    expanded: list[str] = []
    for kind in kinds:
        expanded += [str(k) for k in DISCRETE_KINDS] if kind == "discrete" else [kind]
    return list(dict.fromkeys(expanded))


def _live(account: Account) -> QuerySet[Memory]:
    """The account's memories that have not expired."""
    return Memory.objects.filter(account=account).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))


def _filtered(account: Account, filters: MemoryFilters) -> QuerySet[Memory]:
    queryset = _live(account).filter(namespace=filters.namespace, user_id=filters.user_id)
    if filters.kinds:
        queryset = queryset.filter(kind__in=expand_kinds(filters.kinds))
    if filters.category is not None:
        queryset = queryset.filter(category=filters.category)
    if filters.tags_any:
        queryset = queryset.filter(tags__overlap=list(filters.tags_any))
    if filters.tags_all:
        queryset = queryset.filter(tags__contains=list(filters.tags_all))
    if filters.metadata:
        queryset = queryset.filter(metadata__contains=dict(filters.metadata))
    if filters.pinned is not None:
        queryset = queryset.filter(pinned=filters.pinned)
    if filters.since is not None:
        queryset = queryset.filter(created_at__gte=filters.since)
    if filters.until is not None:
        queryset = queryset.filter(created_at__lt=filters.until)
    return queryset


def _ttl(base: float, records: list[dict[str, Any]]) -> float:
    """A cached answer lives `base` seconds, but not past the expiry of a memory in it."""
    return _ttl_until(base, earliest_expiry(records))


def _ttl_until(base: float, expiry: datetime | None) -> float:
    if expiry is None:
        return base
    return min(base, (expiry - timezone.now()).total_seconds())


def _expired(record: dict[str, Any]) -> bool:
    expiry = earliest_expiry([record])
    return expiry is not None and expiry <= timezone.now()


def _cache() -> TieredCache:
    """The cache, after this process has replayed any invalidation that missed Redis."""
    cache = tiered_cache()
    replay_pending_invalidations(force=False)
    return cache


def memory_get(*, account: Account, memory_id: uuid.UUID) -> Memory:
    """One live memory of the account; Memory.DoesNotExist otherwise.

    Cached by id with its user's generation token: a hit costs one Redis
    round trip (entry and token together) and no query.
    """
    with operation("get", account_id=account.id):
        try:
            return memory_from_record(_memory_get_cached(account, memory_id))
        except CacheUnavailable:
            return _memory_get_db(account, memory_id)


def memory_get_record(*, account: Account, memory_id: uuid.UUID) -> dict[str, Any]:
    """memory_get's memory as its record (memories.records): what a read that
    only answers with it needs, without building a model instance."""
    with operation("get", account_id=account.id):
        try:
            return _memory_get_cached(account, memory_id)
        except CacheUnavailable:
            return memory_to_record(_memory_get_db(account, memory_id))


def _memory_get_db(account: Account, memory_id: uuid.UUID) -> Memory:
    return _live(account).defer(*DEFERRED).get(pk=memory_id)


def _memory_get_cached(account: Account, memory_id: uuid.UUID) -> dict[str, Any]:
    cache = _cache()
    ttl = float(settings.MEMORY_CACHE["MEMORY_TTL"])

    def valid_with_generation(entry: dict[str, Any], current: str | None) -> bool:
        record = entry["memory"]
        if record["account_id"] != account.id or _expired(record):
            return False
        if current is None:
            current = cache.generation(account.id, record["namespace"], record["user_id"])
        return bool(entry["gen"] == current)

    def load() -> dict[str, Any]:
        # The token must be read before the row: a write that commits after
        # this read replaces the token, so what is cached under it dies with it.
        owner = _live(account).filter(pk=memory_id).values_list("namespace", "user_id").first()
        if owner is None:
            raise Memory.DoesNotExist("No such memory.")
        generation = cache.generation(account.id, *owner)
        memory = _memory_get_db(account, memory_id)
        if cache.is_preloaded(account.id, *owner):
            cache.count_preload_read(hit=False)
        return {
            "gen": generation,
            "gk": cache.generation_key(account.id, *owner),
            "memory": memory_to_record(memory),
        }

    entry = cache.get_or_set(
        "memory",
        cache_key("memory", memory_id),
        load,
        encode=orjson.dumps,
        decode=orjson.loads,
        ttl=lambda entry: _ttl(ttl, [entry["memory"]]),
        # A read from Redis learns the token in the same round trip as the entry.
        valid_with_generation=valid_with_generation,
    )
    if entry.get("preloaded"):
        # Only a cached entry carries the mark: what load() returns never does.
        cache.count_preload_read(hit=True)
    record: dict[str, Any] = entry["memory"]
    return record


# -- list -----------------------------------------------------------------------


def encode_cursor(memory: Memory) -> str:
    return cursor_after(created_at=memory.created_at, memory_id=memory.id)


def cursor_after(*, created_at: datetime, memory_id: uuid.UUID | str) -> str:
    """The cursor of the page that follows the memory created at `created_at` with this id."""
    raw = f"{created_at.isoformat()}|{memory_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def list_cache_key(*, account_id: int, filters: MemoryFilters, limit: int, cursor: str | None) -> str:
    """Where a page of memory_list is cached, under the user's current token
    (TieredCache.get_or_set_current; preloading writes the first page there too)."""
    # "pages": encoded by memories.pages. Entries of the records a page held before are not read.
    return cache_key("list", "pages", account_id, filters, limit, cursor)


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, memory_id = raw.split("|")
        when = datetime.fromisoformat(created)
        if when.tzinfo is None:
            raise ValueError("naive time")
        return when, uuid.UUID(memory_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidCursor("cursor is not one this API returned") from None


def memory_list(*, account: Account, filters: MemoryFilters, limit: int, cursor: str | None = None) -> Page:
    """A page of the user's memories (_memory_list), timed as a `list` (memories.operations)."""
    with operation("list", account_id=account.id, user_id=filters.user_id, limit=limit) as sizes:
        page = _memory_list(account=account, filters=filters, limit=limit, cursor=cursor)
        sizes["found"] = len(page.ids)
        return page


def _memory_list(*, account: Account, filters: MemoryFilters, limit: int, cursor: str | None = None) -> Page:
    """Newest first; the cursor continues after the last item of the previous page
    (keyset paging on (created_at, id), so pages stay stable under inserts).
    Pages are cached under the user's generation token."""
    if cursor:
        decode_cursor(cursor)
    try:
        cache = _cache()
        ttl = float(settings.MEMORY_CACHE["LIST_TTL"])

        def load_page() -> Page:
            page = _memory_list_db(account=account, filters=filters, limit=limit, cursor=cursor)
            if cursor is None and cache.is_preloaded(account.id, filters.namespace, filters.user_id):
                cache.count_preload_read(hit=False)
            return page

        page = cache.get_or_set_current(
            "list",
            (account.id, filters.namespace, filters.user_id),
            list_cache_key(account_id=account.id, filters=filters, limit=limit, cursor=cursor),
            load_page,
            encode=encode_page,
            decode=decode_page,
            ttl=lambda page: _ttl_until(ttl, page.expires_at),
        )
    except CacheUnavailable:
        return _memory_list_db(account=account, filters=filters, limit=limit, cursor=cursor)
    if page.preloaded:
        cache.count_preload_read(hit=True)
    return page


def _memory_list_db(*, account: Account, filters: MemoryFilters, limit: int, cursor: str | None) -> Page:
    queryset = _filtered(account, filters).defer(*DEFERRED).order_by("-created_at", "-id")
    if cursor:
        created_at, memory_id = decode_cursor(cursor)
        queryset = queryset.filter(Q(created_at__lt=created_at) | Q(created_at=created_at, id__lt=memory_id))
    items = list(queryset[: limit + 1])
    next_cursor = encode_cursor(items[limit - 1]) if len(items) > limit else None
    return page_of_records([memory_to_record(memory) for memory in items[:limit]], next_cursor=next_cursor)


def memory_history(*, account: Account, memory_id: uuid.UUID) -> list[MemoryHistory]:
    """A memory's changes, oldest first; kept (and readable) after it is deleted."""
    return list(MemoryHistory.objects.filter(account=account, memory_id=memory_id).order_by("created_at", "id"))


# -- relevance search -------------------------------------------------------------


@dataclass(frozen=True)
class SearchHit:
    # The memory's record (memories.records): cached results answer from it as they are.
    record: dict[str, Any]
    score: Score


def _keyword_tsquery(query: str) -> tuple[str, list[Any]] | None:
    """Any of the query's words, stemmed (a question rarely repeats every word of
    the fact): SQL for the tsquery and its parameters, None without a word.

    One websearch_to_tsquery of "w1 or w2 or ...", which gives the same tsquery
    as an OR of plainto_tsquery per word (tests/memories/test_search.py), in
    one parameter instead of two a word: a question of ten words made the
    search's statement 3.8 KB with 90 parameters, ~1 ms to send and parse.
    The words are letters and digits only, so none is websearch syntax but
    "or", which is also a stop word: it is left out."""
    words = dict.fromkeys(word.lower() for word in "".join(c if c.isalnum() else " " for c in query).split())
    words.pop("or", None)
    if not words:
        return None
    return "websearch_to_tsquery(%s::regconfig, %s)", [TEXT_SEARCH_CONFIG, " or ".join(words)]


def _uses_exact_search(scoped: QuerySet[Memory]) -> bool:
    """Small users are searched exactly: pgvector's HNSW filters after the index
    scan, so a per-user search through it can come back short."""
    limit = int(settings.MEMORY["EXACT_SEARCH_MAX_ROWS"])
    return scoped.filter(embedding__isnull=False).values("id")[: limit + 1].count() <= limit


def _search_path_key(account: Account, filters: MemoryFilters) -> str:
    return cache_key("exact", account.id, filters, settings.MEMORY["EXACT_SEARCH_MAX_ROWS"])


def _uses_exact_search_cached(account: Account, filters: MemoryFilters, scoped: QuerySet[Memory]) -> bool:
    """_uses_exact_search, kept for SEARCH_TTL seconds. Counting the rows costs
    1-2 ms for a small user and 6-9 ms for one past the limit (4.2 ms on
    average over the HTTP bench's searches, which needed one nearly every
    time while the answer was kept under the user's token: every write and
    every flush of read counts replaces it).

    The answer is not kept under the token because it only picks the faster
    of two correct ways, and the user's size moves slowly: a user who crosses
    the limit is searched the old way until the answer expires. A user who
    shrinks from past the limit to a few rows within SEARCH_TTL would get
    fewer rows than asked for from HNSW's bounded scan: _memory_search_db then
    counts again at once."""
    try:
        answer = _cache().get_or_set(
            "search",
            _search_path_key(account, filters),
            lambda: _uses_exact_search(scoped),
            encode=lambda exact: b"1" if exact else b"0",
            decode=lambda raw: raw == b"1",
            ttl=lambda exact: float(settings.MEMORY_CACHE["SEARCH_TTL"]),
        )
    except CacheUnavailable:
        return _uses_exact_search(scoped)
    return answer


@dataclass(frozen=True)
class SearchQuerySQL:
    sql: str
    params: list[Any]
    # True: the user's rows are compared exhaustively; False: through the HNSW index.
    exact: bool


def search_sql(
    *,
    account: Account,
    filters: MemoryFilters,
    query: str,
    vector: np.ndarray | None,
    limit: int,
    now: datetime,
) -> SearchQuerySQL:
    """The one query of a search: candidates nearest by vector and best by
    keyword match, as CTEs of the query that fetches what ranks them (and each
    one's record as JSON). Without a vector (the embedding provider is down)
    only the keyword match finds candidates, and similarity counts 0.

    A user up to EXACT_SEARCH_MAX_ROWS is compared by vector with every one
    of their rows, read through the user's B-tree. The distance is written as
    a function (cosine_distance), not an operator (<=>), because an index
    serves only an operator: the planner cannot trade the user's B-tree for
    the HNSW index, and recall stays 1.0. A larger user goes through the HNSW
    index.

    Keyword candidates of every user come from the GIN index on (user_id,
    search_vector) (btree_gin), whose posting lists are per user. Before, a
    small user's rows were each matched in the same pass (ts_match_vq, ~1 us
    a row, 40 % of the pass) and a large user's through the full-text GIN
    index ANDed with the user's B-tree, whose posting lists of a common word
    span every user. At 9,598 rows the keyword candidates took 4.8 ms that way
    against 1.8 ms now, at 19,380 rows 9.0 against 2.9 ms.

    The user's filters (_filtered) are compiled once and written into each
    CTE that needs them: compiling a queryset per CTE cost ~2 ms a search, as
    much as the search itself for a small user."""
    scoped = _filtered(account, filters)
    candidates = max(settings.MEMORY["SEARCH_CANDIDATES"], limit)
    scan = vector is not None and _uses_exact_search_cached(account, filters, scoped)
    where, where_params = _where_sql(scoped)
    table = connection.ops.quote_name(Memory._meta.db_table)
    query_vector = None if vector is None else VectorParam(vector)
    keyword = _keyword_tsquery(query)
    tsq_sql, tsq_params = keyword if keyword is not None else ("NULL::tsquery", [])
    ctes = [f"q AS (SELECT {tsq_sql} AS tsq)"]
    params: list[Any] = [*tsq_params]
    if query_vector is None:
        ctes.append("by_vector AS (SELECT NULL::uuid AS id WHERE false)")
    elif scan:
        ctes.append(
            f"by_vector AS (SELECT id FROM {table} WHERE {where} AND embedding IS NOT NULL"
            " ORDER BY cosine_distance(embedding, %s::halfvec), id LIMIT %s)"
        )
        params += [*where_params, query_vector, candidates]
    else:
        ctes.append(
            f"by_vector AS (SELECT id FROM {table} WHERE {where} AND embedding IS NOT NULL"
            " ORDER BY embedding <=> %s::halfvec LIMIT %s)"
        )
        params += [*where_params, query_vector, candidates]
    if keyword is None:
        ctes.append("by_keyword AS (SELECT NULL::uuid AS id WHERE false)")
    else:
        # Through the (user_id, search_vector) GIN index, for every user: its
        # posting lists are the user's own. The tsquery is written out, not
        # read from q: an index needs it as a constant.
        ctes.append(
            f"by_keyword AS (SELECT id FROM {table} WHERE {where} AND search_vector @@ {tsq_sql}"
            f" ORDER BY ts_rank_cd(search_vector, {tsq_sql}) DESC, id LIMIT %s)"
        )
        params += [*where_params, *tsq_params, *tsq_params, candidates]
    # Normalisation 32 maps the rank into 0..1 as rank / (rank + 1).
    rank_sql = "0.0" if keyword is None else "ts_rank_cd(m.search_vector, q.tsq, 32)"
    similarity_sql = "0.0" if query_vector is None else "1 - (m.embedding <=> %s::halfvec)"
    total_sql = score_sql(
        similarity="s.similarity",
        keyword="s.keyword",
        updated_at="m.updated_at",
        importance="m.importance",
        access_count="m.access_count",
        pinned="m.pinned",
        now="%s",
        weights=settings.MEMORY["WEIGHTS"],
        half_life_days=settings.MEMORY["RECENCY_HALF_LIFE_DAYS"],
    )
    # Every candidate is scored here, but only the best are sent with their
    # record: PostgreSQL evaluates an expensive output column after the sort
    # and LIMIT, and building and sending the JSON of all 100-200 candidates
    # cost ~1 ms a search. Twice `limit` of them, so that the final order
    # (score() in Python, which may differ from this one in the last
    # rounding) always has the true best among them.
    sql = f"""
        WITH {", ".join(ctes)}
        SELECT m.id, m.updated_at, m.importance, m.access_count, m.pinned, s.similarity, s.keyword,
               {record_json_sql("m")} AS record
        FROM {table} m CROSS JOIN q
        CROSS JOIN LATERAL (SELECT {similarity_sql} AS similarity, COALESCE({rank_sql}, 0.0) AS keyword) s
        WHERE m.id IN (SELECT id FROM by_vector UNION SELECT id FROM by_keyword)
        ORDER BY {total_sql} DESC, m.id
        LIMIT %s
    """
    if query_vector is not None:
        params.append(query_vector)
    params += [now, 2 * limit]
    return SearchQuerySQL(sql=sql, params=params, exact=query_vector is None or scan)


def _where_sql(queryset: QuerySet[Memory]) -> tuple[str, list[Any]]:
    """The WHERE clause of a single-table queryset, as SQL and its parameters."""
    query = queryset.query
    compiler = query.get_compiler(connection=connection)
    sql, params = compiler.compile(query.where)
    return sql, list(params)


class SearchMode(StrEnum):
    # Vector similarity and keyword match blended (memories.ranking).
    HYBRID = "hybrid"
    # The embedding provider is unavailable: candidates come from keyword match
    # alone, and similarity counts 0. Never cached: the next search may have vectors.
    KEYWORD = "keyword"


@dataclass(frozen=True)
class SearchResult:
    hits: list[SearchHit]
    mode: SearchMode = SearchMode.HYBRID


def memory_search(
    *, account: Account, filters: MemoryFilters, query: str, limit: int, min_score: float = 0.0
) -> SearchResult:
    """_memory_search, timed as a `search` (memories.operations); keyword match
    alone while the embedding provider is unavailable."""
    with operation("search", account_id=account.id, user_id=filters.user_id, limit=limit) as sizes:
        try:
            result = SearchResult(
                hits=_memory_search(account=account, filters=filters, query=query, limit=limit, min_score=min_score)
            )
        except EmbeddingUnavailable as error:
            logger.warning("embedding provider unavailable, searching by keyword only: %s", error)
            hits = _memory_search_db(
                account=account, filters=filters, query=query, limit=limit, min_score=min_score, keyword_only=True
            )
            result = SearchResult(hits=hits, mode=SearchMode.KEYWORD)
        sizes["found"] = len(result.hits)
        return result


def _memory_search(
    *, account: Account, filters: MemoryFilters, query: str, limit: int, min_score: float = 0.0
) -> list[SearchHit]:
    """The user's memories most relevant to the query, best first, each with its
    score's parts (memories.ranking). Results are cached under the user's
    generation token (and the embedding model) for SEARCH_TTL seconds."""
    try:
        cache = _cache()
        model = get_embedder().model_name
        ttl = float(settings.MEMORY_CACHE["SEARCH_TTL"])
        # A new query needs its vector and the user's search path: read with
        # the results' lookup, not on round trips after it.
        prefetch(query_cache_key(model_name=model, text=query))
        prefetch(_search_path_key(account, filters))
        hits = cache.get_or_set_current(
            "search",
            (account.id, filters.namespace, filters.user_id),
            cache_key("search", account.id, model, filters, query, limit, min_score),
            lambda: [
                {"memory": hit.record, "total": hit.score.total, "parts": hit.score.parts}
                for hit in _memory_search_db(
                    account=account, filters=filters, query=query, limit=limit, min_score=min_score
                )
            ],
            encode=orjson.dumps,
            decode=orjson.loads,
            ttl=lambda hits: _ttl(ttl, [hit["memory"] for hit in hits]),
        )
    except CacheUnavailable:
        return _memory_search_db(account=account, filters=filters, query=query, limit=limit, min_score=min_score)
    return [SearchHit(record=hit["memory"], score=Score(total=hit["total"], parts=hit["parts"])) for hit in hits]


def _search_rows(search: SearchQuerySQL) -> list[tuple[Any, ...]]:
    # An exact search is one statement, its own transaction: no BEGIN and
    # COMMIT round trips. Only the HNSW settings need one (SET LOCAL).
    with contextlib.nullcontext() if search.exact else transaction.atomic():
        if not search.exact:
            _configure_hnsw()
        with connection.cursor() as cursor:
            cursor.execute(search.sql, search.params)
            rows: list[tuple[Any, ...]] = cursor.fetchall()
            return rows


def _memory_search_db(
    *, account: Account, filters: MemoryFilters, query: str, limit: int, min_score: float, keyword_only: bool = False
) -> list[SearchHit]:
    """One statement (and the size check that picks exact or HNSW search,
    kept for SEARCH_TTL). Every candidate is scored in PostgreSQL; only the best are
    sent with their records (JSON made by PostgreSQL), scored again here for
    the score's parts, and only the best `limit` records are parsed."""
    vector = None if keyword_only else embed_query(query)
    now = timezone.now()
    search = search_sql(account=account, filters=filters, query=query, vector=vector, limit=limit, now=now)
    rows = _search_rows(search)
    if not search.exact and len(rows) < limit:
        # Fewer rows than asked for through HNSW: the user may have shrunk since
        # the path was chosen (it is kept for SEARCH_TTL), and HNSW's bounded
        # scan then misses rows. Count again; a user that is small now is
        # compared row by row.
        tiered_cache().delete("search", _search_path_key(account, filters))
        search = search_sql(account=account, filters=filters, query=query, vector=vector, limit=limit, now=now)
        if search.exact:
            rows = _search_rows(search)
    weights = settings.MEMORY["WEIGHTS"]
    half_life = settings.MEMORY["RECENCY_HALF_LIFE_DAYS"]
    scored = []
    for memory_id, updated_at, importance, access_count, pinned, similarity, keyword, record in rows:
        total = score(
            similarity=similarity,
            keyword=float(keyword),
            updated_at=updated_at,
            importance=importance,
            access_count=access_count,
            pinned=pinned,
            now=now,
            weights=weights,
            half_life_days=half_life,
        )
        if total.total >= min_score:
            scored.append((-total.total, str(memory_id), total, record))
    scored.sort(key=lambda entry: entry[:2])
    return [SearchHit(record=orjson.loads(record), score=total) for _, _, total, record in scored[:limit]]


def _configure_hnsw() -> None:
    """Iterative index scans keep going until enough rows pass the filters
    (pgvector 0.8), bounded so a rare filter cannot scan the whole index."""
    ef_search = int(settings.MEMORY["HNSW_EF_SEARCH"])
    max_tuples = int(settings.MEMORY["HNSW_MAX_SCAN_TUPLES"])
    with connection.cursor() as cursor:
        cursor.execute(
            "SET LOCAL hnsw.iterative_scan = relaxed_order; "
            f"SET LOCAL hnsw.ef_search = {ef_search}; "
            f"SET LOCAL hnsw.max_scan_tuples = {max_tuples}"
        )
