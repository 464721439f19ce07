"""Warming Redis with a user's preload set (SPEC-038).

A preloaded memory is written where the read path looks for it: the L2 entry
of the memory by id, made under the user's current generation token exactly as
memories.selectors would make it, so a write to the user after the preload
makes the entry unreachable like any other. Beside it, the spec's per-strategy
keys list which memories each strategy chose (`preload:{account}:{namespace}:
{user}:recent`, ...), for status and for clients that want the hot set.

The token is read before the rows (as the selectors do): a write that commits
after the read replaces the token, so nothing written here can outlive it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import orjson
from django.conf import settings
from django.utils import timezone
from redis import ConnectionPool, Redis

from memories.cache import TieredCache, current_key, tiered_cache
from memories.models import Account
from memories.pages import encode_page, page_of_records
from memories.selectors import MemoryFilters, cursor_after, list_cache_key
from preload.budget import Budget
from preload.config import EffectiveConfig
from preload.options import Strategy
from preload.strategies import Newest, PreloadItem, newest_memories, preload_sets, trending_set


@dataclass(frozen=True)
class UserPreload:
    memories: int
    bytes: int
    # Memory ids per strategy key, as written.
    keys: dict[str, list[str]]
    # Whether the user's first list page was written too.
    list_page: bool = False


def strategy_key(*, account_id: int, namespace: str, user_id: str, strategy: str) -> str:
    """The spec's `preload:{user}:{strategy}`, prefixed by account and namespace so that no two tenants share it."""
    return f"preload:{account_id}:{namespace}:{user_id}:{strategy}"


@dataclass
class Writes:
    """What a preload puts into Redis: keys to delete first, then (key, value, TTL in ms) to set."""

    evicted: list[str] = field(default_factory=list)
    entries: list[tuple[str, str | bytes, int]] = field(default_factory=list)


def _ttls(config: EffectiveConfig, strategies: tuple[Strategy, ...]) -> float:
    return float(max(config.ttl_seconds(strategy) for strategy in strategies))


@dataclass(frozen=True)
class _Page:
    key: str
    # memories.pages.encode_page's.
    value: bytes
    ttl: float
    # The least valuable of its memories: the budget gives the page back no later than them.
    score: float


def _first_page(
    *,
    account_id: int,
    namespace: str,
    user_id: str,
    generation: str,
    newest: Newest | None,
    chosen: list[tuple[PreloadItem, float]],
    page_size: int,
) -> _Page | None:
    """The user's default list page (GET /memory/memories?user_id=...) as
    memories.selectors caches it, when the preload set holds every memory on
    it; else None (the page would need rows the preload did not choose)."""
    if newest is None or not newest.ids:
        return None
    page_ids = newest.ids[:page_size]
    by_id = {item.memory_id: (item, ttl) for item, ttl in chosen}
    if any(memory_id not in by_id for memory_id in page_ids):
        return None
    on_page = [by_id[memory_id] for memory_id in page_ids]
    next_cursor = None
    if len(newest.ids) > page_size and newest.last_created_at is not None:
        next_cursor = cursor_after(created_at=newest.last_created_at, memory_id=page_ids[-1])
    key = current_key(
        list_cache_key(
            account_id=account_id,
            filters=MemoryFilters(user_id=user_id, namespace=namespace),
            limit=page_size,
            cursor=None,
        ),
        generation,
    )
    # Rendered here, once, as every read of the page will answer it (memories.pages):
    # ~2.4 us a memory of this process's CPU, a third of what PostgreSQL took to
    # write the same JSON (json_build_object, timestamps through to_char).
    page = page_of_records([item.record for item, _ in on_page], next_cursor=next_cursor, preloaded=True)
    value = encode_page(page)
    return _Page(
        key=key,
        value=value,
        ttl=min(ttl for _, ttl in on_page),
        score=min(item.score for item, _ in on_page),
    )


def _user_writes(
    *,
    account_id: int,
    namespace: str,
    user_id: str,
    items: list[PreloadItem],
    config: EffectiveConfig,
    budget: Budget | None,
    writes: Writes,
    now: datetime,
    generation: str,
    newest: Newest | None,
) -> UserPreload:
    # Each entry lives as long as the longest-lived strategy that chose it, never past the memory's expiry.
    lifetimes: dict[tuple[Strategy, ...], float] = {}
    chosen: list[tuple[PreloadItem, float]] = []
    for item in items:
        ttl = lifetimes.get(item.strategies)
        if ttl is None:
            ttl = lifetimes[item.strategies] = _ttls(config, item.strategies)
        if item.expires_at is not None:
            ttl = min(ttl, (item.expires_at - now).total_seconds())
        if ttl > 0:
            chosen.append((item, ttl))
    page = _first_page(
        account_id=account_id,
        namespace=namespace,
        user_id=user_id,
        generation=generation,
        newest=newest,
        chosen=chosen,
        page_size=int(settings.MEMORY["DEFAULT_PAGE_SIZE"]),
    )
    page_bytes = len(page.key) + len(page.value) if page else 0
    if budget is not None:
        offered = [(item.score, item.size, item.key, 1) for item, _ in chosen]
        if page:
            offered.append((page.score, page_bytes, page.key, 0))
        admitted, given_back = budget.admit(offered)
        writes.evicted += given_back
        if len(admitted) < len(offered):
            kept = set(admitted)
            chosen = [(item, ttl) for item, ttl in chosen if item.key in kept]
            if page and page.key not in kept:
                page, page_bytes = None, 0
    if page:
        writes.entries.append((page.key, page.value, max(int(page.ttl * 1000), 1)))
    keys: dict[str, list[str]] = {}
    # Each strategy's key once a user, not once a memory (150,000 calls a run of 100,000).
    key_of = {
        strategy: strategy_key(account_id=account_id, namespace=namespace, user_id=user_id, strategy=strategy)
        for strategy in Strategy
    }
    for item, ttl in chosen:
        writes.entries.append((item.key, item.entry, max(int(ttl * 1000), 1)))
        for strategy in item.strategies:
            keys.setdefault(key_of[strategy], []).append(item.memory_id)
    for key, ids in keys.items():
        writes.entries.append((key, orjson.dumps(ids), config.ttl_seconds(Strategy(key.rsplit(":", 1)[1])) * 1000))
    if chosen:
        longest = max(ttl for _, ttl in chosen)
        marker = TieredCache.preload_marker_key(account_id, namespace, user_id)
        writes.entries.append((marker, b"1", max(int(longest * 1000), 1)))
    return UserPreload(
        memories=len(chosen), bytes=sum(item.size for item, _ in chosen) + page_bytes, keys=keys, list_page=bool(page)
    )


@dataclass(frozen=True)
class Chosen:
    """The preload sets of some users of one namespace, not yet written."""

    account_id: int
    namespace: str
    configs: Mapping[str, EffectiveConfig]
    sets: dict[str, list[PreloadItem]]
    now: datetime
    generations: Mapping[str, str] = field(default_factory=dict)
    newest: Mapping[str, Newest] = field(default_factory=dict)


def choose(
    *,
    account: Account,
    namespace: str,
    configs: Mapping[str, EffectiveConfig],
    strategies: Sequence[Strategy] | None = None,
    dry_run: bool = False,
    cache: TieredCache | None = None,
) -> Chosen:
    """The preload sets of the users of `configs` (ids to configurations), each
    entry made under its user's generation token. Touches no shared state: a
    run chooses several batches at once, on several connections."""
    cache = cache or tiered_cache()
    # Tokens before rows, as the selectors read them (see the module's docstring).
    generations = {} if dry_run else cache.generations(account.id, namespace, list(configs))
    now = timezone.now()
    sets = preload_sets(
        account=account, namespace=namespace, configs=configs, strategies=strategies, generations=generations, now=now
    )
    newest = newest_memories(
        account=account,
        namespace=namespace,
        user_ids=[user_id for user_id, items in sets.items() if items],
        count=int(settings.MEMORY["DEFAULT_PAGE_SIZE"]),
        now=now,
    )
    return Chosen(
        account_id=account.id,
        namespace=namespace,
        configs=configs,
        sets=sets,
        now=now,
        generations=generations,
        newest=newest,
    )


def plan(chosen: Chosen, *, budget: Budget | None = None) -> tuple[Writes, dict[str, UserPreload]]:
    """What writing `chosen` takes, within the `budget` (whose entries it gives
    back, less valuable ones of earlier users, are deleted first), and what
    each user will hold. Batches must be planned in the order they are written."""
    writes = Writes()
    done = {
        user_id: _user_writes(
            account_id=chosen.account_id,
            namespace=chosen.namespace,
            user_id=user_id,
            items=items,
            config=chosen.configs[user_id],
            budget=budget,
            writes=writes,
            now=chosen.now,
            generation=chosen.generations.get(user_id, ""),
            newest=chosen.newest.get(user_id),
        )
        for user_id, items in chosen.sets.items()
    }
    if writes.evicted:
        # A later user of this batch may have outbid an earlier one: that entry is not written at all.
        gone = set(writes.evicted)
        writes.entries = [entry for entry in writes.entries if entry[0] not in gone]
    return writes, done


# SET key value PX ms for each key: one command carries a thousand entries, so
# a million-memory preload costs the client a thousand commands to encode,
# not a million (redis-py spends ~10 us on each).
_SET_ALL = """
for i, key in ipairs(KEYS) do
    redis.call('SET', key, ARGV[2 * i - 1], 'PX', ARGV[2 * i])
end
return #KEYS
"""
_SET_ALL_CHUNK = 1000


_bulk_clients: dict[tuple[int, int], Redis] = {}


def _bulk(redis: Redis) -> Redis:
    """A client of the same server whose socket timeout is REDIS_BULK_TIMEOUT, not a request's."""
    pool = redis.connection_pool
    key = (os.getpid(), id(pool))
    client = _bulk_clients.get(key)
    if client is None:
        options = {**pool.connection_kwargs, "socket_timeout": float(settings.REDIS_BULK_TIMEOUT)}
        client = _bulk_clients[key] = Redis(
            connection_pool=ConnectionPool(connection_class=pool.connection_class, max_connections=4, **options)
        )
    return client


def write(cache: TieredCache, writes: Writes) -> None:
    """Apply `writes` to Redis in one pipeline. Raises CacheUnavailable."""
    with cache.guarded("preload") as request_client:
        redis = _bulk(request_client)
        set_all = redis.register_script(_SET_ALL)
        pipeline = redis.pipeline(transaction=False)
        if writes.evicted:
            pipeline.delete(*writes.evicted)
        for start in range(0, len(writes.entries), _SET_ALL_CHUNK):
            chunk = writes.entries[start : start + _SET_ALL_CHUNK]
            arguments: list[str | bytes | int] = []
            for _, value, ttl_ms in chunk:
                arguments += (value, ttl_ms)
            set_all(keys=[key for key, _, _ in chunk], args=arguments, client=pipeline)
        pipeline.execute()


class BackgroundWriter:
    """Writes a run's batches to Redis on one thread while the run chooses the
    next ones: PostgreSQL, this process and Redis work at the same time.

    Batches are written in order. submit() returns a Future; its result()
    re-raises what the write raised (CacheUnavailable when Redis is down).
    """

    def __init__(self, cache: TieredCache | None = None) -> None:
        self.cache = cache or tiered_cache()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preload-writer")

    def submit(self, writes: Writes) -> Future[None]:
        return self._executor.submit(write, self.cache, writes)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def preload_user(
    *,
    account: Account,
    namespace: str,
    user_id: str,
    config: EffectiveConfig,
    strategies: Sequence[Strategy] | None = None,
    dry_run: bool = False,
    cache: TieredCache | None = None,
    budget: Budget | None = None,
) -> UserPreload:
    """Choose one user's preload set and write it to Redis now (runs do many users: preload.runs).

    Raises CacheUnavailable when Redis cannot be used (the caller records it
    and goes on: preloading fails soft). With `dry_run`, chooses but writes nothing.
    """
    cache = cache or tiered_cache()
    chosen = choose(
        account=account,
        namespace=namespace,
        configs={user_id: config},
        strategies=strategies,
        dry_run=dry_run,
        cache=cache,
    )
    writes, done = plan(chosen, budget=budget)
    if not dry_run:
        write(cache, writes)
    return done[user_id]


def trending_key(*, account_id: int, namespace: str) -> str:
    """The spec's `preload:global:trending`, per account and namespace: trending never crosses tenants."""
    return f"preload:{account_id}:{namespace}:global:trending"


def preload_trending(
    *, account: Account, namespace: str, config: EffectiveConfig, cache: TieredCache | None = None
) -> int:
    """Write the account's trending memory ids under its trending key; how many.

    Only the ids: each memory's own entry is made under its owner's generation
    token, by that owner's preload or first read.
    """
    cache = cache or tiered_cache()
    items = trending_set(account=account, namespace=namespace, config=config)
    with cache.guarded("preload") as redis:
        redis.set(
            trending_key(account_id=account.id, namespace=namespace),
            orjson.dumps([str(item.memory_id) for item in items]),
            ex=config.ttl_seconds(Strategy.TRENDING),
        )
    return len(items)
