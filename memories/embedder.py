"""The background embedder: fills in the vectors of memories stored without
one (fire-and-forget writes, `?async=true`).

Pending rows are the queue: `embedding IS NULL`, read oldest first through
the partial index memory_pending_embedding. A claimer locks a batch with
`FOR UPDATE SKIP LOCKED`, embeds it in one model call and stores the vectors
in the same transaction, so two claimers never embed the same row, and a
claimer that dies (or whose model call fails) rolls back and leaves its rows
pending for the next one. The row locks are held during the model call: a
writer changing one of those memories waits for that one batch, and in
exchange can never have its new text overwritten by the old text's vector.

Who claims: after an async write commits, `request_embedding` enqueues one
django-q2 task that embeds until the queue is empty. A Redis flag (SET NX)
says one is already on its way, so a burst of writes enqueues about one task,
not one per write. A schedule (the sweeper, every minute) drains whatever a
crashed worker or a lost task left behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django_q.tasks import async_task
from django_redis import get_redis_connection
from prometheus_client import Counter, Histogram
from redis.exceptions import RedisError

from memories.embedding import get_embedder
from memories.invalidation import users_changed
from memories.models import Memory

logger = logging.getLogger(__name__)

BATCH_SIZES = Histogram(
    "memory_embedder_batch_size",
    "Pending memories embedded per model call by the background embedder",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
EMBEDDED = Counter("memory_embedder_embedded_total", "Pending memories given their vector by the background embedder")

TASK = "memories.tasks.embed_pending_task"
# Long enough to cover a task waiting in the broker and running; if a task dies
# holding it, writes meanwhile are left to the sweeper, at most a minute later.
FLAG_SECONDS = 60


def _flag_key() -> str:
    # The cache's prefix, so that two deployments sharing a Redis keep apart.
    prefix = settings.CACHES["default"].get("KEY_PREFIX", "")
    return f"{prefix}:embedder:scheduled" if prefix else "embedder:scheduled"


def _settings() -> dict[str, Any]:
    return dict(settings.ASYNC_WRITES)


def embed_pending_batch(*, limit: int) -> int:
    """Claim up to `limit` pending memories, oldest first, embed them in one
    model call and store the vectors; return how many. A model error rolls
    the claim back (the rows stay pending) and propagates."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    embedder = get_embedder()
    with transaction.atomic():
        rows = list(
            Memory.objects.filter(embedding__isnull=True)
            .order_by("created_at")
            .select_for_update(skip_locked=True)
            .values_list("pk", "content", "account_id", "namespace", "user_id")[:limit]
        )
        if not rows:
            return 0
        vectors = embedder.embed([content for _, content, *_ in rows])
        Memory.objects.bulk_update(
            [
                Memory(pk=pk, embedding=vector, embedding_model=embedder.model_name)
                for (pk, *_), vector in zip(rows, vectors, strict=True)
            ],
            ["embedding", "embedding_model"],
        )
        # Cached memories show `embedding: null`, and cached searches ranked
        # these rows without their similarity: both must be recomputed.
        users_changed({(account_id, namespace, user_id) for _, _, account_id, namespace, user_id in rows})
    BATCH_SIZES.observe(len(rows))
    EMBEDDED.inc(len(rows))
    return len(rows)


def embed_pending(
    *, limit: int | None = None, batch_size: int | None = None, on_progress: Callable[[int], None] | None = None
) -> int:
    """Embed pending memories batch by batch until none is left (or `limit`
    are done); return how many. Rows locked by another claimer are skipped,
    not waited for: that claimer embeds them."""
    size = batch_size or int(_settings()["BATCH_SIZE"])
    done = 0
    while limit is None or done < limit:
        claimed = embed_pending_batch(limit=size if limit is None else min(size, limit - done))
        if not claimed:
            break
        done += claimed
        if on_progress is not None:
            on_progress(claimed)
    return done


def pending_count() -> int:
    return Memory.objects.filter(embedding__isnull=True).count()


# -- scheduling -------------------------------------------------------------------


def _enqueue() -> None:
    async_task(TASK, task_name="memories.embed_pending")


def request_embedding() -> None:
    """Ask for the pending memories to be embedded soon: enqueue the embedder
    task unless one is already on its way. Called after an async write commits.

    Never raises: the write is committed and answered whatever happens here,
    and the sweeper embeds what a missed request leaves behind.
    """
    try:
        try:
            first = bool(get_redis_connection("default").set(_flag_key(), "1", nx=True, ex=FLAG_SECONDS))
        except (RedisError, OSError):
            first = True  # Redis down: more tasks rather than a minute's wait for the sweeper
        if first:
            _enqueue()
    except Exception:
        logger.exception("could not enqueue the embedder; the sweeper will embed the pending memories")


def _clear_flag() -> None:
    try:
        get_redis_connection("default").delete(_flag_key())
    except (RedisError, OSError):
        # It expires by itself; meanwhile writes leave their rows to the sweeper.
        logger.warning("could not clear the embedder's flag in Redis", exc_info=True)


@dataclass(frozen=True)
class DrainResult:
    embedded: int
    batches: int
    seconds: float


def drain(*, budget_seconds: float | None = None, sleep: Callable[[float], None] = time.sleep) -> DrainResult:
    """The task's loop: embed until the queue is empty, coalescing a trickle of
    writes into batches of up to BATCH_SIZE, one per FLUSH_INTERVAL at most.

    The flag is cleared only when the queue looks empty, and the queue is
    looked at once more after that: a write that committed before the clear
    is seen by this look, one after it enqueues a new task. Past the budget
    the task hands over to a fresh one instead of outliving django-q's timeout.
    """
    config = _settings()
    size = int(config["BATCH_SIZE"])
    flush = float(config["FLUSH_INTERVAL"])
    budget = budget_seconds if budget_seconds is not None else min(60.0, float(str(settings.Q_CLUSTER["timeout"])) / 2)
    started = time.monotonic()
    embedded = batches = 0
    cleared = False
    # A burst's first writes wake the task: give the rest of it time to land.
    sleep(flush)
    while True:
        claimed = embed_pending_batch(limit=size)
        if claimed:
            embedded += claimed
            batches += 1
        if time.monotonic() - started >= budget:
            _clear_flag()
            request_embedding()
            break
        if claimed >= size:
            continue  # a backlog: no reason to wait
        if claimed == 0:
            if cleared:
                break
            _clear_flag()
            cleared = True
            continue
        sleep(flush)
    return DrainResult(embedded=embedded, batches=batches, seconds=round(time.monotonic() - started, 3))
