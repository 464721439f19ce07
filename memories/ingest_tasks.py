"""django-q2 tasks of transcript ingestion, and their schedules. Thin wrappers over memories.ingest."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS
from django_q.models import Schedule

from memories.ingest import process_queued, process_transcript
from memories.retention import retention_apply
from memories.schedules import ensure_schedule
from memoryproject.retries import retry_database_errors

PROCESS_SCHEDULE = "memories.process_transcripts"
RETENTION_SCHEDULE = "memories.transcript_retention"
RETENTION_INTERVAL_MINUTES = 24 * 60


@retry_database_errors
def process_transcript_task(transcript_id: str) -> dict[str, Any]:
    """Queued by store_raw on commit: process that one transcript (nothing if another worker took it)."""
    return asdict(process_transcript(transcript_id=transcript_id))


@retry_database_errors
def process_queued_task() -> dict[str, Any]:
    """Every minute: due retries, transcripts whose task was lost, and those of workers that died."""
    return asdict(process_queued(limit=int(settings.INGEST["BATCH_SIZE"])))


@retry_database_errors
def apply_retention_task() -> dict[str, Any]:
    """Daily: the whole retention of memories.retention (expired memories, old transcripts, old sessions)."""
    return asdict(retention_apply())


def ensure_ingest_schedules(*, using: str = DEFAULT_DB_ALIAS) -> list[Schedule]:
    """The processing schedule (every minute) and the retention schedule (daily), each exactly once.

    The retention schedule kept its name from when it only deleted transcripts:
    a new name would leave the old schedule behind in existing databases."""
    return [
        ensure_schedule(name=PROCESS_SCHEDULE, func=process_queued_task, minutes=1, using=using),
        ensure_schedule(
            name=RETENTION_SCHEDULE,
            func=apply_retention_task,
            minutes=RETENTION_INTERVAL_MINUTES,
            using=using,
        ),
    ]
