"""Write-behind access tracking: reads raise Memory.access_count and
last_accessed_at without one UPDATE per read.

record_access() adds a request's reads to one Redis hash, `access:pending`
(fields `n:<id>`, the reads, and `t:<id>`, the latest read in µs since the
epoch), in one atomic Lua call; the API's reads use record_access_later(),
which leaves that call to a background thread of the process (_Recorder), so
a request does not wait for it. flush_access_counts(), run by a django-q2
schedule, claims that hash by renaming it to `access:flushing:<claim id>`,
applies it to PostgreSQL in batches, and only then deletes it.

Exactly once: the transaction that applies a claim first takes an advisory
lock (appliers run one at a time) and inserts an AccessFlush row keyed by the
claim id. A second flusher applying the same claim waits, then finds the row
and skips the claim; if the first rolled back, the second applies it. A flusher
that died after its commit but before deleting the key leaves a claim whose
id is recorded: the next flusher only deletes it. A flusher that died before
its commit leaves an unrecorded claim: the next flusher applies it. Claims are
listed in a sorted set by claim time, so recovery never scans the keyspace,
and are left alone for a minute so that a live flusher is not raced for
nothing.

What can be lost: reads made while Redis is unreachable (counted in
memory_access_records_dropped_total), and pending reads if Redis itself loses
its data, at most one flush interval's worth. Nothing is counted twice.

The flush changes neither updated_at (reading is not a change of content) nor
MemoryHistory, and skips memories deleted since they were read.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django_redis import get_redis_connection
from prometheus_client import Counter
from redis import Redis
from redis.client import Pipeline
from redis.commands.core import Script

from memories.cache import CacheUnavailable, cache_key, tiered_cache
from memories.models import AccessFlush, Memory

logger = logging.getLogger(__name__)

DROPPED = Counter(
    "memory_access_records_dropped_total", "Reads not counted because Redis was unavailable (best effort)"
)
FLUSHED = Counter("memory_access_reads_flushed_total", "Reads added to memories' access_count")

# A claim younger than this may still be in the hands of a live flusher.
CLAIM_STALE_SECONDS = 60
# Long enough that a claim left by a crash is settled first (flushers recover before they prune).
FLUSH_RECORD_RETENTION = timedelta(days=1)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# KEYS[1]: the pending hash. ARGV[1]: the reads' time (µs since the epoch); ARGV[2..]: memory ids.
# Atomic, so that a flusher's RENAME never separates a count from its time. The
# times are read and written with one HMGET and one HSET rather than a call per
# id: a quarter less server time for a page of 50.
_RECORD = Script(
    None,  # type: ignore[arg-type]  # each call names its client
    b"""
local at = tonumber(ARGV[1])
local n = #ARGV - 1
local fields = {}
for i = 1, n do
  redis.call('HINCRBY', KEYS[1], 'n:' .. ARGV[i + 1], 1)
  fields[i] = 't:' .. ARGV[i + 1]
end
local last = redis.call('HMGET', KEYS[1], unpack(fields))
local later = {}
for i = 1, n do
  local seen = tonumber(last[i])
  if seen == nil or seen < at then
    later[#later + 1] = fields[i]
    later[#later + 1] = ARGV[1]
  end
end
if #later > 0 then
  redis.call('HSET', KEYS[1], unpack(later))
end
return n
""",
)
# Ids per script call: unpack() is bounded by Lua's stack (about 8,000 values).
_RECORD_CHUNK = 1000

# KEYS: the pending hash, the claim's key, the sorted set of claims. ARGV[1]: the claim id.
# 0 when there is nothing to claim (or another flusher took it a moment ago).
_CLAIM = Script(
    None,  # type: ignore[arg-type]
    b"""
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('ZADD', KEYS[3], redis.call('TIME')[1], ARGV[1])
return 1
""",
)


@dataclass(frozen=True)
class FlushResult:
    memories: int = 0
    reads: int = 0
    # Claims applied by this flush, and of those, how many an interrupted flusher had left.
    claims: int = 0
    recovered: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class PendingAccess:
    """Reads counted in Redis but not yet applied to PostgreSQL."""

    memories: int
    reads: int
    # Claims left by flushers that have not finished (crashed, or running now).
    claims: int


@dataclass(frozen=True)
class _Reads:
    count: int
    last_micros: int | None


# -- keys ------------------------------------------------------------------------------------


def _key(name: str) -> str:
    # The cache's prefix, so that two deployments sharing a Redis keep apart.
    prefix = settings.CACHES["default"].get("KEY_PREFIX", "")
    return f"{prefix}:access:{name}" if prefix else f"access:{name}"


def _pending_key() -> str:
    return _key("pending")


def _claims_key() -> str:
    return _key("claims")


def _claim_key(claim_id: uuid.UUID) -> str:
    return _key(f"flushing:{claim_id.hex}")


def _redis() -> Redis:
    return get_redis_connection("default")  # type: ignore[no-any-return]


# -- recording -------------------------------------------------------------------------------

_dropped = 0
_dropped_lock = threading.Lock()


def dropped_records() -> int:
    """Reads this process could not count since it started (Redis unavailable)."""
    return _dropped


def _drop(reads: int) -> None:
    global _dropped
    with _dropped_lock:
        _dropped += reads
    DROPPED.inc(reads)


def _micros(at: datetime | None) -> int:
    if at is None:
        return time.time_ns() // 1000
    if timezone.is_naive(at):
        at = timezone.make_aware(at)
    return (at - _EPOCH) // _MICROSECOND


def _datetime(micros: int | None) -> datetime | None:
    return None if micros is None else _EPOCH + micros * _MICROSECOND


def _record_calls(client: Redis | Pipeline, micros: int, ids: Sequence[str]) -> Iterator[int]:
    """Make (or, on a pipeline, queue) the script calls that count one read of
    each id at `micros`, _RECORD_CHUNK ids a call; yields each call's count."""
    key = _pending_key()
    for start in range(0, len(ids), _RECORD_CHUNK):
        chunk = ids[start : start + _RECORD_CHUNK]
        _RECORD(keys=[key], args=[micros, *chunk], client=client)
        yield len(chunk)


def record_access(*, memory_ids: Sequence[uuid.UUID], at: datetime | None = None) -> None:
    """Count one read of each memory (a memory listed twice, two reads), at `at` (now).

    One Redis round trip per 1,000 ids; never raises. When Redis is unavailable the reads are
    dropped and counted; the cache's circuit breaker (shared) then spares the next reads the wait.
    """
    if not memory_ids:
        return
    if not settings.ACCESS_TRACKING["ENABLED"]:
        return
    recorded = 0
    try:
        with tiered_cache().guarded("access") as client:
            for count in _record_calls(client, _micros(at), [memory_id.hex for memory_id in memory_ids]):
                recorded += count
    except CacheUnavailable:
        # Best effort by design: a read must never fail because it could not be counted.
        _drop(len(memory_ids) - recorded)


class _Recorder:
    """Records reads from a background thread, so that a request does not wait
    for a Redis round trip to count what it read.

    Requests queue (time, ids); the thread sends everything queued in one
    pipeline, at most RECORD_DELAY after the first read of a burst. What a
    process queued but had not sent when it died is lost, like reads made
    while Redis is down: counts are best effort, never a reason to slow a read.
    """

    def __init__(self) -> None:
        self._queue: deque[tuple[int, list[str]]] = deque()
        self._wake = threading.Event()
        self._send_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def add(self, micros: int, ids: list[str]) -> None:
        self._queue.append((micros, ids))
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="access-recorder", daemon=True)
                    self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        delay = float(settings.ACCESS_TRACKING["RECORD_DELAY_SECONDS"])
        while True:
            self._wake.wait()
            # Let the rest of a burst join this send.
            time.sleep(delay)
            self._wake.clear()
            self.send()

    def send(self) -> None:
        """Send what is queued now (the thread does it by itself; flushes and tests call it to wait)."""
        with self._send_lock:
            items: list[tuple[int, list[str]]] = []
            while self._queue:
                items.append(self._queue.popleft())
            if not items:
                return
            reads = sum(len(ids) for _, ids in items)
            try:
                with tiered_cache().guarded("access") as client:
                    pipeline = client.pipeline(transaction=False)
                    for micros, ids in items:
                        for _ in _record_calls(pipeline, micros, ids):
                            pass  # each call is queued on the pipeline
                    pipeline.execute()
            except CacheUnavailable:
                _drop(reads)
            except Exception:  # the thread must live on whatever one send met
                logger.exception("could not record %d reads", reads)
                _drop(reads)


_recorder = _Recorder()


def _new_recorder_in_child() -> None:
    # The parent's thread does not exist in a forked child, and its queue is the parent's to send.
    global _recorder
    _recorder = _Recorder()


os.register_at_fork(after_in_child=_new_recorder_in_child)
atexit.register(lambda: _recorder.send())


def record_access_later(*, memory_ids: Sequence[uuid.UUID | str], at: datetime | None = None) -> None:
    """record_access without waiting for Redis: what the API's reads use (ids
    as UUIDs, or as the text of a cached record)."""
    if not memory_ids or not settings.ACCESS_TRACKING["ENABLED"]:
        return
    _recorder.add(_micros(at), [_hex(memory_id) for memory_id in memory_ids])


def _hex(memory_id: uuid.UUID | str) -> str:
    # A record's id is a UUID as PostgreSQL and str() write it: hex digits and hyphens.
    return memory_id.hex if isinstance(memory_id, uuid.UUID) else memory_id.replace("-", "")


def send_queued_records() -> None:
    """Send the reads this process has queued but not yet sent to Redis."""
    _recorder.send()


# -- flushing --------------------------------------------------------------------------------


def _read_hash(client: Redis, key: str, *, count: int) -> dict[uuid.UUID, _Reads]:
    counts: dict[uuid.UUID, int] = {}
    times: dict[uuid.UUID, int] = {}
    # HSCAN rather than HGETALL: a backlog of millions of fields must not block Redis.
    for field, value in client.hscan_iter(key, count=count):
        kind, _, raw_id = field.decode().partition(":")
        try:
            memory_id = uuid.UUID(hex=raw_id)
            number = int(value)
        except ValueError:
            logger.warning("ignoring malformed access field %r in %s", field, key)
            continue
        if kind == "n":
            counts[memory_id] = number
        elif kind == "t":
            times[memory_id] = number
    return {memory_id: _Reads(counts.get(memory_id, 0), times.get(memory_id)) for memory_id in counts.keys() | times}


def _batches(reads: dict[uuid.UUID, _Reads], size: int) -> Iterable[list[tuple[uuid.UUID, _Reads]]]:
    # In id order: each batch's rows are near each other in the primary key.
    ordered = sorted(reads.items())
    for start in range(0, len(ordered), size):
        yield ordered[start : start + size]


_APPLY_SQL = f"""
    WITH updated AS (
        UPDATE {Memory._meta.db_table} AS m
        SET access_count = m.access_count + v.n,
            last_accessed_at = GREATEST(COALESCE(m.last_accessed_at, v.at), v.at)
        FROM unnest(%s::uuid[], %s::bigint[], %s::timestamptz[]) AS v(id, n, at)
        WHERE m.id = v.id
        RETURNING v.n
    )
    SELECT count(*), COALESCE(sum(n), 0)::bigint FROM updated
"""

# The key of the advisory lock that serialises appliers (any constant no other code uses).
_FLUSH_LOCK = zlib.crc32(b"memories.access.flush")

_RECORD_FLUSH_SQL = f"""
    INSERT INTO {AccessFlush._meta.db_table} (claim_id, memories, reads, applied_at)
    VALUES (%s, 0, 0, now())
    ON CONFLICT (claim_id) DO NOTHING
    RETURNING claim_id
"""


def _apply_claim(client: Redis, claim_id: uuid.UUID, *, batch_size: int) -> tuple[int, int] | None:
    """Add a claim's reads to PostgreSQL in one transaction, one UPDATE per batch.

    (memories, reads) applied, or None when the claim had already been applied.
    Leaves the claim's key in Redis: _release_claim() deletes it.
    """
    if AccessFlush.objects.filter(claim_id=claim_id).exists():
        return None
    reads = _read_hash(client, _claim_key(claim_id), count=max(batch_size, 100))
    memories = applied = 0
    with transaction.atomic(), connection.cursor() as cursor:
        # One applier at a time: two UPDATEs lock their rows in the order of their
        # plans, not of their ids, and would deadlock. Flushing gains nothing from
        # running in parallel.
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_FLUSH_LOCK])
        # Then a concurrent applier of the same claim finds it applied, and skips it.
        cursor.execute(_RECORD_FLUSH_SQL, [claim_id])
        if cursor.fetchone() is None:
            return None
        for batch in _batches(reads, batch_size):
            cursor.execute(
                _APPLY_SQL,
                [
                    [memory_id for memory_id, _ in batch],
                    [item.count for _, item in batch],
                    [_datetime(item.last_micros) for _, item in batch],
                ],
            )
            row = cursor.fetchone()
            assert row is not None
            memories += row[0]
            applied += row[1]
        AccessFlush.objects.filter(claim_id=claim_id).update(memories=memories, reads=applied)
    FLUSHED.inc(applied)
    # Cached copies by id show the old counts: drop them from Redis (not the
    # users' lists and searches, which would empty every active user's cache
    # each minute). Other processes' L1 copies age out within CACHE_L1_TTL.
    tiered_cache().forget("memory", [cache_key("memory", memory_id) for memory_id in reads])
    return memories, applied


def _release_claim(client: Redis, claim_id: uuid.UUID) -> None:
    pipeline = client.pipeline(transaction=True)
    pipeline.delete(_claim_key(claim_id))
    pipeline.zrem(_claims_key(), claim_id.hex)
    pipeline.execute()


def _claim(client: Redis) -> uuid.UUID | None:
    """Take the pending reads for this flusher: None when there are none."""
    claim_id = uuid.uuid4()
    keys = [_pending_key(), _claim_key(claim_id), _claims_key()]
    return claim_id if _CLAIM(keys=keys, args=[claim_id.hex], client=client) else None


def _claims(client: Redis) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """(all claims in Redis, those old enough to have been abandoned)."""
    pipeline = client.pipeline(transaction=False)
    pipeline.time()
    pipeline.zrange(_claims_key(), 0, -1, withscores=True)
    (now, _), members = pipeline.execute()
    every: list[uuid.UUID] = []
    stale: list[uuid.UUID] = []
    for member, claimed_at in members:
        claim_id = uuid.UUID(hex=member.decode())
        every.append(claim_id)
        if claimed_at <= now - CLAIM_STALE_SECONDS:
            stale.append(claim_id)
    return every, stale


def flush_access_counts(*, batch_size: int = 1000) -> FlushResult:
    """Apply the reads counted in Redis to memories' access_count and last_accessed_at.

    First settles claims that interrupted flushers left for over a minute, then
    claims and applies the pending reads, then prunes day-old flush records.
    Raises when Redis or PostgreSQL fails; whatever was claimed stays in Redis
    for the next flusher.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    send_queued_records()
    started = time.perf_counter()
    client = _redis()
    memories = reads = claims = recovered = 0

    def settle(claim_id: uuid.UUID) -> bool:
        nonlocal memories, reads
        applied = _apply_claim(client, claim_id, batch_size=batch_size)
        _release_claim(client, claim_id)
        if applied is None:
            logger.info("deleted claim %s: it had been applied", claim_id)
            return False
        memories += applied[0]
        reads += applied[1]
        return True

    live, stale = _claims(client)
    for claim_id in stale:
        if settle(claim_id):
            claims += 1
            recovered += 1
            logger.info("applied claim %s left by an interrupted flush", claim_id)
    own = _claim(client)
    if own is not None and settle(own):
        claims += 1
    # A record whose claim is still in Redis must outlive it, however old.
    AccessFlush.objects.filter(applied_at__lt=timezone.now() - FLUSH_RECORD_RETENTION).exclude(
        claim_id__in=live
    ).delete()
    return FlushResult(
        memories=memories, reads=reads, claims=claims, recovered=recovered, seconds=time.perf_counter() - started
    )


def pending_access() -> PendingAccess:
    """What a flush would apply now: the pending reads and the claims not yet applied."""
    send_queued_records()
    client = _redis()
    live, _ = _claims(client)
    applied = set(AccessFlush.objects.filter(claim_id__in=live).values_list("claim_id", flat=True))
    unapplied = [claim_id for claim_id in live if claim_id not in applied]
    totals: dict[uuid.UUID, int] = {}
    for key in [_pending_key(), *(_claim_key(claim_id) for claim_id in unapplied)]:
        for memory_id, item in _read_hash(client, key, count=1000).items():
            totals[memory_id] = totals.get(memory_id, 0) + item.count
    return PendingAccess(memories=len(totals), reads=sum(totals.values()), claims=len(unapplied))
