"""Reads of the transcript hierarchy: queue, processor status, hierarchy, sessions, statistics.

Every function filters by the caller's account and namespace, except the
processor's heartbeat and the service-wide queue ahead of a new transcript,
which describe the shared processor rather than anyone's data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.db.models import Avg, Count, Func, IntegerField, Q, QuerySet, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone
from django_redis import get_redis_connection

from memories.ingest import HEARTBEAT_NAME, HEARTBEAT_REDIS_KEY
from memories.models import (
    DISCRETE_KINDS,
    Account,
    Memory,
    MemoryKind,
    ProcessingDay,
    ProcessorHeartbeat,
    RawTranscript,
    Session,
    TranscriptStatus,
)

# The schedule runs every minute: a processor that has not beaten for this long is not running.
HEARTBEAT_ALIVE_SECONDS = 150
DAILY_STATS_DAYS = 7
SESSION_MEMORY_LIMIT = 1_000
PREVIEW_CHARS = 200


# -- queue position and estimate ---------------------------------------------------------------------


def queue_position(*, transcript: RawTranscript) -> int:
    """Queued transcripts (of every account: the processor is shared) that will be taken before this one."""
    return (
        RawTranscript.objects.filter(status=TranscriptStatus.QUEUED)
        .filter(
            Q(next_attempt_at__lt=transcript.next_attempt_at)
            | Q(next_attempt_at=transcript.next_attempt_at, created_at__lt=transcript.created_at)
        )
        .count()
    )


@dataclass(frozen=True)
class Estimate:
    seconds: float
    # "measured": from the last processed transcripts; "default": none processed yet (INGEST FALLBACK_SECONDS).
    basis: str
    seconds_per_transcript: float


def processing_estimate(*, position: int) -> Estimate:
    """Seconds until a transcript with `position` transcripts ahead is processed: the mean duration of
    the last THROUGHPUT_SAMPLE processed transcripts times (position + 1)."""
    sample = int(settings.INGEST["THROUGHPUT_SAMPLE"])
    recent = RawTranscript.objects.filter(status=TranscriptStatus.PROCESSED, duration_seconds__isnull=False).order_by(
        "-processed_at"
    )[:sample]
    mean = RawTranscript.objects.filter(pk__in=recent.values("pk")).aggregate(mean=Avg("duration_seconds"))["mean"]
    if mean is None:
        per = float(settings.INGEST["FALLBACK_SECONDS"])
        basis = "default"
    else:
        per = float(mean)
        basis = "measured"
    return Estimate(seconds=round(per * (position + 1), 3), basis=basis, seconds_per_transcript=round(per, 4))


# -- processor status --------------------------------------------------------------------------------


def heartbeat() -> dict[str, Any]:
    """The processor's last beat: from Redis (`background_processor:status`), else from its database row."""
    now = timezone.now()
    status: dict[str, Any] | None = None
    source = "redis"
    try:
        raw = get_redis_connection("default").get(HEARTBEAT_REDIS_KEY)
        status = orjson.loads(raw) if raw else None
    except Exception:  # Redis down: the database row says the same
        status = None
    if status is None:
        source = "database"
        row = ProcessorHeartbeat.objects.filter(name=HEARTBEAT_NAME).first()
        if row is not None:
            status = {
                "last_beat": row.beat_at.isoformat(),
                "worker": row.worker,
                "processed_total": row.processed_total,
                "errors_total": row.errors_total,
                "last": row.last_cycle,
            }
    if status is None:
        return {"alive": False, "last_heartbeat": None, "heartbeat_age_seconds": None, "source": None}
    age = (now - datetime.fromisoformat(status["last_beat"])).total_seconds()
    return {
        "alive": age <= HEARTBEAT_ALIVE_SECONDS,
        "last_heartbeat": status["last_beat"],
        "heartbeat_age_seconds": round(age, 3),
        "worker": status.get("worker"),
        "processed_total": status.get("processed_total"),
        "errors_total": status.get("errors_total"),
        "last_cycle": status.get("last"),
        "source": source,
    }


def _transcripts(account: Account, namespace: str) -> QuerySet[RawTranscript]:
    return RawTranscript.objects.filter(account=account, namespace=namespace)


def status_counts(*, account: Account, namespace: str) -> dict[str, int]:
    counts = dict.fromkeys(TranscriptStatus.values, 0)
    for row in _transcripts(account, namespace).values("status").annotate(n=Count("pk")).order_by():
        counts[row["status"]] = row["n"]
    return counts


def daily_stats(*, account: Account, namespace: str, days: int = DAILY_STATS_DAYS) -> list[dict[str, Any]]:
    since = timezone.now().date() - timedelta(days=days - 1)
    rows = ProcessingDay.objects.filter(account=account, namespace=namespace, day__gte=since).order_by("-day")
    return [
        {
            "date": row.day,
            "processed": row.processed,
            "retried": row.retried,
            "failed": row.errors,
            "memories_created": row.memories_created,
            "mean_processing_seconds": round(row.seconds_total / row.processed, 4) if row.processed else None,
        }
        for row in rows
    ]


def processing_status(*, account: Account, namespace: str) -> dict[str, Any]:
    counts = status_counts(account=account, namespace=namespace)
    retry_pending = _transcripts(account, namespace).filter(status=TranscriptStatus.QUEUED, attempts__gt=0).count()
    return {
        "vectorstore_name": namespace,
        "queue_size": counts[TranscriptStatus.QUEUED],
        "processing": counts[TranscriptStatus.PROCESSING],
        "processed": counts[TranscriptStatus.PROCESSED],
        "failed": counts[TranscriptStatus.ERROR],
        "retry_pending": retry_pending,
        "counts": counts,
        "processor": heartbeat(),
        "daily_stats": daily_stats(account=account, namespace=namespace),
    }


# -- hierarchy and sessions --------------------------------------------------------------------------


def memory_item(memory: Memory) -> dict[str, Any]:
    return {
        "id": memory.id,
        "user_id": memory.user_id,
        "kind": memory.kind,
        "level": "summary" if memory.kind == MemoryKind.SUMMARY else "discrete",
        "category": memory.category,
        "content": memory.content,
        "importance": memory.importance,
        "session_id": memory.session.external_id if memory.session is not None else None,
        "raw_memory_id": memory.source_transcript_id,
        "created_at": memory.created_at,
        "updated_at": memory.updated_at,
    }


def transcript_item(transcript: RawTranscript, *, preview: bool = True) -> dict[str, Any]:
    item: dict[str, Any] = {
        "raw_memory_id": transcript.id,
        "session_id": transcript.session.external_id,
        "user_id": transcript.user_id,
        "status": transcript.status,
        "attempts": transcript.attempts,
        "last_error": transcript.last_error,
        "queued_at": transcript.created_at,
        "next_attempt_at": transcript.next_attempt_at if transcript.status == TranscriptStatus.QUEUED else None,
        "processed_at": transcript.processed_at,
        "processing_seconds": transcript.duration_seconds,
        "memories_created": transcript.memories_created,
        "size_bytes": transcript.size_bytes,
        "metadata": transcript.metadata,
    }
    if preview:
        text = transcript.text or " ".join(
            f"{m.get('role')}: {m.get('content')}" for m in transcript.messages or [] if isinstance(m, dict)
        )
        item["preview"] = text[:PREVIEW_CHARS]
    return item


def _live_memories(account: Account, namespace: str) -> QuerySet[Memory]:
    now = timezone.now()
    return (
        Memory.objects.filter(account=account, namespace=namespace)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .select_related("session")
        .defer("embedding", "search_vector", "metadata")
    )


@dataclass(frozen=True)
class HierarchyQuery:
    memory_type: str = "all"
    session_id: str | None = None
    user_id: str | None = None
    # created_at >= start and < end
    start: datetime | None = None
    end: datetime | None = None
    limit: int = 50


def hierarchy(*, account: Account, namespace: str, query: HierarchyQuery) -> dict[str, Any]:
    """Each requested level, newest first, at most `limit` items per level, with the ids that link them."""
    memories = _live_memories(account, namespace)
    transcripts = _transcripts(account, namespace).select_related("session")
    if query.session_id is not None:
        memories = memories.filter(session__external_id=query.session_id)
        transcripts = transcripts.filter(session__external_id=query.session_id)
    if query.user_id is not None:
        memories = memories.filter(user_id=query.user_id)
        transcripts = transcripts.filter(user_id=query.user_id)
    if query.start is not None:
        memories = memories.filter(created_at__gte=query.start)
        transcripts = transcripts.filter(created_at__gte=query.start)
    if query.end is not None:
        memories = memories.filter(created_at__lt=query.end)
        transcripts = transcripts.filter(created_at__lt=query.end)
    wanted = {"discrete", "summary", "raw"} if query.memory_type == "all" else {query.memory_type}
    result: dict[str, Any] = {"vectorstore_name": namespace, "memory_type": query.memory_type}
    if "summary" in wanted:
        rows = memories.filter(kind=MemoryKind.SUMMARY).order_by("-created_at", "-id")[: query.limit]
        result["summaries"] = [memory_item(m) for m in rows]
    if "discrete" in wanted:
        rows = memories.filter(kind__in=DISCRETE_KINDS).order_by("-created_at", "-id")[: query.limit]
        result["discrete"] = [memory_item(m) for m in rows]
    if "raw" in wanted:
        rows_raw = transcripts.order_by("-created_at", "-id")[: query.limit]
        result["raw"] = [transcript_item(t) for t in rows_raw]
    result["count"] = sum(len(result.get(level, [])) for level in ("summaries", "discrete", "raw"))
    return result


def session_detail(*, account: Account, namespace: str, session_id: str) -> dict[str, Any]:
    """A session: its summary, its memories and its transcripts. Raises Session.DoesNotExist."""
    session = Session.objects.get(account=account, namespace=namespace, external_id=session_id)
    memories = list(
        _live_memories(account, namespace).filter(session=session).order_by("-created_at", "-id")[:SESSION_MEMORY_LIMIT]
    )
    transcripts = list(session.transcripts.select_related("session").order_by("-created_at"))
    summary_memory = next((m for m in memories if m.kind == MemoryKind.SUMMARY), None)
    statuses = {t.status for t in transcripts}
    if TranscriptStatus.PROCESSING in statuses or TranscriptStatus.QUEUED in statuses:
        overall = "pending"
    elif TranscriptStatus.ERROR in statuses:
        overall = "error"
    else:
        overall = "processed" if transcripts else "empty"
    return {
        "session_id": session.external_id,
        "vectorstore_name": namespace,
        "user_id": session.user_id,
        "status": overall,
        "summary": session.summary,
        "summary_embedded": session.summary_embedding is not None,
        "summary_memory": memory_item(summary_memory) if summary_memory is not None else None,
        "metadata": session.metadata,
        "created_at": session.created_at,
        "updated_at": session.updated_at,
        "memories": [memory_item(m) for m in memories if m.kind != MemoryKind.SUMMARY],
        "transcripts": [transcript_item(t, preview=False) for t in transcripts],
    }


# -- statistics --------------------------------------------------------------------------------------


class _OctetLength(Func):
    function = "octet_length"
    output_field = IntegerField()


def namespace_stats(*, account: Account, namespace: str) -> dict[str, Any]:
    now = timezone.now()
    memories = Memory.objects.filter(account=account, namespace=namespace)
    by_kind = dict.fromkeys(MemoryKind.values, 0)
    for row in memories.values("kind").annotate(n=Count("pk")).order_by():
        by_kind[row["kind"]] = row["n"]
    memory_totals = memories.aggregate(
        bytes=Coalesce(Sum(_OctetLength("content")), 0),
        embedded=Count("pk", filter=Q(embedding__isnull=False)),
        from_transcripts=Count("pk", filter=Q(source_transcript__isnull=False)),
        expired=Count("pk", filter=Q(expires_at__lte=now)),
    )
    transcripts = _transcripts(account, namespace).aggregate(
        bytes=Coalesce(Sum("size_bytes"), 0), memories_created=Coalesce(Sum("memories_created"), 0)
    )
    counts = status_counts(account=account, namespace=namespace)
    sessions = Session.objects.filter(account=account, namespace=namespace).aggregate(
        total=Count("pk"), summarized=Count("pk", filter=~Q(summary=""))
    )
    today: date = now.date()
    day = ProcessingDay.objects.filter(account=account, namespace=namespace, day=today).first()
    return {
        "vectorstore_name": namespace,
        "memories": {
            "total": sum(by_kind.values()),
            "by_kind": by_kind,
            "hierarchy": {
                "discrete": sum(by_kind[kind] for kind in DISCRETE_KINDS),
                "summary": by_kind[MemoryKind.SUMMARY],
                "raw_transcripts": sum(counts.values()),
            },
            "embedded": memory_totals["embedded"],
            "from_transcripts": memory_totals["from_transcripts"],
            "expired": memory_totals["expired"],
        },
        "sessions": sessions,
        "transcripts": {"total": sum(counts.values()), "by_status": counts},
        "storage_bytes": {
            "memory_content": memory_totals["bytes"],
            "raw_transcripts": transcripts["bytes"],
            "total": memory_totals["bytes"] + transcripts["bytes"],
        },
        "processing": {
            "queue_size": counts[TranscriptStatus.QUEUED],
            "processing": counts[TranscriptStatus.PROCESSING],
            "failed": counts[TranscriptStatus.ERROR],
            "memories_extracted": transcripts["memories_created"],
            "today": {
                "processed": day.processed if day else 0,
                "failed": day.errors if day else 0,
                "memories_created": day.memories_created if day else 0,
            },
        },
    }
