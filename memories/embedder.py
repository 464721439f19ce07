"""The background embedder: fills in the vectors of memories stored without
one (fire-and-forget writes, `?async=true`).

Pending rows are the queue: `embedding IS NULL` and not given up on, read
oldest first through the partial index memory_embedding_queue. A claimer locks
a batch of due rows with `FOR UPDATE SKIP LOCKED`, embeds it in one model call
and stores the vectors in the same transaction, so two claimers never embed the
same row, and a claimer that dies rolls back and leaves its rows pending for
the next one. The row locks are held during the model call: a writer changing
one of those memories waits for that one batch, and in exchange can never have
its new text overwritten by the old text's vector.

A text the model always rejects must not block the queue's head: when the
batch's call fails, memories.embedder_isolation finds the failing texts (and
tells them from an outage of the whole provider). The others are stored; each
failing row gets an attempt, its error and a backoff, and after MAX_ATTEMPTS
is given up: it stays stored, readable and found by keyword, shown in the admin
as failed to embed, and out of the queue until its content changes. When the
provider itself is down, no row is charged: what was embedded is stored, the
rest stays pending for the sweeper, and the error propagates.

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
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django_q.tasks import async_task
from django_redis import get_redis_connection
from prometheus_client import Counter, Histogram
from redis.client import Pipeline
from redis.exceptions import RedisError

from memories.embedder_isolation import embed_isolating
from memories.embedding import get_embedder
from memories.invalidation import users_changed
from memories.models import Memory
from memories.vectors import vectors_store

logger = logging.getLogger(__name__)

BATCH_SIZES = Histogram(
    "memory_embedder_batch_size",
    "Pending memories embedded per model call by the background embedder",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
EMBEDDED = Counter("memory_embedder_embedded_total", "Pending memories given their vector by the background embedder")
MODEL_CALLS = Counter(
    "memory_embedder_model_calls_total",
    "Model calls of the background embedder, with those isolating a failing text and the provider probes",
    ["result"],
)
ROW_FAILURES = Counter(
    "memory_embedder_row_failures_total", "Attempts that failed on a pending memory's own text (others embedded)"
)
GAVE_UP = Counter(
    "memory_embedder_gave_up_total", "Pending memories left without a vector after ASYNC_EMBED_MAX_ATTEMPTS"
)
PROVIDER_FAILURES = Counter(
    "memory_embedder_provider_failures_total",
    "Claimed batches left pending because the embedding provider failed as a whole (no row charged)",
)
for _result in ("ok", "error"):
    MODEL_CALLS.labels(_result)

# The background embedder's record of a row's failures; cleared when its content changes.
FAILURE_FIELDS = ("embedding_attempts", "embedding_error", "embedding_next_attempt_at", "embedding_failed_at")

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


def embedding_queue() -> QuerySet[Memory]:
    """Memories waiting for a vector that the embedder has not given up on (the index memory_embedding_queue)."""
    return Memory.objects.filter(embedding__isnull=True, embedding_failed_at__isnull=True)


def embedding_failed() -> QuerySet[Memory]:
    """Memories the embedder gave up on (the index memory_embedding_failed)."""
    return Memory.objects.filter(embedding__isnull=True, embedding_failed_at__isnull=False)


def clear_embedding_failure(memory: Memory) -> None:
    """Forget the failures of the row's old text: its new text goes back to the queue (the caller saves)."""
    memory.embedding_attempts = 0
    memory.embedding_error = ""
    memory.embedding_next_attempt_at = None
    memory.embedding_failed_at = None


def embedding_retry(*, queryset: QuerySet[Memory]) -> int:
    """Give the queryset's memories without a vector a fresh set of attempts, due now (the admin's
    action, once a provider or a text is fixed); return how many were queued."""
    count = queryset.filter(embedding__isnull=True).update(
        embedding_attempts=0, embedding_error="", embedding_next_attempt_at=None, embedding_failed_at=None
    )
    if count:
        transaction.on_commit(request_embedding)
    return count


def embedding_retry_delay(attempts: int) -> timedelta:
    """Backoff after `attempts` failed attempts of a row: base * 2**(attempts-1), capped."""
    config = _settings()
    seconds = min(float(config["RETRY_MAX_SECONDS"]), float(config["RETRY_BASE_SECONDS"]) * 2 ** max(attempts - 1, 0))
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class BatchResult:
    claimed: int = 0
    embedded: int = 0
    # Rows whose own text failed this time (an attempt each); given_up of them for good.
    failed: int = 0
    given_up: int = 0
    calls: int = 0


def _failure(pk: Any, previous_attempts: int, error: str, now: datetime) -> Memory:
    attempts = previous_attempts + 1
    give_up = attempts >= int(_settings()["MAX_ATTEMPTS"])
    return Memory(
        pk=pk,
        embedding_attempts=attempts,
        embedding_error=error,
        embedding_next_attempt_at=None if give_up else now + embedding_retry_delay(attempts),
        embedding_failed_at=now if give_up else None,
    )


def embed_pending_batch(*, limit: int) -> BatchResult:
    """Claim up to `limit` due pending memories, oldest first, embed them (one
    model call, unless a text fails) and store the vectors.

    A text that fails on its own is isolated: the others are stored, and its
    row is charged an attempt (or given up). When the provider fails as a
    whole, no row is charged: the vectors obtained before are stored, the
    other rows stay pending, and the provider's error is raised.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    embedder = get_embedder()
    now = timezone.now()
    with transaction.atomic():
        rows = list(
            embedding_queue()
            .filter(Q(embedding_next_attempt_at__isnull=True) | Q(embedding_next_attempt_at__lte=now))
            .order_by("created_at")
            .select_for_update(skip_locked=True)
            .values_list("pk", "content", "account_id", "namespace", "user_id", "embedding_attempts")[:limit]
        )
        if not rows:
            return BatchResult()
        outcome = embed_isolating(embedder.embed, [content for _, content, *_ in rows])
        if outcome.vectors:
            vectors_store(
                vectors=[(rows[position][0], vector) for position, vector in outcome.vectors.items()],
                model_name=embedder.model_name,
            )
            embedded = [rows[position] for position in outcome.vectors]
            retried = [row[0] for row in embedded if row[5]]
            if retried:
                Memory.objects.filter(pk__in=retried).update(
                    embedding_attempts=0, embedding_error="", embedding_next_attempt_at=None
                )
            # Cached memories show `embedding: null`, and cached searches ranked
            # these rows without their similarity: both must be recomputed.
            users_changed({(account_id, namespace, user_id) for _, _, account_id, namespace, user_id, _ in embedded})
        failures = [
            _failure(rows[position][0], rows[position][5], error, now) for position, error in outcome.errors.items()
        ]
        if failures:
            Memory.objects.bulk_update(failures, list(FAILURE_FIELDS))
    given_up = sum(1 for failure in failures if failure.embedding_failed_at is not None)
    for position, error in outcome.errors.items():
        logger.warning("memory %s could not be embedded on its own: %s", rows[position][0], error)
    for size in outcome.sizes:
        BATCH_SIZES.observe(size)
    EMBEDDED.inc(len(outcome.vectors))
    MODEL_CALLS.labels("ok").inc(outcome.calls - outcome.failed_calls)
    MODEL_CALLS.labels("error").inc(outcome.failed_calls)
    ROW_FAILURES.inc(len(failures))
    GAVE_UP.inc(given_up)
    if outcome.outage is not None:
        PROVIDER_FAILURES.inc()
        raise outcome.outage
    return BatchResult(
        claimed=len(rows), embedded=len(outcome.vectors), failed=len(failures), given_up=given_up, calls=outcome.calls
    )


def embed_pending(
    *, limit: int | None = None, batch_size: int | None = None, on_progress: Callable[[int], None] | None = None
) -> int:
    """Embed pending memories batch by batch until none is left (or `limit`
    are done); return how many. Rows locked by another claimer are skipped,
    not waited for: that claimer embeds them."""
    size = batch_size or int(_settings()["BATCH_SIZE"])
    # `limit` bounds the rows handled, embedded or not: rows failing on their own must not loop forever.
    handled = embedded = 0
    while limit is None or handled < limit:
        result = embed_pending_batch(limit=size if limit is None else min(size, limit - handled))
        if not result.claimed:
            break
        handled += result.claimed
        embedded += result.embedded
        if on_progress is not None:
            on_progress(result.claimed)
    return embedded


def pending_count() -> int:
    return embedding_queue().count()


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
        first = bool(get_redis_connection("default").set(_flag_key(), "1", nx=True, ex=FLAG_SECONDS))
    except (RedisError, OSError):
        first = True  # Redis down: more tasks rather than a minute's wait for the sweeper
    except Exception:
        logger.exception("could not enqueue the embedder; the sweeper will embed the pending memories")
        return
    enqueue_unless_flagged(first=first)


def queue_flag(pipeline: Pipeline) -> None:
    """request_embedding's SET NX, queued on a pipeline that another round trip
    sends (a fire-and-forget store's invalidation after its commit); its reply
    goes to enqueue_unless_flagged."""
    pipeline.set(_flag_key(), "1", nx=True, ex=FLAG_SECONDS)


def enqueue_unless_flagged(*, first: bool) -> None:
    """request_embedding's second half: enqueue the task when this write set the
    flag (`first`), or when Redis could not say. Never raises, as request_embedding."""
    try:
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
    # Claims that found rows; model calls, more than one for a batch with a failing text.
    batches: int
    seconds: float
    calls: int = 0
    failed: int = 0


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
    embedded = batches = calls = failed = 0
    cleared = False
    # A burst's first writes wake the task: give the rest of it time to land.
    sleep(flush)
    while True:
        result = embed_pending_batch(limit=size)
        claimed = result.claimed
        if claimed:
            embedded += result.embedded
            batches += 1
            calls += result.calls
            failed += result.failed
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
    return DrainResult(
        embedded=embedded, batches=batches, seconds=round(time.monotonic() - started, 3), calls=calls, failed=failed
    )
