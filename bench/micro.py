"""Micro benchmarks, in process: the spec's suite (specs 001, "Performance Benchmarks").

    .venv/bin/python bench/micro.py [--repeat 300]

Calls the services, selectors, embedder and cache directly (no HTTP, no
serializers) against the real PostgreSQL, Redis/Valkey and embedding model, on
a throwaway account deleted at the end. Each operation prints its median and
p99 beside its baseline and the ratio to it:

- retain_single: memory_create of one memory (embedding, near-duplicate check,
  one transaction, history, cache invalidation). Its samples are the calls of
  the sequential runs below, each into a new user (so holding 0 to N-1 memories).
- retain_batch N (10, 50, 100): memory_batch_create of N memories, each batch
  into a new user; baseline: N memory_create calls in a row into a new user
  (measured, median over runs); the value is the time per memory.
- recall_cold: memory_search (limit 10) for a new query on a user of 2,000
  memories, the query's vector dropped from both cache tiers first: embedding,
  database search and ranking, then filling the caches.
- recall_warm: the same queries again: results from the cache; baseline: cold.
- embedding_single / embedding_batch N: the embedding provider alone;
  baseline of a batch: N single calls (N x the single median); value: per text.
- cache_operations, on a memory record (its JSON, ~0.5 KB) through
  TieredCache.get_or_set: L1 hit; L2 hit (the key dropped from L1 first); miss
  (nothing cached; the load function hands back a ready record, so its cost is
  EXCLUDED: the miss is the cache's own overhead, L1 lookup, Redis GET, encode,
  Redis SET, L1 store). Then the selector memory_get, which adds what a real
  read needs: a cached read checks the user's generation token (one Redis
  round trip even on an L1 hit), an uncached one (its entry dropped first)
  INCLUDES the load: PostgreSQL, then both tiers filled.

Texts are support.memory_text's sentences (14 tokens on average), all distinct
and never near-duplicates, so that every retain stores a new row.
Targets (compared on the stated percentile): specs 001, cache hits < 1 ms and
batching 5-10x faster than sequential; specs 003, operations within 100 ms and
searches within 50 ms; issue 7, a batch of 100 with embeddings <= 250 ms.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import orjson
from django.conf import settings
from results import Result, SuiteOptions, latency, percentiles, table
from support import USER, bench_user, memory_text, timings

from memories.cache import cache_key, tiered_cache
from memories.embedding import get_embedder, query_cache_key
from memories.models import Account
from memories.selectors import MemoryFilters, memory_get, memory_get_record, memory_search
from memories.services import MemoryInput, WriteResult, memory_batch_create, memory_create

T = TypeVar("T")

GROUP = "micro"
BATCH_SIZES = (10, 50, 100)
# A batch's target, p50 bound (ms) and least ratio to sequential: specs 001 has
# batches "optimized for 50-100 items", "5-10x faster than sequential"; issue 7
# wants a batch of 100 with its embeddings stored within 250 ms.
BATCH_TARGETS: dict[int, tuple[str, float | None, float | None]] = {
    50: (">= 5x sequential (specs 001)", None, 5),
    100: ("p50 <= 250 ms (issue 7); >= 5x sequential (specs 001)", 250, 5),
}
# As bench/api_latency.py and bench/cache.py, whose numbers the README cites.
RECALL_MEMORIES = 2_000
SEARCH_LIMIT = 10
ACTOR = "bench"
# Long enough to outlive a run; the entries are also forgotten at its end.
ENTRY_TTL = 120.0


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if value >= 100 else f"{value:.1f} ms" if value >= 1 else f"{value:.2f} ms"


def _median(samples: list[float]) -> float:
    return percentiles(samples)[0]


def _latency(operation: str, samples: list[float], **fields: Any) -> Result:
    """results.latency for this group, with the number of samples kept."""
    return latency(GROUP, operation, samples, samples=len(samples), **fields)


def _compared(
    operation: str,
    samples: list[float],
    *,
    baseline: str,
    baseline_ms: float,
    per_item: tuple[int, str] | None = None,
    target: str = "",
    max_p50_ms: float | None = None,
    min_speedup: float | None = None,
    **extra: Any,
) -> Result:
    """A latency Result with its ratio to a baseline (in the baseline text; in
    `value` too unless the value is the time per item of a batch); its target
    is met when the median and the ratio are within the given bounds."""
    p50 = _median(samples)
    speedup = baseline_ms / p50
    met = None
    if max_p50_ms is not None or min_speedup is not None:
        met = (max_p50_ms is None or p50 <= max_p50_ms) and (min_speedup is None or speedup >= min_speedup)
    result = _latency(
        operation,
        samples,
        baseline=f"{baseline}: {_ms(baseline_ms)}; {speedup:.1f}x",
        target=target,
        met=met,
        speedup=round(speedup, 2),
        **extra,
    )
    if per_item is None:
        return dataclasses.replace(result, value=speedup, unit="x")
    items, unit = per_item
    return dataclasses.replace(result, value=p50 / items, unit=unit)


def _batch_repeat(repeat: int, size: int) -> int:
    # A batch costs about `size` singles: the same number of items for every size.
    return max(10, 2 * repeat // size)


def _timed_each(inputs: Sequence[T], call: Callable[[T], object]) -> list[float]:
    """Milliseconds of call(input), for each of the inputs in turn."""
    return timings(len(inputs), lambda index: call(inputs[index]))


# -- retain ----------------------------------------------------------------------------------


def retain(account: Account, repeat: int) -> list[Result]:
    numbers = itertools.count()

    def items(user_id: str, size: int) -> list[MemoryInput]:
        return [MemoryInput(user_id=user_id, content=memory_text(next(numbers))) for _ in range(size)]

    stored: list[WriteResult] = []

    def store_one(item: MemoryInput) -> None:
        stored.append(memory_create(account=account, item=item, actor=ACTOR))

    def store_batch(batch: list[MemoryInput]) -> None:
        stored.extend(memory_batch_create(account=account, items=batch, actor=ACTOR))

    singles: list[float] = []
    sequential: dict[int, list[float]] = {}
    for size in BATCH_SIZES:
        runs = [
            _timed_each(items(f"sequential-{size}-{run}", size), store_one)
            for run in range(max(2, repeat // (2 * size)))
        ]
        singles += [sample for run in runs for sample in run]
        sequential[size] = [sum(run) for run in runs]
    results = [
        _latency(
            "retain_single",
            singles,
            target="p99 < 100 ms (specs 003)",
            met=percentiles(singles)[2] < 100,
            baseline="specs 001: 60-80 ms",
        )
    ]
    for size in BATCH_SIZES:
        batches = [items(f"batch-{size}-{index}", size) for index in range(_batch_repeat(repeat, size))]
        samples = _timed_each(batches, store_batch)
        target, max_p50_ms, min_speedup = BATCH_TARGETS.get(size, ("", None, None))
        results.append(
            _compared(
                f"retain_batch {size}",
                samples,
                baseline=f"sequential {size} x single",
                baseline_ms=_median(sequential[size]),
                per_item=(size, "ms/memory"),
                target=target,
                max_p50_ms=max_p50_ms,
                min_speedup=min_speedup,
                sequential_runs=len(sequential[size]),
            )
        )
    merged = sum(not result.created for result in stored)
    if merged:
        # Every text is distinct: an update instead of an insert would time another operation.
        raise RuntimeError(f"{merged} retains updated an existing memory instead of storing a new one")
    return results


# -- recall ----------------------------------------------------------------------------------


def recall(account: Account, repeat: int) -> list[Result]:
    cache = tiered_cache()
    model_name = get_embedder().model_name
    filters = MemoryFilters(user_id=USER)
    # Each distinct, so that no results are cached yet; close to what the user holds, so that they find some.
    queries = [f"What about: {memory_text(n).lower()}" for n in range(repeat)]
    found: list[int] = []

    def search(index: int) -> None:
        found.append(
            len(memory_search(account=account, filters=filters, query=queries[index], limit=SEARCH_LIMIT).hits)
        )

    def forget_vector(index: int) -> None:
        # Query vectors are cached by text for every account: an earlier run may have left this one.
        cache.forget("embedding", [query_cache_key(model_name=model_name, text=queries[index])])

    cold = timings(repeat, search, before=forget_vector)
    warm = timings(repeat, search)
    if min(found) == 0:
        raise RuntimeError("a search found nothing: the recall user is not what this benchmark expects")
    path = "exact" if settings.MEMORY["EXACT_SEARCH_MAX_ROWS"] >= RECALL_MEMORIES else "HNSW"
    recall_user: dict[str, Any] = {
        "user_memories": RECALL_MEMORIES,
        "search_path": path,
        "limit": SEARCH_LIMIT,
    }
    cold_p50 = _median(cold)
    return [
        _latency(
            "recall_cold",
            cold,
            target="p50 < 50 ms (specs 003)",
            met=cold_p50 < 50,
            baseline="specs 001 uncached: 20-100 ms",
            **recall_user,
        ),
        _compared(
            "recall_warm",
            warm,
            baseline="cold",
            baseline_ms=cold_p50,
            target="p50 < 1 ms (specs 001, cache hit)",
            max_p50_ms=1,
            **recall_user,
        ),
    ]


# -- embedding -------------------------------------------------------------------------------


def embedding(repeat: int) -> list[Result]:
    embedder = get_embedder()
    embedder.embed(["warm up"])
    single = timings(repeat, lambda n: embedder.embed([memory_text(n)]))
    single_p50 = _median(single)
    results = [
        _latency(
            "embedding_single",
            single,
            baseline="specs 001 uncached: ~50 ms",
            model=embedder.model_name,
        )
    ]
    for size in BATCH_SIZES:
        batches = [[memory_text(index * size + n) for n in range(size)] for index in range(_batch_repeat(repeat, size))]
        results.append(
            _compared(
                f"embedding_batch {size}",
                _timed_each(batches, embedder.embed),
                baseline=f"{size} x single",
                baseline_ms=size * single_p50,
                per_item=(size, "ms/text"),
            )
        )
    return results


# -- cache -----------------------------------------------------------------------------------


def cache_operations(account: Account, memory_id: uuid.UUID, repeat: int) -> list[Result]:
    cache = tiered_cache()
    record = memory_get_record(account=account, memory_id=memory_id)
    run = uuid.uuid4().hex
    hit_key, l2_key, *miss_keys = [cache_key("memory", "bench-micro", run, n) for n in range(repeat + 2)]

    def through(key: str) -> None:
        cache.get_or_set(
            "memory", key, lambda: record, encode=orjson.dumps, decode=orjson.loads, ttl=lambda _: ENTRY_TTL
        )

    through(hit_key)
    through(l2_key)
    l1_hit = timings(repeat, lambda _: through(hit_key))
    l2_hit = timings(repeat, lambda _: through(l2_key), before=lambda _: cache.local.delete(l2_key))
    miss = timings(repeat, lambda n: through(miss_keys[n]))
    cache.forget("memory", [hit_key, l2_key, *miss_keys])

    entry_key = cache_key("memory", memory_id)
    memory_get(account=account, memory_id=memory_id)
    get_hit = timings(repeat, lambda _: memory_get(account=account, memory_id=memory_id))
    get_miss = timings(
        repeat,
        lambda _: memory_get(account=account, memory_id=memory_id),
        before=lambda _: cache.forget("memory", [entry_key]),
    )

    entry: dict[str, Any] = {"value_bytes": len(orjson.dumps(record))}
    cache_hit = "p50 < 1 ms (specs 001, cache hit)"
    miss_p50 = _median(miss)
    return [
        _compared(
            "cache L1 hit",
            l1_hit,
            baseline="miss",
            baseline_ms=miss_p50,
            target=cache_hit,
            max_p50_ms=1,
            **entry,
        ),
        _compared(
            "cache L2 hit (L1 cleared)",
            l2_hit,
            baseline="miss",
            baseline_ms=miss_p50,
            target=cache_hit,
            max_p50_ms=1,
            **entry,
        ),
        _latency("cache miss (load excluded)", miss, **entry),
        _compared(
            "memory_get cached (+ token check)",
            get_hit,
            baseline="uncached",
            baseline_ms=_median(get_miss),
            target=cache_hit,
            max_p50_ms=1,
            **entry,
        ),
        _latency(
            "memory_get uncached (load included)",
            get_miss,
            target="p99 < 100 ms (specs 003)",
            met=percentiles(get_miss)[2] < 100,
            **entry,
        ),
    ]


# -- the part --------------------------------------------------------------------------------


def run(options: SuiteOptions) -> list[Result]:
    """The spec's micro benchmarks at options.repeat samples per operation (batches: fewer, see _batch_repeat)."""
    with bench_user(RECALL_MEMORIES) as user:
        return [
            *retain(user.account, options.repeat),
            *recall(user.account, options.repeat),
            *embedding(options.repeat),
            *cache_operations(user.account, uuid.UUID(user.memory_id), options.repeat),
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=SuiteOptions().repeat, help="samples per operation")
    args = parser.parse_args()
    print(table(run(SuiteOptions(repeat=args.repeat))))
    print("value: the ratio to the baseline (x), or the time per item of a batch")


if __name__ == "__main__":
    main()
