"""Preloading against SPEC-038's success metrics, on a throwaway account.

    .venv/bin/python bench/preloading.py [--users 1000] [--per-user 100] [--sample 50] [--budget-mb 1024]

The spec's own size is --users 10000 (1,000,000 memories, ~1 min to write).

Makes --users users with --per-user memories each (written by one SQL
statement, without vectors: no strategy here needs them but context), then
prints, beside the spec's targets:

- first-request latency of a user's hot memory (get by id through the whole
  request path) and of their first list page, with an empty cache vs after
  preloading (target: >= 80 % lower);
- the preload hit rate of reads of preloaded users' hot memories (target: > 90 %);
- preload throughput, and the time 10,000 users x 100 memories would take at
  it (target: < 30 s for 1,000,000 memories);
- Redis memory per 1,000 preloaded memories, from INFO used_memory (target: < 6 MB).

It empties the cache of the Redis it uses (tokens and entries) between phases,
and sets the global preload budget to --budget-mb for the run (the default
256 MB holds ~450,000 memories of this size; the old value is put back).
Uses DATABASE_URL / REDIS_URL, or the embedded stack.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Iterator

from django.db import DatabaseError, connection
from django_redis import get_redis_connection
from support import APIClient, bench_account  # first: support sets Django up

from memories.cache import tiered_cache
from memories.models import Account
from preload.models import PreloadConfig, RunTrigger
from preload.options import Scope
from preload.runs import preload_run, users_of


def _fill(account: Account, users: int, per_user: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO memories_memory (id, account_id, namespace, user_id, kind, category, content, content_hash,
                tags, metadata, importance, pinned, access_count, created_at, updated_at, embedding_model)
            SELECT gen_random_uuid(), %s, 'default', 'user' || u,
                'fact', '', 'User ' || u || ' said something worth remembering, number ' || g,
                md5(u || ':' || g), ARRAY['t' || (g %% 5)], '{}', (g %% 10) / 10.0, g %% 40 = 0, g %% 7,
                now() - (g || ' hours')::interval, now(), ''
            FROM generate_series(1, %s) u, generate_series(1, %s) g
            """,
            [account.id, users, per_user],
        )
        cursor.execute("ANALYZE memories_memory")
        # The preload is timed, not the write-back of a million fresh rows.
        try:
            cursor.execute("CHECKPOINT")
        except DatabaseError as error:  # needs superuser or pg_checkpoint on a real server
            print(f"(no CHECKPOINT after writing: {error})")


def _hot_memory_ids(account: Account, users: list[str]) -> dict[str, str]:
    """Each user's most important memory: the one their session is likely to read first."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT DISTINCT ON (user_id) user_id, id FROM memories_memory
            WHERE account_id = %s AND namespace = 'default' AND user_id = ANY(%s)
            ORDER BY user_id, importance DESC, created_at DESC
            """,
            [account.id, users],
        )
        return {user_id: str(memory_id) for user_id, memory_id in cursor.fetchall()}


def _first_requests(client: APIClient, ids: dict[str, str]) -> tuple[list[float], list[float]]:
    """Each user's first get by id and first list page after a start-up (ms):
    the worker's L1 is empty; its API key's entry is cached after the first
    request, as in a real worker."""
    tiered_cache().local.clear()
    gets: list[float] = []
    lists: list[float] = []
    for user_id, memory_id in ids.items():
        for samples, path, params in (
            (gets, f"/memory/memories/{memory_id}", None),
            (lists, "/memory/memories", {"user_id": user_id}),
        ):
            started = time.perf_counter()
            response = client.get(path, params)
            samples.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.content[:200]
    return gets, lists


@contextlib.contextmanager
def _budget(megabytes: int) -> Iterator[None]:
    row, created = PreloadConfig.objects.get_or_create(scope=Scope.GLOBAL, account=None, user_id=None)
    before = row.memory_budget_bytes
    row.memory_budget_bytes = megabytes * 1024 * 1024
    row.save()
    try:
        yield
    finally:
        if created:
            row.delete()
        else:
            row.memory_budget_bytes = before
            row.save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--per-user", type=int, default=100)
    parser.add_argument("--sample", type=int, default=50, help="users whose first request is timed")
    parser.add_argument("--budget-mb", type=int, default=1024, help="the global preload budget during the run")
    args = parser.parse_args()

    cache = tiered_cache()
    redis = get_redis_connection("default")
    with bench_account() as (account, client), _budget(args.budget_mb):
        started = time.perf_counter()
        _fill(account, args.users, args.per_user)
        fill_s = time.perf_counter() - started
        sample = [f"user{n}" for n in range(1, min(args.sample, args.users) + 1)]
        hot = _hot_memory_ids(account, sample)
        client.get("/memory/memories", {"user_id": "nobody"})  # authenticate once: its cache is not measured

        cache.clear()
        cold = _first_requests(client, hot)

        cache.clear()
        cache.reset_stats()
        memory_before = int(redis.info("memory")["used_memory"])
        started = time.perf_counter()
        run = preload_run(users=users_of(accounts=[account], namespace="default"), trigger=RunTrigger.COMMAND)
        preload_s = time.perf_counter() - started
        memory_after = int(redis.info("memory")["used_memory"])
        warm = _first_requests(client, hot)
        rate = cache.preload_hit_rate()
    cache.clear()

    (cold_p50, warm_p50), (cold_list, warm_list) = (
        (statistics.median(cold[0]), statistics.median(warm[0])),
        (statistics.median(cold[1]), statistics.median(warm[1])),
    )
    per_second = run.memories / preload_s if preload_s else 0.0
    per_thousand_mb = (memory_after - memory_before) / max(run.memories, 1) * 1000 / 1024 / 1024
    print(f"{args.users} users x {args.per_user} memories ({fill_s:.1f} s to write them); run {run.status}")
    print(f"{'metric':44} {'measured':>22}   target (SPEC-038)")
    print(
        f"{'first get by id, p50: empty cache -> preloaded':44} {cold_p50:8.2f} -> {warm_p50:6.2f} ms"
        f" ({(1 - warm_p50 / cold_p50) * 100:3.0f} % lower)   >= 80 % lower"
    )
    print(
        f"{'first list page, p50: empty cache -> preloaded':44} {cold_list:8.2f} -> {warm_list:6.2f} ms"
        f" ({(1 - warm_list / cold_list) * 100:3.0f} % lower)   >= 80 % lower"
    )
    print(f"{'preload hit rate of hot reads (gets, lists)':44} {(rate['hit_rate'] or 0) * 100:21.1f}%   > 90 %")
    print(
        f"{'preload throughput':44} {per_second:15.0f} mem/s   "
        f"1,000,000 in {1_000_000 / per_second if per_second else float('inf'):.0f} s (< 30 s)"
    )
    print(f"{'Redis memory per 1,000 preloaded memories':44} {per_thousand_mb:19.2f} MB   < 6 MB")
    print(f"preloaded {run.memories} memories, {run.bytes} bytes of values, in {preload_s:.1f} s")


if __name__ == "__main__":
    main()
