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

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson
from django.utils import timezone

from memories.cache import TieredCache, cache_key, tiered_cache
from memories.models import Account
from memories.records import memory_to_record
from preload.budget import Budget
from preload.budget import Entry as BudgetEntry
from preload.config import EffectiveConfig
from preload.options import Strategy
from preload.strategies import PreloadItem, preload_set, trending_set


@dataclass(frozen=True)
class UserPreload:
    memories: int
    bytes: int
    # Memory ids per strategy key, as written.
    keys: dict[str, list[str]]


def strategy_key(*, account_id: int, namespace: str, user_id: str, strategy: str) -> str:
    """The spec's `preload:{user}:{strategy}`, prefixed by account and namespace so that no two tenants share it."""
    return f"preload:{account_id}:{namespace}:{user_id}:{strategy}"


def _ttl(item: PreloadItem, config: EffectiveConfig, now: datetime) -> float:
    """The longest lifetime among the strategies that chose it, never past the memory's expiry."""
    ttl = float(max(config.ttl_seconds(strategy) for strategy in item.strategies))
    if item.memory.expires_at is not None:
        ttl = min(ttl, (item.memory.expires_at - now).total_seconds())
    return ttl


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
    """Choose the user's preload set and write it to Redis in one pipeline.

    With a `budget`, only what it admits is written, and the entries it gives
    back (less valuable ones of earlier users) are deleted in the same pipeline.
    Raises CacheUnavailable when Redis cannot be used (the caller records it
    and goes on: preloading fails soft). With `dry_run`, chooses but writes nothing.
    """
    cache = cache or tiered_cache()
    generation = "" if dry_run else cache.generation(account.id, namespace, user_id)
    now = timezone.now()
    items = preload_set(
        account=account, namespace=namespace, user_id=user_id, config=config, strategies=strategies, now=now
    )
    chosen: dict[str, tuple[PreloadItem, bytes, float]] = {}
    for item in items:
        ttl = _ttl(item, config, now)
        if ttl > 0:
            value = orjson.dumps({"gen": generation, "memory": memory_to_record(item.memory), "preloaded": True})
            chosen[cache_key("memory", item.memory.id)] = (item, value, ttl)
    evicted: list[str] = []
    if budget is not None:
        offered = [
            BudgetEntry(score=item.score.total, size=len(key) + len(value), key=key)
            for key, (item, value, _) in chosen.items()
        ]
        admitted, evicted = budget.admit(offered)
        chosen = {entry.key: chosen[entry.key] for entry in admitted}
    entries = [(key, value, ttl) for key, (_, value, ttl) in chosen.items()]
    keys: dict[str, list[str]] = {}
    for item, _, _ in chosen.values():
        for strategy in item.strategies:
            key = strategy_key(account_id=account.id, namespace=namespace, user_id=user_id, strategy=strategy)
            keys.setdefault(key, []).append(str(item.memory.id))
    total = sum(len(key) + len(value) for key, value, _ in entries)
    if dry_run:
        return UserPreload(memories=len(entries), bytes=total, keys=keys)
    with cache.guarded("preload") as redis:
        pipeline = redis.pipeline(transaction=False)
        if evicted:
            pipeline.delete(*evicted)
        for key, value, ttl in entries:
            pipeline.set(key, value, px=max(int(ttl * 1000), 1))
        for key, ids in keys.items():
            strategy = Strategy(key.rsplit(":", 1)[1])
            pipeline.set(key, orjson.dumps(ids), ex=config.ttl_seconds(strategy))
        if entries:
            longest = max(ttl for _, _, ttl in entries)
            marker = cache.preload_marker_key(account.id, namespace, user_id)
            pipeline.set(marker, 1, px=max(int(longest * 1000), 1))
        pipeline.execute()
    return UserPreload(memories=len(entries), bytes=total, keys=keys)


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
            orjson.dumps([str(item.memory.id) for item in items]),
            ex=config.ttl_seconds(Strategy.TRENDING),
        )
    return len(items)
