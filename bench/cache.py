"""Cold vs warm: the memory API's reads without the cache and with it, side by side.

    .venv/bin/python bench/cache.py [--memories 2000] [--repeat 200]

Makes a throwaway account with one user holding --memories memories, then
times get, list and search through Django's test client (the whole request
path, no socket) twice: with the cache disabled (every request goes to
PostgreSQL: the baseline) and warm (after one request filled both tiers). It
prints p50/p95 and the database queries each request needed, and the speedup
beside the spec's claims (cached queries under 1 ms, 10-50x faster than the
database path). The account is deleted at the end. Uses DATABASE_URL /
REDIS_URL, or the embedded stack.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from support import USER, arguments, bench_user, timed


def _measure(repeat: int, call: Callable[[], int]) -> tuple[float, float, float]:
    """(p50 ms, p95 ms, database queries per request)."""
    with CaptureQueriesContext(connection) as queries:
        ordered = sorted(timed(repeat, lambda index: call()))
    return statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))], len(queries) / repeat


def main() -> None:
    args = arguments(__doc__)

    with bench_user(args.memories) as user:
        client, memory_id = user.client, user.memory_id
        requests: list[tuple[str, Callable[[], int]]] = [
            ("get by id", lambda: client.get(f"/memory/memories/{memory_id}").status_code),
            ("list, page of 50", lambda: client.get("/memory/memories", {"user_id": USER}).status_code),
            (
                "search",
                lambda: (
                    client.get(
                        "/memory/relevant", {"user_id": USER, "query": "what does the user say about flights"}
                    ).status_code
                ),
            ),
        ]
        results = []
        for name, call in requests:
            with override_settings(MEMORY_CACHE={**settings.MEMORY_CACHE, "ENABLED": False}):
                cold = _measure(args.repeat, call)
            call()  # fills both tiers
            warm = _measure(args.repeat, call)
            results.append((name, cold, warm))

    print(f"user with {args.memories} memories, {args.repeat} requests each; cold = cache disabled (PostgreSQL)")
    print(
        f"{'read':18} {'cold p50':>9} {'p95':>7} {'queries':>8}   {'warm p50':>9} {'p95':>7} {'queries':>8}   speedup"
    )
    for name, (cold_p50, cold_p95, cold_q), (warm_p50, warm_p95, warm_q) in results:
        print(
            f"{name:18} {cold_p50:8.2f}ms {cold_p95:6.2f}ms {cold_q:8.1f}   "
            f"{warm_p50:8.2f}ms {warm_p95:6.2f}ms {warm_q:8.1f}   {cold_p50 / warm_p50:5.1f}x"
        )
    print("spec (001/003): cached queries < 1 ms, 10-50x faster than the database path, 0 queries for a cached get")


if __name__ == "__main__":
    main()
