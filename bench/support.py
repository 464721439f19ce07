"""What the API benchmarks share: Django set up against the configured (or
embedded) servers, and a throwaway account whose user holds N memories."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "memoryproject.settings")

import django

django.setup()

from django.core.management import call_command  # noqa: E402

# A checkout with a new migration must not be measured against the old schema
# (a bench writes rows as the new code does); `make run` migrates the same way.
call_command("migrate", interactive=False, verbosity=0)

from django.db import connection  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

from memories.models import Account, ApiKey, Memory  # noqa: E402

__all__ = [
    "TOPICS",
    "USER",
    "APIClient",
    "BenchUser",
    "arguments",
    "bench_account",
    "bench_user",
    "delete_account",
    "memory_text",
    "timed",
    "timings",
]

TOPICS = ["flights", "food", "family", "work", "music", "sports", "health", "books", "travel", "pets"]
USER = "bench-user"

# memory_text's parts. Their sizes are distinct primes, so text n takes part
# n mod size from each: the first 323,323 texts are distinct, and two texts
# below 17,017 share at most 3 of the 5 parts. Ids or numbers alone would not
# do: "Note 1: ... detail 7919" and "Note 11: ... detail 6982" are 0.95 alike
# for the model, and the write path merges them as near-duplicates.
_WHO = ("The user", "Their sister", "Their boss", "A close friend", "The neighbour", "Their son", "Their doctor")
_DID = (
    "loves", "is learning", "hates", "wants to try", "reads about", "teaches",
    "worries about", "recommends", "gave up", "asked about", "collects",
)  # fmt: skip
_WHAT = (
    "Italian cooking", "marathon running", "jazz piano", "old cameras", "stocks", "climbing", "Japanese",
    "tomatoes", "electric cars", "board games", "birds", "sourdough", "chess",
)  # fmt: skip
_WHEN = (
    "in Berlin", "since June", "every winter", "via podcasts", "for Mexico", "with colleagues", "on Sundays",
    "on trains", "despite injury", "on a budget", "since college", "for charity", "on leave", "downtown",
    "before exams", "on holiday", "at night",
)  # fmt: skip
_HOW = (
    "badly", "happily", "for the blog", "cheaply", "with the team", "with the cat", "with new gear",
    "after an argument", "to relax", "forgetfully", "weekly", "on a dare", "proudly", "at the third try",
    "with strangers", "in the rain", "again", "expensively", "with photos",
)  # fmt: skip


def memory_text(n: int) -> str:
    """The n-th of many distinct memory-like sentences (57 characters, 14 tokens on
    average); no two of the first 3,000 are more than 0.93 alike (cosine), below
    the write path's near-duplicate threshold of 0.95."""
    return f"{_WHO[n % 7]} {_DID[n % 11]} {_WHAT[n % 13]} {_WHEN[n % 17]}, {_HOW[n % 19]}."


@dataclass(frozen=True)
class BenchUser:
    account: Account
    client: APIClient
    # The newest of the user's memories.
    memory_id: str
    load_seconds: float


@contextmanager
def bench_account() -> Iterator[tuple[Account, APIClient]]:
    """A new account and an API client with its key; the account and all it holds are deleted after."""
    account = Account.objects.create(name=f"bench-{time.time_ns()}")
    try:
        _, key = ApiKey.generate(account=account, name="bench")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
        yield account, client
    finally:
        delete_account(account)


def delete_account(account: Account) -> None:
    """Delete a bench account and all it holds, and vacuum after a large
    deletion now: otherwise autovacuum starts a little later, in the middle of
    the next part's measurements, and vacuums the HNSW index too (seconds of
    both cores). `make bench`'s HTTP rows once ran beside the vacuum of the
    recall part's 100,000 rows: `/health` took 2.1 ms at p50 instead of 0.7."""
    memories = Memory.objects.filter(account=account).count()
    account.delete()
    if memories >= 1_000:
        with connection.cursor() as cursor:
            cursor.execute("VACUUM (ANALYZE) memories_memory")


@contextmanager
def bench_user(memories: int) -> Iterator[BenchUser]:
    """A new account whose user gets `memories` memories through the batch
    endpoint (one embedding call per 1,000). Everything is deleted after."""
    with bench_account() as (account, client):
        started = time.perf_counter()
        for offset in range(0, memories, 1_000):
            items = [
                {
                    "user_id": USER,
                    "content": memory_text(n),
                    "tags": [TOPICS[n % 10]],
                }
                for n in range(offset, min(offset + 1_000, memories))
            ]
            response = client.post("/memory/memories/batch", {"memories": items}, format="json")
            assert response.status_code == 201, response.content[:300]
        load_seconds = time.perf_counter() - started
        memory_id = client.get("/memory/memories", {"user_id": USER, "limit": "1"}).json()["results"][0]["id"]
        yield BenchUser(account=account, client=client, memory_id=memory_id, load_seconds=load_seconds)


def arguments(doc: str | None) -> argparse.Namespace:
    """--memories and --repeat, with the script's docstring as its --help."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memories", type=int, default=2_000, help="memories of the measured user")
    parser.add_argument("--repeat", type=int, default=200, help="requests per measurement")
    return parser.parse_args()


def timings(
    repeat: int, call: Callable[[int], object], *, before: Callable[[int], object] | None = None
) -> list[float]:
    """Milliseconds of each of `repeat` calls (given its index); `before(index)`, untimed, ahead of each."""
    samples = []
    for index in range(repeat):
        if before is not None:
            before(index)
        started = time.perf_counter()
        call(index)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def timed(repeat: int, call: Callable[[int], int]) -> list[float]:
    """Milliseconds of `repeat` calls of a request (given its index); stops at an error status."""

    def checked(index: int) -> None:
        status = call(index)
        if status >= 400:
            raise SystemExit(f"request failed with {status}")

    return timings(repeat, checked)
