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

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "memoryproject.settings")

import django

django.setup()

from django.db import connection  # noqa: E402
from django.test import override_settings  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

from memories.models import Account, ApiKey  # noqa: E402

TOPICS = ["flights", "food", "family", "work", "music", "sports", "health", "books", "travel", "pets"]


def _measure(repeat: int, call: Callable[[], int]) -> tuple[float, float, float]:
    """(p50 ms, p95 ms, database queries per request)."""
    samples = []
    with CaptureQueriesContext(connection) as queries:
        for _ in range(repeat):
            started = time.perf_counter()
            status = call()
            samples.append((time.perf_counter() - started) * 1000)
            if status >= 400:
                raise SystemExit(f"request failed with {status}")
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))], len(queries) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memories", type=int, default=2_000, help="memories of the measured user")
    parser.add_argument("--repeat", type=int, default=200, help="requests per measurement")
    args = parser.parse_args()

    from django.conf import settings

    account = Account.objects.create(name=f"bench-{time.time_ns()}")
    try:
        _, key = ApiKey.generate(account=account, name="bench")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
        for offset in range(0, args.memories, 1_000):
            items = [
                {"user_id": "bench-user", "content": f"Note {n}: about {TOPICS[n % 10]}, detail {n * 7919 % 10007}"}
                for n in range(offset, min(offset + 1_000, args.memories))
            ]
            assert client.post("/memory/memories/batch", {"memories": items}, format="json").status_code == 201
        memory_id = client.get("/memory/memories", {"user_id": "bench-user", "limit": "1"}).json()["results"][0]["id"]
        requests: list[tuple[str, Callable[[], int]]] = [
            ("get by id", lambda: client.get(f"/memory/memories/{memory_id}").status_code),
            ("list, page of 50", lambda: client.get("/memory/memories", {"user_id": "bench-user"}).status_code),
            (
                "search",
                lambda: (
                    client.get(
                        "/memory/relevant", {"user_id": "bench-user", "query": "what does the user say about flights"}
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
    finally:
        account.delete()

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
