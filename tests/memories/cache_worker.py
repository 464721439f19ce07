"""A child process for the cache tests (run as `python -m tests.memories.cache_worker ROLE ...`).

writer MEMORY_ID N: updates the memory's content to "version i" for i = 1..N
through the services, and after each update returns, records i in Redis.
reader MEMORY_ID ACCOUNT_ID SECONDS: reads the memory through the cached
selector in a loop; before each read it notes the last version known to be
written; a read older than that is a stale read, printed and counted.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "memoryproject.settings")
django.setup()

from django_redis import get_redis_connection  # noqa: E402

from memories import selectors, services  # noqa: E402
from memories.models import Account, Memory  # noqa: E402

DONE_KEY = "test:cache-worker:written"


def _version(content: str) -> int:
    return int(content.rsplit(" ", 1)[1]) if content.startswith("version ") else 0


def writer(memory_id: uuid.UUID, count: int) -> None:
    redis = get_redis_connection("default")
    for version in range(1, count + 1):
        memory = Memory.objects.get(pk=memory_id)
        services.memory_update(memory=memory, changes={"content": f"version {version}"}, actor="test:writer")
        redis.set(DONE_KEY, version)


def reader(memory_id: uuid.UUID, account_id: int, seconds: float) -> int:
    redis = get_redis_connection("default")
    account = Account.objects.get(pk=account_id)
    stale = reads = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        written = int(redis.get(DONE_KEY) or 0)
        seen = _version(selectors.memory_get(account=account, memory_id=memory_id).content)
        reads += 1
        if seen < written:
            stale += 1
            print(f"stale read: saw version {seen} after version {written} was written", flush=True)
    print(f"reads={reads} stale={stale}", flush=True)
    return stale


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "writer":
        writer(uuid.UUID(sys.argv[2]), int(sys.argv[3]))
    elif role == "reader":
        sys.exit(1 if reader(uuid.UUID(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])) else 0)
    else:
        sys.exit(f"unknown role {role!r}")
