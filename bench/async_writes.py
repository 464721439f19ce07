"""Fire-and-forget writes against synchronous ones, in process, against the real servers.

    .venv/bin/python bench/async_writes.py [--repeat 200]

Times --repeat single stores through Django's test client, first synchronous
(`POST /memory/memories`: the model call is in the request), then with
`?async=true` (the row is stored without its vector; 202). The async writes
are made back to back, as an agent's burst would be, while a background
worker embeds them: django-q2's worker is stood in for by a thread that
starts the real embedder task (memories.embedder.drain) Q_POLL seconds after
each enqueue, the broker's polling delay. Prints p50/p95/p99 of both, how
many tasks the burst enqueued, how many model calls (batches) embedded it,
and how long after the last write every memory had its vector.

The embedder thread shares this process (and its GIL) with the requests, so
the async numbers are if anything pessimistic. The account is deleted at the end.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.db import connection
from support import TOPICS, arguments, bench_account, timed

import memories.embedder as embedder
from memories.models import Memory

# django-q2's ORM broker is polled this often: an enqueued task waits up to this long.
POLL_SECONDS = float(str(settings.Q_CLUSTER["poll"]))


def _percentiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    return statistics.median(ordered), at(0.95), at(0.99)


class StandInWorker:
    """Runs the embedder task in a thread when it is enqueued, after the broker's poll delay."""

    def __init__(self) -> None:
        self.enqueued = 0
        self.batches = 0
        self.calls = 0
        self.threads: list[threading.Thread] = []

    def enqueue(self) -> None:
        self.enqueued += 1
        thread = threading.Thread(target=self._run)
        self.threads.append(thread)
        thread.start()

    def _run(self) -> None:
        try:
            time.sleep(POLL_SECONDS)
            result = embedder.drain()
            self.batches += result.batches
            self.calls += result.calls
        finally:
            connection.close()

    def join(self) -> None:
        for thread in list(self.threads):
            thread.join()


def main() -> None:
    args = arguments(__doc__)
    worker = StandInWorker()
    embedder._enqueue = worker.enqueue
    config = settings.ASYNC_WRITES

    with bench_account() as (account, client):

        def store(path: str, user: str) -> Callable[[int], int]:
            return lambda i: (
                client.post(
                    path, {"user_id": user, "content": f"Fresh fact {i} about {TOPICS[i % 10]} {i * 31}"}, format="json"
                ).status_code
            )

        # Warm-up: the model, the connections, the cached API key.
        timed(5, store("/memory/memories", "warm-up"))
        worker.join()
        sync = timed(args.repeat, store("/memory/memories", "bench-sync"))
        fire_and_forget = timed(args.repeat, store("/memory/memories?async=true", "bench-async"))
        last_write = time.perf_counter()
        pending = Memory.objects.filter(account=account, user_id="bench-async", embedding__isnull=True)
        while pending.exists():
            time.sleep(0.005)
        all_embedded_ms = (time.perf_counter() - last_write) * 1000
        worker.join()

    print(
        f"{args.repeat} single stores each; embedder batch size {config['BATCH_SIZE']}, "
        f"flush interval {config['FLUSH_INTERVAL'] * 1000:.0f} ms, "
        f"broker poll {POLL_SECONDS * 1000:.0f} ms"
    )
    print(f"{'write':32} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for name, samples in (("sync (embeds in the request)", sync), ("async=true (202, embeds later)", fire_and_forget)):
        p50, p95, p99 = _percentiles(samples)
        print(f"{name:32} {p50:8.2f} {p95:8.2f} {p99:8.2f}")
    print(
        f"burst of {args.repeat} async writes: {worker.enqueued} embedder task(s) enqueued, "
        f"{worker.batches} batch(es) in {worker.calls} model call(s); "
        f"every vector stored {all_embedded_ms:.0f} ms after the last write"
    )


if __name__ == "__main__":
    main()
