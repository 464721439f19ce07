"""Transcript ingestion: queue whole chat sessions, and turn them into memories in the background.

The hierarchy: a RawTranscript (what the client sent) -> its Session's summary
(a `summary` memory, and Session.summary/summary_embedding) -> discrete
memories, each linked to its session and to the transcript it came from.

The queue carries only transcript ids; the rows are the truth. A worker claims
a row with a conditional update (one id) or `FOR UPDATE SKIP LOCKED` (the next
due one), which sets status `processing` and a fresh claim_id, and counts the
attempt. Everything a successful run writes (memories, links, session summary,
status `processed`, statistics) commits in one transaction, and only while the
worker still holds its claim, so a run either happened or did not. A worker
that dies leaves its row `processing`; after INGEST["STALE_CLAIM_SECONDS"] the
next cycle queues it again. Reprocessing is idempotent: extracted memories go
through memories.services (deduplicated by content and key), and memories the
previous run created that this run no longer produces are deleted.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

import orjson
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from django_q.tasks import async_task
from django_redis import get_redis_connection

from memories.extraction import Extraction, ExtractionUnavailable, get_extractor, parse_transcript
from memories.invalidation import users_changed
from memories.metrics import RAW_PROCESSED, measure_transcript
from memories.models import (
    Account,
    HistoryAction,
    Memory,
    MemoryHistory,
    MemoryKind,
    ProcessingDay,
    ProcessorHeartbeat,
    RawTranscript,
    Session,
    TranscriptStatus,
)
from memories.operations import operation
from memories.services import MemoryInput, WriteResult, memory_batch_create, memory_delete

logger = logging.getLogger(__name__)

HEARTBEAT_NAME = "background_processor"
# The spec's Redis key of the processor's status (JSON).
HEARTBEAT_REDIS_KEY = "background_processor:status"
SUMMARY_CATEGORY = "session_summary"
PROCESS_TASK = "memories.ingest_tasks.process_transcript_task"


def _config() -> dict[str, Any]:
    return dict(settings.INGEST)


class SessionConflict(Exception):
    """The session id is already a session of another user."""


# -- store_raw ---------------------------------------------------------------------------------------


def transcript_store(
    *,
    account: Account,
    namespace: str,
    user_id: str,
    session_data: str | list[dict[str, Any]],
    session_id: str | None,
    metadata: Mapping[str, Any],
) -> RawTranscript:
    """Queue a transcript: the row is committed when this returns, and the processor is asked on commit.

    `session_data` has been validated by the caller (parse_transcript accepts it).
    Raises SessionConflict when `session_id` names another user's session.
    """
    external_id = session_id or uuid.uuid4().hex
    size = len(session_data.encode() if isinstance(session_data, str) else orjson.dumps(session_data))
    with transaction.atomic():
        # Locked: retention (memories.retention) cannot delete the session between this read and the insert.
        session, _ = Session.objects.select_for_update(no_key=True).get_or_create(
            account=account,
            namespace=namespace,
            external_id=external_id,
            defaults={"user_id": user_id, "metadata": dict(metadata)},
        )
        if session.user_id != user_id:
            raise SessionConflict(f"Session {external_id!r} belongs to another user_id.")
        transcript = RawTranscript.objects.create(
            account=account,
            namespace=namespace,
            user_id=user_id,
            session=session,
            text=session_data if isinstance(session_data, str) else "",
            messages=None if isinstance(session_data, str) else session_data,
            metadata=dict(metadata),
            size_bytes=size,
        )
        transaction.on_commit(lambda: _enqueue(transcript.id))
    return transcript


def _enqueue(transcript_id: uuid.UUID) -> None:
    # Best effort: if the task cannot be queued, the every-minute schedule finds the row anyway.
    try:
        async_task(PROCESS_TASK, str(transcript_id), task_name=f"ingest-{transcript_id}")
    except Exception:
        logger.exception("could not queue transcript %s; the schedule will pick it up", transcript_id)


# -- processing --------------------------------------------------------------------------------------

# What an operator may queue again: not a transcript a worker holds right now.
_RETRYABLE = (TranscriptStatus.ERROR, TranscriptStatus.PROCESSED, TranscriptStatus.QUEUED)


@dataclass
class CycleResult:
    """What one processing cycle (or one transcript) did."""

    processed: int = 0
    retried: int = 0
    failed: int = 0
    requeued_stale: int = 0
    memories_created: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def add(self, other: CycleResult) -> None:
        self.processed += other.processed
        self.retried += other.retried
        self.failed += other.failed
        self.requeued_stale += other.requeued_stale
        self.memories_created += other.memories_created
        self.errors += other.errors


class _ClaimLost(Exception):
    """Another worker took the transcript over (ours was considered dead): write nothing."""


def retry_delay(attempts: int) -> timedelta:
    """Backoff before the next attempt, after `attempts` failed ones: base * 2**(attempts-1), capped."""
    config = _config()
    seconds = min(float(config["RETRY_MAX_SECONDS"]), float(config["RETRY_BASE_SECONDS"]) * 2 ** max(attempts - 1, 0))
    return timedelta(seconds=seconds)


def _claim_one(transcript_id: uuid.UUID | str) -> tuple[RawTranscript, uuid.UUID] | None:
    """Claim this transcript if it is queued and due (a conditional update: only one worker wins)."""
    claim_id = uuid.uuid4()
    now = timezone.now()
    claimed = RawTranscript.objects.filter(
        pk=transcript_id, status=TranscriptStatus.QUEUED, next_attempt_at__lte=now
    ).update(
        status=TranscriptStatus.PROCESSING,
        claim_id=claim_id,
        claimed_at=now,
        attempts=F("attempts") + 1,
        updated_at=now,
    )
    if not claimed:
        return None
    return RawTranscript.objects.select_related("session").get(pk=transcript_id), claim_id


def _claim_next() -> tuple[RawTranscript, uuid.UUID] | None:
    """Claim the oldest due queued transcript that no other worker is claiming right now."""
    now = timezone.now()
    with transaction.atomic():
        transcript_id = (
            RawTranscript.objects.select_for_update(skip_locked=True)
            .filter(status=TranscriptStatus.QUEUED, next_attempt_at__lte=now)
            .order_by("next_attempt_at", "created_at")
            .values_list("id", flat=True)
            .first()
        )
        if transcript_id is None:
            return None
        claim_id = uuid.uuid4()
        RawTranscript.objects.filter(pk=transcript_id).update(
            status=TranscriptStatus.PROCESSING,
            claim_id=claim_id,
            claimed_at=now,
            attempts=F("attempts") + 1,
            updated_at=now,
        )
    return RawTranscript.objects.select_related("session").get(pk=transcript_id), claim_id


def requeue_stale_claims() -> int:
    """Rows left `processing` by a worker that died: queue them again (or give up after MAX_ATTEMPTS)."""
    config = _config()
    now = timezone.now()
    stale = RawTranscript.objects.filter(
        status=TranscriptStatus.PROCESSING, claimed_at__lt=now - timedelta(seconds=float(config["STALE_CLAIM_SECONDS"]))
    )
    reason = "The worker stopped while processing this transcript."
    given_up = stale.filter(attempts__gte=config["MAX_ATTEMPTS"]).update(
        status=TranscriptStatus.ERROR, claim_id=None, last_error=reason, updated_at=now
    )
    requeued = stale.update(
        status=TranscriptStatus.QUEUED, claim_id=None, next_attempt_at=now, last_error=reason, updated_at=now
    )
    RAW_PROCESSED.labels("error").inc(given_up)
    RAW_PROCESSED.labels("retried").inc(requeued)
    return requeued + given_up


def _bump_day(transcript: RawTranscript, **increments: float) -> None:
    day = timezone.now().date()
    values = {name: F(name) + amount for name, amount in increments.items()}
    keys = {"account_id": transcript.account_id, "namespace": transcript.namespace, "day": day}
    if ProcessingDay.objects.filter(**keys).update(**values):
        return
    try:
        with transaction.atomic():
            ProcessingDay.objects.create(**keys, **increments)
    except IntegrityError:  # another worker created the day meanwhile
        ProcessingDay.objects.filter(**keys).update(**values)


def _lock_claimed(transcript_id: uuid.UUID, claim_id: uuid.UUID) -> RawTranscript:
    locked = RawTranscript.objects.select_for_update().get(pk=transcript_id)
    if locked.status != TranscriptStatus.PROCESSING or locked.claim_id != claim_id:
        raise _ClaimLost
    return locked


def _memory_inputs(transcript: RawTranscript, extraction: Extraction) -> list[MemoryInput]:
    session = transcript.session
    metadata = {"source": "transcript", "session_id": session.external_id, "raw_memory_id": str(transcript.id)}
    items = [
        MemoryInput(
            user_id=transcript.user_id,
            namespace=transcript.namespace,
            content=memory.content,
            kind=memory.kind,
            category=memory.category[:100],
            importance=min(max(float(memory.importance), 0.0), 1.0),
            metadata=metadata,
        )
        for memory in extraction.memories
        if memory.content.strip()
    ]
    if extraction.summary.strip():
        # Keyed by the session: a session's summary is refreshed in place, never duplicated.
        items.append(
            MemoryInput(
                user_id=transcript.user_id,
                namespace=transcript.namespace,
                content=extraction.summary.strip(),
                kind=MemoryKind.SUMMARY,
                category=SUMMARY_CATEGORY,
                key=f"session:{session.external_id}"[:255],
                importance=0.6,
                metadata=metadata,
            )
        )
    return items


def _store_extraction(
    transcript: RawTranscript, claim_id: uuid.UUID, extraction: Extraction, started: float
) -> CycleResult:
    actor = f"system:ingest:{transcript.id}"
    items = _memory_inputs(transcript, extraction)
    with transaction.atomic():
        locked = _lock_claimed(transcript.id, claim_id)
        previous = set(Memory.objects.filter(source_transcript=locked).values_list("id", flat=True))
        results: list[WriteResult] = (
            memory_batch_create(account=transcript.account, items=items, actor=actor) if items else []
        )
        ids = {result.memory.id for result in results}
        Memory.objects.filter(pk__in=ids).update(session=transcript.session, source_transcript=locked)
        # What an earlier run of this transcript created and this run no longer extracts.
        dropped = MemoryHistory.objects.filter(
            memory_id__in=previous - ids, action=HistoryAction.CREATE, actor=actor
        ).values_list("memory_id", flat=True)
        for memory in Memory.objects.filter(pk__in=list(dropped)):
            memory_delete(memory=memory, actor=actor)
        users_changed([(transcript.account_id, transcript.namespace, transcript.user_id)])

        summary = next((r.memory for r in results if r.memory.kind == MemoryKind.SUMMARY), None)
        if summary is not None:
            Session.objects.filter(pk=transcript.session_id).update(
                summary=summary.content, summary_embedding=summary.embedding, updated_at=timezone.now()
            )
        created = sum(1 for r in results if r.created and r.memory.kind != MemoryKind.SUMMARY)
        duration = time.perf_counter() - started
        RawTranscript.objects.filter(pk=locked.pk).update(
            status=TranscriptStatus.PROCESSED,
            claim_id=None,
            processed_at=timezone.now(),
            duration_seconds=duration,
            memories_created=created,
            last_error="",
            updated_at=timezone.now(),
        )
        _bump_day(transcript, processed=1, memories_created=created, seconds_total=duration)
    return CycleResult(processed=1, memories_created=created, seconds=duration)


def _record_failure(
    transcript: RawTranscript, claim_id: uuid.UUID, error: str, *, permanent: bool = False
) -> CycleResult:
    now = timezone.now()
    with transaction.atomic():
        try:
            locked = _lock_claimed(transcript.id, claim_id)
        except _ClaimLost:
            return CycleResult()
        if permanent or locked.attempts >= _config()["MAX_ATTEMPTS"]:
            RawTranscript.objects.filter(pk=locked.pk).update(
                status=TranscriptStatus.ERROR, claim_id=None, last_error=error, updated_at=now
            )
            _bump_day(transcript, errors=1)
            return CycleResult(failed=1, errors=[f"{transcript.id}: {error}"])
        RawTranscript.objects.filter(pk=locked.pk).update(
            status=TranscriptStatus.QUEUED,
            claim_id=None,
            last_error=error,
            next_attempt_at=now + retry_delay(locked.attempts),
            updated_at=now,
        )
        _bump_day(transcript, retried=1)
    return CycleResult(retried=1, errors=[f"{transcript.id}: {error}"])


@measure_transcript
def _run(transcript: RawTranscript, claim_id: uuid.UUID) -> CycleResult:
    started = time.perf_counter()
    source: str | list[dict[str, Any]] = transcript.messages if transcript.messages is not None else transcript.text
    try:
        messages = parse_transcript(source)
    except ValueError as error:
        # The same input will never parse: retrying cannot help.
        return _record_failure(transcript, claim_id, f"Unreadable transcript: {error}", permanent=True)
    try:
        with operation(
            "extract", account_id=transcript.account_id, user_id=transcript.user_id, messages=len(messages)
        ) as sizes:
            extraction = get_extractor().extract(messages)
            sizes["memories"] = len(extraction.memories)
        return _store_extraction(transcript, claim_id, extraction, started)
    except _ClaimLost:
        logger.warning("transcript %s was taken over by another worker; its result is discarded", transcript.id)
        return CycleResult()
    except ExtractionUnavailable as error:
        return _record_failure(transcript, claim_id, f"Extraction unavailable: {error}")
    except Exception as error:
        logger.exception("processing transcript %s failed", transcript.id)
        return _record_failure(transcript, claim_id, f"{type(error).__name__}: {error}")


def process_transcript(*, transcript_id: uuid.UUID | str) -> CycleResult:
    """Process one transcript if it is queued and due; nothing if another worker has it or it is done."""
    claimed = _claim_one(transcript_id)
    if claimed is None:
        return CycleResult()
    result = _run(*claimed)
    record_heartbeat(result=result)
    return result


def process_queued(*, limit: int, on_progress: Callable[[CycleResult], None] | None = None) -> CycleResult:
    """Process up to `limit` due transcripts, oldest first, after requeueing those of dead workers."""
    total = CycleResult(requeued_stale=requeue_stale_claims())
    started = time.perf_counter()
    record_heartbeat(result=CycleResult())
    for _ in range(limit):
        claimed = _claim_next()
        if claimed is None:
            break
        result = _run(*claimed)
        total.add(result)
        record_heartbeat(result=result)
        if on_progress is not None:
            on_progress(result)
    total.seconds = time.perf_counter() - started
    return total


# -- heartbeat ---------------------------------------------------------------------------------------


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def record_heartbeat(*, result: CycleResult) -> None:
    """The processor is alive: bump its row and write `background_processor:status` to Redis."""
    now = timezone.now()
    last = {key: value for key, value in asdict(result).items() if key != "errors"}
    done = {
        "processed_total": F("processed_total") + result.processed,
        "errors_total": F("errors_total") + result.failed,
    }
    updated = ProcessorHeartbeat.objects.filter(name=HEARTBEAT_NAME).update(
        beat_at=now, worker=_worker_name(), last_cycle=last, **done
    )
    if not updated:
        try:
            with transaction.atomic():
                ProcessorHeartbeat.objects.create(
                    name=HEARTBEAT_NAME,
                    beat_at=now,
                    worker=_worker_name(),
                    processed_total=result.processed,
                    errors_total=result.failed,
                    last_cycle=last,
                )
        except IntegrityError:
            ProcessorHeartbeat.objects.filter(name=HEARTBEAT_NAME).update(
                beat_at=now, worker=_worker_name(), last_cycle=last, **done
            )
    beat = ProcessorHeartbeat.objects.get(name=HEARTBEAT_NAME)
    status = {
        "last_beat": now.isoformat(),
        "worker": beat.worker,
        "processed_total": beat.processed_total,
        "errors_total": beat.errors_total,
        "last": last,
    }
    try:
        get_redis_connection("default").set(HEARTBEAT_REDIS_KEY, orjson.dumps(status))
    except Exception as error:  # Redis down: the row above is the heartbeat meanwhile
        logger.warning("could not write the processor heartbeat to Redis: %s", error)


# -- retries -----------------------------------------------------------------------------------------


def transcripts_reprocess(*, transcript_ids: Sequence[uuid.UUID]) -> int:
    """transcripts_retry, then a processing task for each at once instead of at the next cycle."""
    with transaction.atomic():
        queued = list(
            RawTranscript.objects.filter(pk__in=transcript_ids, status__in=_RETRYABLE).values_list("id", flat=True)
        )
        count = transcripts_retry(transcript_ids=queued)
        for transcript_id in queued:
            # A row that changed status in between is not claimed by its task: harmless.
            transaction.on_commit(partial(_enqueue, transcript_id))
    return count


def transcripts_retry(*, transcript_ids: Sequence[uuid.UUID]) -> int:
    """Queue transcripts again now (admin): failed ones get a fresh set of attempts, processed ones are redone."""
    now = timezone.now()
    return RawTranscript.objects.filter(pk__in=transcript_ids, status__in=_RETRYABLE).update(
        status=TranscriptStatus.QUEUED, attempts=0, next_attempt_at=now, claim_id=None, updated_at=now
    )
