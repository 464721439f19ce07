"""How long memory operations take: a histogram per operation, and a log line for each slow one.

Every memory operation (store, batch, get, list, search, and the work behind
them: embed, extract, preload) runs inside `operation(...)`. Its duration goes
to memory_operation_duration_seconds{operation}; one that takes at least
SLOW_OPERATION_MS (100 by default) also counts in
memory_slow_operations_total{operation} and is logged by `memories.slow` as
one JSON line: operation, account, user, sizes, milliseconds, and the error
if it failed, so that a log search finds the slow ones without parsing prose.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from django.conf import settings
from prometheus_client import Counter, Histogram

OPERATIONS = ("store", "batch", "get", "list", "search", "embed", "extract", "preload")

DURATION = Histogram(
    "memory_operation_duration_seconds",
    "Duration of memory operations",
    ["operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
SLOW = Counter("memory_slow_operations_total", "Memory operations at or over SLOW_OPERATION_MS", ["operation"])

logger = logging.getLogger("memories.slow")
DEFAULT_SLOW_MS = 100.0


@contextmanager
def operation(
    name: str, *, account_id: int | None = None, user_id: str | None = None, **sizes: int
) -> Iterator[dict[str, int]]:
    """Time the block as operation `name`. The block may add sizes it learns
    (rows found) to the dict it is given; they go into the slow line."""
    if name not in OPERATIONS:
        raise ValueError(f"unknown operation {name!r}")
    started = time.perf_counter()
    error: str | None = None
    try:
        yield sizes
    except BaseException as failure:
        error = type(failure).__name__
        raise
    finally:
        seconds = time.perf_counter() - started
        DURATION.labels(name).observe(seconds)
        if seconds * 1000 >= _slow_ms():
            SLOW.labels(name).inc()
            line: dict[str, Any] = {
                "event": "slow_operation",
                "operation": name,
                "account": account_id,
                "user": user_id,
                "ms": round(seconds * 1000, 1),
                **sizes,
            }
            if error is not None:
                line["error"] = error
            logger.warning(orjson.dumps(line).decode())


def _slow_ms() -> float:
    # The embedder also runs outside Django (bench/embedding.py, the generator's workers).
    return float(settings.SLOW_OPERATION_MS) if settings.configured else DEFAULT_SLOW_MS
