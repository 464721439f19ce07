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

from rest_framework.test import APIClient  # noqa: E402

from memories.models import Account, ApiKey  # noqa: E402

__all__ = ["TOPICS", "USER", "APIClient", "BenchUser", "arguments", "bench_account", "bench_user", "timed"]

TOPICS = ["flights", "food", "family", "work", "music", "sports", "health", "books", "travel", "pets"]
USER = "bench-user"


@dataclass(frozen=True)
class BenchUser:
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
        account.delete()


@contextmanager
def bench_user(memories: int) -> Iterator[BenchUser]:
    """A new account whose user gets `memories` memories through the batch
    endpoint (one embedding call per 1,000). Everything is deleted after."""
    with bench_account() as (_, client):
        started = time.perf_counter()
        for offset in range(0, memories, 1_000):
            items = [
                {
                    "user_id": USER,
                    "content": f"Note {n}: the user mentioned {TOPICS[n % 10]} and detail number {n * 7919 % 10007}",
                    "tags": [TOPICS[n % 10]],
                }
                for n in range(offset, min(offset + 1_000, memories))
            ]
            response = client.post("/memory/memories/batch", {"memories": items}, format="json")
            assert response.status_code == 201, response.content[:300]
        load_seconds = time.perf_counter() - started
        memory_id = client.get("/memory/memories", {"user_id": USER, "limit": "1"}).json()["results"][0]["id"]
        yield BenchUser(client=client, memory_id=memory_id, load_seconds=load_seconds)


def arguments(doc: str | None) -> argparse.Namespace:
    """--memories and --repeat, with the script's docstring as its --help."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memories", type=int, default=2_000, help="memories of the measured user")
    parser.add_argument("--repeat", type=int, default=200, help="requests per measurement")
    return parser.parse_args()


def timed(repeat: int, call: Callable[[int], int]) -> list[float]:
    """Milliseconds of `repeat` calls of a request (given its index); stops at an error status."""
    samples = []
    for index in range(repeat):
        started = time.perf_counter()
        status = call(index)
        samples.append((time.perf_counter() - started) * 1000)
        if status >= 400:
            raise SystemExit(f"request failed with {status}")
    return samples
