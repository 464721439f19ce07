"""django-q2 tasks and their schedules. Tasks are thin wrappers over services."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS
from django_q.models import Schedule

from memories.access import flush_access_counts
from memories.embedder import drain, embed_pending
from memories.schedules import ensure_schedule
from memoryproject.retries import retry_database_errors

ACCESS_FLUSH_SCHEDULE = "memories.flush_access_counts"
EMBED_SWEEP_SCHEDULE = "memories.sweep_pending_embeddings"


@retry_database_errors
def flush_access_counts_task() -> dict[str, Any]:
    """Apply the reads counted in Redis to access_count; the result shows in the admin."""
    return asdict(flush_access_counts(batch_size=settings.ACCESS_TRACKING["FLUSH_BATCH_SIZE"]))


def ensure_access_flush_schedule(*, using: str = DEFAULT_DB_ALIAS) -> Schedule:
    """The schedule of flush_access_counts_task: one, every FLUSH_INTERVAL_MINUTES."""
    return ensure_schedule(
        name=ACCESS_FLUSH_SCHEDULE,
        func=flush_access_counts_task,
        minutes=settings.ACCESS_TRACKING["FLUSH_INTERVAL_MINUTES"],
        using=using,
    )


@retry_database_errors
def embed_pending_task() -> dict[str, Any]:
    """Enqueued by memories.embedder.request_embedding after async writes: embed until none is pending."""
    return asdict(drain())


@retry_database_errors
def sweep_pending_embeddings_task() -> dict[str, Any]:
    """The sweeper: embed what a crashed worker or a lost task left pending."""
    return {"embedded": embed_pending()}


def ensure_embed_sweep_schedule(*, using: str = DEFAULT_DB_ALIAS) -> Schedule:
    """The sweeper of pending embeddings (memories.embedder): one, every SWEEP_INTERVAL_MINUTES."""
    return ensure_schedule(
        name=EMBED_SWEEP_SCHEDULE,
        func=sweep_pending_embeddings_task,
        minutes=settings.ASYNC_WRITES["SWEEP_INTERVAL_MINUTES"],
        using=using,
    )
