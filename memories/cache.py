"""Two cache tiers for reads: an in-process L1 and Redis (L2), never serving a stale value.

Correctness comes from generations, not from deleting keys. Every (account,
namespace, user) has a generation token in Redis; every write to that user's
memories replaces it with a fresh random token (before and after its
transaction commits), in O(1) whatever was cached. Derived entries (list
pages, search results) carry the token in their key, and a memory cached by id
carries the token of its user in its value: a reader fetches the current token
(one Redis GET), so after a write has returned no process can reach an entry
made before it, in L1 or L2. Tokens are random rather than counters so that a
Redis that lost its data can never hand out a token an old entry still carries;
a missing token is replaced by a new one. That is also what lets tokens expire
(GENERATION_TTL after their last write), so Redis keeps one only for the users
written lately, not for every user ever written.

When Redis is down or slow, a circuit breaker opens: reads go to PostgreSQL,
and L1 is bypassed too (without Redis its entries cannot be validated). A write
that could not replace its user's token records the user in PostgreSQL
(memories.models.PendingInvalidation), and the first process to reach Redis
again replaces those tokens before it serves anything from the cache.

Values are bytes, the same in both tiers (which makes L1's size accounting
exact): orjson for records, raw float32 for query vectors. orjson, measured on
a page of 50 memory records: decode 53 us, encode 15 us; msgpack 103/46 us;
pickle 35/24 us but unpickling what a shared Redis hands back would run any
code someone put there.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from django.conf import settings
from django_redis import get_redis_connection
from prometheus_client import Counter, Gauge
from redis import Redis
from redis.client import Pipeline
from redis.commands.core import Script
from redis.exceptions import RedisError

from memoryproject.breakers import Breaker, BreakerOpen

logger = logging.getLogger(__name__)

T = TypeVar("T")

CACHE_TYPES = ("memory", "list", "search", "embedding", "auth")

HITS = Counter("memory_cache_hits_total", "Cache hits", ["type", "tier"])
MISSES = Counter("memory_cache_misses_total", "Cache misses", ["type", "tier"])
INVALIDATIONS = Counter("memory_cache_invalidations_total", "Generations replaced by writes", ["type"])
# Under multiprocess mode (memoryproject.prometheus) one series per live process,
# labelled pid: "liveall", because no single aggregate is right for both tiers.
# l1 is each process's own memory (sum them: sum without (pid)); l2 is Redis's
# size, the same fact seen by whichever processes last served the stats (max
# without (pid)). "live": a dead process holds no cache, its series goes.
SIZE_BYTES = Gauge("memory_cache_size_bytes", "Bytes held by the cache", ["type", "tier"], multiprocess_mode="liveall")
PRELOAD_HITS = Counter("preload_hits_total", "Reads by id of preloaded users served from a preloaded entry")
PRELOAD_MISSES = Counter("preload_misses_total", "Reads by id of preloaded users that went to PostgreSQL")
BYPASSES = Counter("memory_cache_bypass_total", "Cache operations skipped because Redis is unavailable", ["type"])


def _config() -> dict[str, Any]:
    return dict(settings.MEMORY_CACHE)


def _generation_ttl_ms() -> int:
    """How long a generation token lives after its last write (GENERATION_TTL)."""
    return max(int(float(settings.MEMORY_CACHE["GENERATION_TTL"]) * 1000), 1)


# -- L1: in-process LRU bounded by bytes, with TTL and time-to-idle ------------------------


@dataclass
class _Entry:
    value: bytes
    kind: str
    expires: float
    touched: float


class LocalCache:
    """Thread-safe LRU of bytes values, bounded by their total size.

    An entry dies at its TTL, or earlier when unread for `idle` seconds; the
    least recently used entries go first when a new one needs room.
    """

    def __init__(self, *, max_bytes: int, idle_seconds: float) -> None:
        self.max_bytes = max_bytes
        self.idle_seconds = idle_seconds
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes: dict[str, int] = dict.fromkeys(CACHE_TYPES, 0)
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.expires <= now or now - entry.touched > self.idle_seconds:
                self._remove(key)
                return None
            entry.touched = now
            self._entries.move_to_end(key)
            return entry.value

    def set(self, key: str, value: bytes, *, kind: str, ttl: float) -> None:
        size = len(value) + len(key)
        if size > self.max_bytes:
            return
        now = time.monotonic()
        with self._lock:
            if key in self._entries:
                self._remove(key)
            while self._entries and sum(self._bytes.values()) + size > self.max_bytes:
                self._remove(next(iter(self._entries)))
            self._entries[key] = _Entry(value=value, kind=kind, expires=now + ttl, touched=now)
            self._bytes[kind] += size
            SIZE_BYTES.labels(kind, "l1").set(self._bytes[kind])

    def delete(self, key: str) -> None:
        with self._lock:
            if key in self._entries:
                self._remove(key)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = dict.fromkeys(CACHE_TYPES, 0)
        for kind in CACHE_TYPES:
            SIZE_BYTES.labels(kind, "l1").set(0)

    def sizes(self) -> dict[str, tuple[int, int]]:
        """(entries, bytes) per cache type."""
        with self._lock:
            counts = dict.fromkeys(CACHE_TYPES, 0)
            for entry in self._entries.values():
                counts[entry.kind] += 1
            return {kind: (counts[kind], self._bytes[kind]) for kind in CACHE_TYPES}

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._bytes[entry.kind] -= len(entry.value) + len(key)
        SIZE_BYTES.labels(entry.kind, "l1").set(self._bytes[entry.kind])


class CacheUnavailable(Exception):
    """Redis cannot be used right now: the caller reads from PostgreSQL."""


# -- tokens that ride along ------------------------------------------------------------------


@dataclass
class Rider:
    """A generation token a request wants read with its next Redis round trip
    rather than on a round trip of its own (the API key's: memories.api.auth),
    or a rate counter it wants counted there (ride_counter)."""

    key: str
    token: str | None = None
    read: bool = False
    # A counter's answer (WindowCounter): (1 if counted else 0, current window's count, previous window's).
    counted: tuple[int, int, int] | None = None
    # A cache entry read ahead (prefetch): its bytes as they are, None if missing.
    prefetched: bool = False
    raw: bytes | None = None

    @property
    def counts(self) -> bool:
        return self.key.startswith("#")


@dataclass(frozen=True)
class WindowCounter:
    """A sliding-window rate counter (memories.api.throttling): one request is
    counted in `key` (the current window's count) unless the previous window's
    count (`previous_key`) times `previous_weight` (the share of the previous
    window still inside the sliding one) plus the current count has reached
    `limit`. A refused request is not counted. Counted in one Lua call, with
    INCR and a PEXPIRE of two windows (the count serves as the previous one next)."""

    key: str
    previous_key: str
    limit: int
    window_ms: int
    previous_weight: float

    @property
    def argument(self) -> str:
        """How _RIDE's Lua reads it: `#limit#window ms#weight#key#previous key`."""
        return f"#{self.limit}#{self.window_ms}#{self.previous_weight:.6f}#{self.key}#{self.previous_key}"


# None outside a request scope (riding_tokens): then nothing rides.
_riders: ContextVar[list[Rider] | None] = ContextVar("cache_riders", default=None)
# The users' tokens Redis gave this scope, by owner (account, namespace, user):
# a second value of the same user in the same request is checked against
# them, without a round trip of its own (get_or_set_current).
_tokens: ContextVar[dict[tuple[int, str, str], str] | None] = ContextVar("cache_tokens", default=None)


@contextmanager
def riding_tokens() -> Iterator[None]:
    """The scope (one request) in which ride_token's tokens are read."""
    reset = _riders.set([])
    reset_tokens = _tokens.set({})
    try:
        yield
    finally:
        _tokens.reset(reset_tokens)
        _riders.reset(reset)


def ride_token(key: str) -> Rider | None:
    """Have the next Redis read of this scope also read `key`; None outside a scope."""
    riders = _riders.get()
    if riders is None:
        return None
    rider = Rider(key)
    riders.append(rider)
    return rider


def ride_counter(counter: WindowCounter) -> Rider | None:
    """Have the next Redis read of this scope also count `counter`; None outside a scope."""
    return ride_token(counter.argument)


def prefetch(key: str) -> None:
    """Have the next Redis read of this scope also GET `key`, which a
    get_or_set of it later in the scope then takes instead of a round trip of
    its own (a search's query vector rides with the lookup of its results)."""
    riders = _riders.get()
    if riders is not None and not any(rider.prefetched and rider.key == key for rider in riders):
        riders.append(Rider(key, prefetched=True))


def _take_prefetched(key: str) -> Rider | None:
    riders = _riders.get() or []
    for rider in riders:
        if rider.prefetched and rider.read and rider.key == key:
            # Once: a later read of the key (after a set) must ask Redis again.
            riders.remove(rider)
            return rider
    return None


def _drop_prefetched(keys: Sequence[str]) -> None:
    """A forgotten key's prefetched value is stale: a later get_or_set must not take it."""
    riders = _riders.get()
    if riders:
        forgotten = set(keys)
        riders[:] = [rider for rider in riders if not (rider.prefetched and rider.key in forgotten)]


def _waiting_riders() -> list[Rider]:
    return [rider for rider in _riders.get() or () if not rider.read]


def _seat(riders: list[Rider], values: Sequence[Any], *, tokens: bool = True) -> None:
    """Give the riders what their round trip read. With `tokens` false only
    counters are given theirs (a counter counted must not count twice); the
    tokens are read again."""
    for rider, value in zip(riders, values, strict=True):
        if isinstance(value, list):
            counted, current, previous = (int(part) for part in value)
            rider.counted = (counted, current, previous)
            rider.read = True
        elif tokens and rider.prefetched:
            rider.raw = value if isinstance(value, bytes) else None
            rider.read = True
        elif tokens and not rider.counts:
            rider.token = None if value is None else _text(value)
            rider.read = True


# -- the cache -------------------------------------------------------------------------------


def _digest(*parts: object) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()[:32]


@dataclass
class Stats:
    """This process's counts since the last push to Redis, per (type, tier)."""

    hits: dict[tuple[str, str], int] = field(default_factory=dict)
    misses: dict[tuple[str, str], int] = field(default_factory=dict)
    invalidations: dict[str, int] = field(default_factory=dict)


class TieredCache:
    def __init__(self) -> None:
        config = _config()
        self.local = LocalCache(max_bytes=config["L1_MAX_BYTES"], idle_seconds=config["L1_IDLE_SECONDS"])
        # One breaker for everything this process asks of Redis (memoryproject.breakers).
        self.breaker = Breaker(
            "redis",
            fail_max=config["BREAKER_THRESHOLD"],
            reset_timeout=config["BREAKER_COOLDOWN"],
            failures=(RedisError, OSError),
        )
        self.breaker.on_close = self._after_recovery
        self._stats = Stats()
        self._stats_lock = threading.Lock()
        self._stats_pushed = time.monotonic()

    # -- Redis access, guarded by the breaker

    def _redis(self) -> Redis:
        return get_redis_connection("default")  # type: ignore[no-any-return]

    @contextmanager
    def guarded(self, kind: str) -> Iterator[Redis]:
        """Redis, or CacheUnavailable: one breaker for everything this process asks of Redis."""
        if not _config()["ENABLED"]:
            raise CacheUnavailable
        try:
            with self.breaker.guard():
                yield self._redis()
        except BreakerOpen:
            BYPASSES.labels(kind).inc()
            raise CacheUnavailable from None
        except (RedisError, OSError) as error:
            BYPASSES.labels(kind).inc()
            logger.info("cache bypassed (%s): %s", kind, error)
            raise CacheUnavailable from error

    # -- generations

    @staticmethod
    def generation_key(account_id: int, namespace: str, user_id: str) -> str:
        return f"gen:{account_id}:{_digest(namespace, user_id)}"

    def generation(self, account_id: int, namespace: str, user_id: str) -> str:
        """The user's current token; a missing one (first read, or Redis lost it) is created."""
        return self.generations(account_id, namespace, [user_id])[user_id]

    def generations(self, account_id: int, namespace: str, user_ids: Sequence[str]) -> dict[str, str]:
        """generation() of many users of a namespace in two round trips at most (a preload batch)."""
        keys = [self.generation_key(account_id, namespace, user_id) for user_id in user_ids]
        riders = _waiting_riders()
        closings = self.breaker.closings
        with self.guarded("generation") as redis:
            if any(rider.counts for rider in riders):
                values = _TOKENS(keys=keys, args=[rider.key for rider in riders], client=redis)
            else:
                values = redis.mget(keys + [rider.key for rider in riders]) if keys or riders else []
            found = dict(zip(user_ids, values[: len(keys)], strict=True))
            tokens = {user_id: _text(token) for user_id, token in found.items() if token is not None}
            missing = [(user_id, key) for user_id, key in zip(user_ids, keys, strict=True) if user_id not in tokens]
            if missing:
                # SET NX GET (Redis 7): two first readers agree on one token.
                fresh = {user_id: secrets.token_hex(8) for user_id, _ in missing}
                pipeline = redis.pipeline(transaction=False)
                for user_id, key in missing:
                    pipeline.set(key, fresh[user_id], nx=True, get=True, px=_generation_ttl_ms())
                for (user_id, _), existing in zip(missing, pipeline.execute(), strict=True):
                    tokens[user_id] = _text(existing) if isinstance(existing, bytes | str) else fresh[user_id]
        if self.breaker.closings != closings:
            # This read closed the breaker, whose on_close replayed the
            # invalidations Redis missed while it was down: what it read may predate them.
            _seat(riders, values[len(keys) :], tokens=False)
            return self.generations(account_id, namespace, user_ids)
        _seat(riders, values[len(keys) :])
        return tokens

    def count(self, counter: WindowCounter) -> tuple[int, int, int]:
        """Count a request in `counter` (see WindowCounter) on a round trip of its
        own, for a request that has no other to ride on; CacheUnavailable without Redis."""
        with self.guarded("throttle") as redis:
            (value,) = _TOKENS(keys=[], args=[counter.argument], client=redis)
        counted, current, previous = (int(part) for part in value)
        return counted, current, previous

    def invalidate_users(self, users: set[tuple[int, str, str]]) -> bool:
        """Replace the users' tokens: every entry derived from their memories is unreachable.
        False when Redis could not be reached (the caller records the users in PostgreSQL)."""
        if not users:
            return True
        return self.invalidate_users_with(users) is not None

    def invalidate_users_with(
        self, users: set[tuple[int, str, str]], commands: Callable[[Pipeline], None] | None = None
    ) -> list[Any] | None:
        """invalidate_users, with the commands `commands` queues sent on the same
        round trip (a fire-and-forget store's embedder flag: memories.services):
        their replies, or None when Redis could not be reached (no token replaced)."""
        _forget_tokens(users)
        try:
            with self.guarded("generation") as redis:
                pipeline = redis.pipeline(transaction=False)
                for account_id, namespace, user_id in users:
                    pipeline.set(
                        self.generation_key(account_id, namespace, user_id),
                        secrets.token_hex(8),
                        px=_generation_ttl_ms(),
                    )
                if commands is not None:
                    commands(pipeline)
                replies = pipeline.execute()
        except CacheUnavailable:
            return None
        if users:
            self._count(self._stats.invalidations, "user", len(users))
            INVALIDATIONS.labels("user").inc(len(users))
        return list(replies[len(users) :])

    def _after_recovery(self) -> None:
        from memories.invalidation import replay_pending_invalidations

        replay_pending_invalidations()

    # -- reads through both tiers

    def get_or_set(
        self,
        kind: str,
        key: str,
        load: Callable[[], T],
        *,
        encode: Callable[[T], bytes],
        decode: Callable[[bytes], T],
        ttl: Callable[[T], float],
        valid: Callable[[T], bool] = lambda value: True,
        valid_with_generation: Callable[[T, str | None], bool] | None = None,
    ) -> T:
        """The value of `key` from L1, else L2, else `load()` (then stored in both for `ttl(value)` s).

        `valid` checks a cached value before it is used (a memory's generation);
        an invalid one counts as a miss. Without Redis: CacheUnavailable, and
        the caller reads PostgreSQL.

        With `valid_with_generation`, values are checked by it instead. From
        L2 it is given the current token of the generation key the value names
        (see generation_prefix), read in the same round trip as the value; from
        L1, or when the value names none or the token is missing, None.
        """
        if valid_with_generation is not None:
            check = valid_with_generation

            def valid(value: T) -> bool:
                return check(value, None)

        raw = self.local.get(key)
        if raw is not None:
            value = decode(raw)
            if valid(value):
                self._hit(kind, "l1")
                return value
        self._miss(kind, "l1")
        generation: str | None = None
        closings = self.breaker.closings
        riders: list[Rider] = []
        carried: list[bytes | None] = []
        with self.guarded(kind) as redis:
            if valid_with_generation is None:
                ahead = _take_prefetched(key)
                stored = redis.get(key) if ahead is None else ahead.raw
            else:
                riders = _waiting_riders()
                stored, token, *carried = _ENTRY_AND_GENERATION(
                    keys=[key], args=[rider.key for rider in riders], client=redis
                )
                generation = None if token is None else _text(token)
        if self.breaker.closings != closings:
            # This read closed the breaker, whose on_close replayed the
            # invalidations Redis missed while it was down: the tokens read
            # with the entry may predate them.
            generation = None
            _seat(riders, carried, tokens=False)
        else:
            _seat(riders, carried)
        if isinstance(stored, bytes):
            raw = stored
            value = decode(raw)
            if valid(value) if valid_with_generation is None else valid_with_generation(value, generation):
                self._hit(kind, "l2")
                self.local.set(key, raw, kind=kind, ttl=min(ttl(value), _config()["L1_TTL"]))
                return value
        self._miss(kind, "l2")
        loaded = load()
        self.set(kind, key, encode(loaded), ttl=ttl(loaded))
        return loaded

    def get_or_set_current(
        self,
        kind: str,
        owner: tuple[int, str, str],
        prefix: str,
        load: Callable[[], T],
        *,
        encode: Callable[[T], bytes],
        decode: Callable[[bytes], T],
        ttl: Callable[[T], float],
    ) -> T:
        """get_or_set for values derived from a user's memories (list pages,
        search results), cached at `prefix:<the user's current token>`
        (current_key): the token and the value in one round trip.

        L1 keeps the value under the prefix with the token it was made under;
        Redis then sends the token alone when that is still current.
        """
        local = self.local.get(prefix)
        local_token, _, local_raw = local.partition(b" ") if local is not None else (b"", b"", b"")
        # The token this request already read, if any: L1 under it needs no round trip.
        generation = (_tokens.get() or {}).get(owner)
        stored = None
        if local is None or generation != local_token.decode():
            closings = self.breaker.closings
            with self.guarded(kind) as redis:
                riders = _waiting_riders()
                token, stored, *carried = _CURRENT_ENTRY(
                    keys=[self.generation_key(*owner)],
                    args=[prefix, local_token, *[rider.key for rider in riders]],
                    client=redis,
                )
            if self.breaker.closings != closings or token is None:
                # A token read by the call that closed the breaker may predate the
                # invalidations it replayed; a missing one is created.
                _seat(riders, carried, tokens=False)
                generation = self.generation(*owner)
                stored = None
            else:
                generation = _text(token)
                _seat(riders, carried)
            _remember_token(owner, generation)
        if local is not None and local_token.decode() == generation:
            self._hit(kind, "l1")
            return decode(local_raw)
        self._miss(kind, "l1")
        if isinstance(stored, bytes):
            value = decode(stored)
            self._hit(kind, "l2")
            self.local.set(
                prefix, f"{generation} ".encode() + stored, kind=kind, ttl=min(ttl(value), _config()["L1_TTL"])
            )
            return value
        self._miss(kind, "l2")
        loaded = load()
        raw = encode(loaded)
        self.set(
            kind, current_key(prefix, generation), raw, ttl=ttl(loaded), local=(prefix, f"{generation} ".encode() + raw)
        )
        return loaded

    def set(self, kind: str, key: str, raw: bytes, *, ttl: float, local: tuple[str, bytes] | None = None) -> None:
        """`raw` at `key` in Redis for `ttl` s, and in L1 (as `local`: key and
        value, when L1 keeps it otherwise) for no longer than L1_TTL."""
        if ttl <= 0:
            return
        try:
            with self.guarded(kind) as redis:
                redis.set(key, raw, px=max(int(ttl * 1000), 1))
        except CacheUnavailable:
            return
        local_key, local_raw = local or (key, raw)
        self.local.set(local_key, local_raw, kind=kind, ttl=min(ttl, _config()["L1_TTL"]))

    def delete(self, kind: str, key: str) -> None:
        self.forget(kind, [key])

    def forget(self, kind: str, keys: list[str]) -> None:
        """Drop entries from this process's L1 and from Redis (best effort: without Redis, they age out)."""
        for key in keys:
            self.local.delete(key)
        _drop_prefetched(keys)
        if keys:
            with contextlib.suppress(CacheUnavailable), self.guarded(kind) as redis:
                for start in range(0, len(keys), 1_000):
                    redis.delete(*keys[start : start + 1_000])
        self._count(self._stats.invalidations, kind, len(keys))
        INVALIDATIONS.labels(kind).inc(len(keys))

    def clear(self) -> None:
        """Forget everything: L1 here, and every token and entry in Redis (by key prefix)."""
        self.local.clear()
        with self.guarded("clear") as redis:
            for pattern in ("gen:*", "c:*"):
                for name in redis.scan_iter(match=pattern, count=1000):
                    redis.delete(name)

    # -- statistics

    def _count(self, table: dict[Any, int], key: Any, amount: int = 1) -> None:
        with self._stats_lock:
            table[key] = table.get(key, 0) + amount
        # From here, not only from set(): a process that serves nothing but hits must report them too.
        self._push_stats_if_due()

    def _hit(self, kind: str, tier: str) -> None:
        HITS.labels(kind, tier).inc()
        self._count(self._stats.hits, (kind, tier))

    def _miss(self, kind: str, tier: str) -> None:
        MISSES.labels(kind, tier).inc()
        self._count(self._stats.misses, (kind, tier))

    # -- preloading's share of reads (preload/engine.py writes the entries and the marker)

    @staticmethod
    def preload_marker_key(account_id: int, namespace: str, user_id: str) -> str:
        """Present while a user's preload lives: a read by id that misses is then a preload miss."""
        return f"{TieredCache.generation_key(account_id, namespace, user_id)}:preloaded"

    def count_preload_read(self, *, hit: bool) -> None:
        (PRELOAD_HITS if hit else PRELOAD_MISSES).inc()
        self._count(self._stats.hits if hit else self._stats.misses, ("preload", "all"))

    def preload_hit_rate(self) -> dict[str, Any]:
        """Service-wide: of reads by id of preloaded users, how many a preloaded entry served."""
        self._push_stats_if_due(force=True)
        with self.guarded("stats") as redis:
            hits, misses = redis.hmget(STATS_KEY, ["hits:preload:all", "misses:preload:all"])
        return _rate(int(hits or 0), int(misses or 0))

    def is_preloaded(self, account_id: int, namespace: str, user_id: str) -> bool:
        with self.guarded("preload") as redis:
            return bool(redis.exists(self.preload_marker_key(account_id, namespace, user_id)))

    def _push_stats_if_due(self, *, force: bool = False) -> None:
        """Every process adds its counts to one Redis hash, at most once a second,
        so that /memory/cache/stats can show the whole service's numbers."""
        now = time.monotonic()
        if not force and now - self._stats_pushed < 1.0:
            return
        with self._stats_lock:
            stats, self._stats = self._stats, Stats()
            self._stats_pushed = now
        fields: dict[str, int] = {}
        for (kind, tier), n in stats.hits.items():
            fields[f"hits:{kind}:{tier}"] = n
        for (kind, tier), n in stats.misses.items():
            fields[f"misses:{kind}:{tier}"] = n
        for kind, n in stats.invalidations.items():
            fields[f"invalidations:{kind}"] = n
        if not fields:
            return
        try:
            with self.guarded("stats") as redis:
                pipeline = redis.pipeline(transaction=False)
                for name, n in fields.items():
                    pipeline.hincrby(STATS_KEY, name, n)
                pipeline.execute()
        except CacheUnavailable:
            pass

    def stats(self) -> dict[str, Any]:
        self._push_stats_if_due(force=True)
        with self.guarded("stats") as redis:
            counts = {_text(key): int(value) for key, value in redis.hgetall(STATS_KEY).items()}
            l2 = _l2_sizes(redis)
        local = self.local.sizes()
        types: dict[str, Any] = {}
        for kind in CACHE_TYPES:
            tiers: dict[str, Any] = {}
            for tier in ("l1", "l2"):
                hits = counts.get(f"hits:{kind}:{tier}", 0)
                misses = counts.get(f"misses:{kind}:{tier}", 0)
                entries, size = local[kind] if tier == "l1" else l2.get(kind, (0, 0))
                tiers[tier] = {
                    "hits": hits,
                    "misses": misses,
                    "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
                    "entries": entries,
                    "bytes": size,
                }
                SIZE_BYTES.labels(kind, tier).set(size)
            types[kind] = {"tiers": tiers, "invalidations": counts.get(f"invalidations:{kind}", 0)}
        return {
            "types": types,
            "user_invalidations": counts.get("invalidations:user", 0),
            "preload": _rate(counts.get("hits:preload:all", 0), counts.get("misses:preload:all", 0)),
            "redis": "open" if self.breaker.is_open else "ok",
        }

    def reset_stats(self) -> None:
        with self._stats_lock:
            self._stats = Stats()
        try:
            with self.guarded("stats") as redis:
                redis.delete(STATS_KEY)
        except CacheUnavailable:
            pass


STATS_KEY = "cache:stats"

# What a rider asks of a script's round trip (Rider): the value of a key (a
# generation token), or, for an argument `#limit#window ms#weight#key#previous
# key`, a request counted in a sliding window (WindowCounter): {1 if counted
# else 0, the current window's count, the previous window's}.
_RIDE = b"""
local function ride(argument)
  if string.byte(argument, 1) ~= 35 then
    return redis.call('GET', argument)
  end
  local limit, ms, weight, key, previous = string.match(argument, '^#(%d+)#(%d+)#([%d.]+)#([^#]+)#([^#]+)$')
  local counts = redis.call('MGET', key, previous)
  local current = tonumber(counts[1] or '0')
  local before = tonumber(counts[2] or '0')
  if before * tonumber(weight) + current >= tonumber(limit) then
    return {0, current, before}
  end
  current = redis.call('INCR', key)
  if current == 1 then
    redis.call('PEXPIRE', key, 2 * tonumber(ms))
  end
  return {1, current, before}
end
"""

# An entry that starts with its token and the key of that token
# (generation_prefix) comes back with the key's current value: the value and
# its validity in one round trip. The pattern is anchored at the start, so
# nothing inside the entry (a memory's content, its metadata) can be taken for it.
# The riders in ARGV (see _RIDE) come back after them.
_ENTRY_AND_GENERATION = Script(
    None,  # type: ignore[arg-type]  # each call names its client
    _RIDE
    + b"""
local result = {false, false}
local value = redis.call('GET', KEYS[1])
if value then
  result[1] = value
  local name = string.match(value, '^{"gen":"[^"]*","gk":"([^"]+)"')
  if name then
    result[2] = redis.call('GET', name)
  end
end
for i, argument in ipairs(ARGV) do
  result[i + 2] = ride(argument)
end
return result
""",
)


# A user's token (KEYS[1]) and the value at ARGV[1]:<token>, unless ARGV[2]
# (the token of the copy the caller holds) is still current; then the riders
# (ARGV[3..], see _RIDE).
_CURRENT_ENTRY = Script(
    None,  # type: ignore[arg-type]  # each call names its client
    _RIDE
    + b"""
local result = {false, false}
local token = redis.call('GET', KEYS[1])
if token then
  result[1] = token
  if token ~= ARGV[2] then
    result[2] = redis.call('GET', ARGV[1] .. ':' .. token)
  end
end
for i = 3, #ARGV do
  result[i] = ride(ARGV[i])
end
return result
""",
)

# The tokens at KEYS, then the riders in ARGV: MGET, for when a counter rides.
_TOKENS = Script(
    None,  # type: ignore[arg-type]  # each call names its client
    _RIDE
    + b"""
local result = {}
for i, name in ipairs(KEYS) do
  result[i] = redis.call('GET', name)
end
for i, argument in ipairs(ARGV) do
  result[#KEYS + i] = ride(argument)
end
return result
""",
)


def current_key(prefix: str, generation: str) -> str:
    """Where get_or_set_current keeps the value of `prefix` made under a user's token `generation`."""
    return f"{prefix}:{generation}"


def generation_prefix(generation: str, generation_key: str) -> str:
    """`{"gen": token, "gk": key of the token,` as JSON text: an entry made of
    it, its other members and `}` has the form get_or_set's
    valid_with_generation reads."""
    return f'{{"gen":{orjson.dumps(generation).decode()},"gk":{orjson.dumps(generation_key).decode()},'


def _rate(hits: int, misses: int) -> dict[str, Any]:
    return {"hits": hits, "misses": misses, "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None}


def _remember_token(owner: tuple[int, str, str], generation: str) -> None:
    known = _tokens.get()
    if known is not None:
        known[owner] = generation


def _forget_tokens(owners: Iterable[tuple[int, str, str]]) -> None:
    """This request changed these users: the tokens it read of them are no longer theirs."""
    known = _tokens.get()
    if known:
        for owner in owners:
            known.pop(owner, None)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _l2_sizes(redis: Redis) -> dict[str, tuple[int, int]]:
    """(entries, bytes) per type in Redis, from a bounded SCAN: stats are for people, not hot paths."""
    sizes: dict[str, list[int]] = {kind: [0, 0] for kind in CACHE_TYPES}
    names = list(itertools.islice(redis.scan_iter(match="c:*", count=1000), 100_000))
    for start in range(0, len(names), 1_000):
        chunk = names[start : start + 1_000]
        # One round trip per thousand keys, not one per key.
        pipeline = redis.pipeline(transaction=False)
        for name in chunk:
            pipeline.memory_usage(name)
        for name, usage in zip(chunk, pipeline.execute(), strict=True):
            kind = _text(name).split(":", 2)[1]
            if kind in sizes:
                sizes[kind][0] += 1
                sizes[kind][1] += int(usage or 0)
    return {kind: (entries, size) for kind, (entries, size) in sizes.items()}


def cache_key(kind: str, *parts: object) -> str:
    """Keys of cached values: `c:<type>:<digest of the parts>`."""
    return f"c:{kind}:{_digest(*parts)}"


def memory_key_sql(id_sql: str) -> str:
    """cache_key("memory", <uuid>) as SQL over a uuid expression: for writing
    many memories' entries (preloading) without hashing each key in Python."""
    digest = f"left(encode(sha256(convert_to('[\"' || ({id_sql})::text || '\"]', 'UTF8')), 'hex'), 32)"
    return f"('c:memory:' || {digest})"


_cache: TieredCache | None = None
_cache_lock = threading.Lock()


def tiered_cache() -> TieredCache:
    """The process's cache (built on first use from settings.MEMORY_CACHE)."""
    global _cache
    if _cache is None:
        with _cache_lock:
            if _cache is None:
                _cache = TieredCache()
    return _cache


def _forget_cache_in_child() -> None:
    # A parent thread may have held one of the cache's locks at fork time (the
    # child would wait for it forever), and the parent's L1 and statistics are
    # not the child's: a forked worker builds its own cache.
    global _cache, _cache_lock
    _cache = None
    _cache_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_cache_in_child)
