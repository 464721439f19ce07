"""Retention: what cleanup deletes, and how it keeps every reference whole.

One function, retention_apply, serves the daily schedule, `manage.py cleanup`,
`manage.py process_raw` and the API's cleanup endpoint. It applies three rules,
in this order:

1. Memories past their `expires_at` are deleted through memories.services, so
   each one's history ends with the deletion and every cache forgets it.
2. Raw transcripts are deleted `retention_days` after they were processed.
   Only processed ones: a queued, processing or failed transcript is never
   deleted. The memories extracted from them stay; their source_transcript
   becomes NULL.
3. Sessions are deleted `session_retention_days` after their last update, once
   every transcript they still have is processed and may go too. A session's
   summary memory goes with it (the summary describes the session and nothing
   else). Its discrete memories stay, "until deleted or expired": they are
   detached (session NULL) rather than keeping the session alive, or sessions
   would never go; their metadata still names the session and transcript they
   came from. Memory.session is SET_NULL for the same reason, so no row ever
   points at a session that is gone.

Every rule works in batches of RETENTION_BATCH_SIZE rows, one short transaction
each, claiming its rows with FOR UPDATE SKIP LOCKED: a million expired rows are
a thousand small transactions, and a row someone is changing right now waits for
the next run. Whatever changes a memory (deletion, a detached link) replaces its
user's cache generation, since cached memories carry both links.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from memories.invalidation import users_changed
from memories.models import Account, Memory, MemoryKind, RawTranscript, Session, TranscriptStatus
from memories.services import memories_delete

ACTOR = "system:retention"

_Row = TypeVar("_Row", Memory, RawTranscript, Session)


@dataclass(frozen=True)
class RetentionWindow:
    """What one run deletes: its cutoffs, taken once, and its scope (None: every account, every namespace)."""

    now: datetime
    # Transcripts processed before it go.
    transcript_cutoff: datetime
    # Sessions last updated before it go.
    session_cutoff: datetime
    account: Account | None = None
    namespace: str | None = None

    @classmethod
    def ending_now(
        cls,
        *,
        retention_days: int | None = None,
        session_retention_days: int | None = None,
        account: Account | None = None,
        namespace: str | None = None,
    ) -> RetentionWindow:
        """The window of a run starting now; days not given come from settings.INGEST."""
        config = settings.INGEST
        transcript_days = config["RETENTION_DAYS"] if retention_days is None else retention_days
        session_days = config["SESSION_RETENTION_DAYS"] if session_retention_days is None else session_retention_days
        now = timezone.now()
        return cls(
            now=now,
            transcript_cutoff=now - timedelta(days=transcript_days),
            session_cutoff=now - timedelta(days=session_days),
            account=account,
            namespace=namespace,
        )

    @property
    def session_transcripts_before(self) -> datetime:
        """A session's transcript may go with it when processed before this: both cutoffs.

        The session's, as the transcript is activity of the session; the
        transcripts' own, or the session would take along one that rule 2 keeps.
        """
        return min(self.transcript_cutoff, self.session_cutoff)

    def scoped(self, queryset: QuerySet[_Row]) -> QuerySet[_Row]:
        if self.account is not None:
            queryset = queryset.filter(account=self.account)
        if self.namespace is not None:
            queryset = queryset.filter(namespace=self.namespace)
        return queryset

    def expired_memories(self) -> QuerySet[Memory]:
        """Memories past their expiry, soonest first: a range of the partial index memory_expiring."""
        return self.scoped(Memory.objects.filter(expires_at__lt=self.now)).order_by("expires_at")

    def transcripts(self) -> QuerySet[RawTranscript]:
        """Transcripts processed before the cutoff: a range of the partial index transcript_processed."""
        return self.scoped(
            RawTranscript.objects.filter(status=TranscriptStatus.PROCESSED, processed_at__lt=self.transcript_cutoff)
        )

    def sessions(self) -> QuerySet[Session]:
        """Sessions idle since before the cutoff whose every remaining transcript may go with them."""
        kept = RawTranscript.objects.filter(session=OuterRef("pk")).exclude(
            status=TranscriptStatus.PROCESSED, processed_at__lt=self.session_transcripts_before
        )
        return self.scoped(Session.objects.filter(updated_at__lt=self.session_cutoff)).filter(~Exists(kept))

    def live_memories_of(self, sessions: QuerySet[Session] | Iterable[uuid.UUID]) -> QuerySet[Memory]:
        """The memories of these sessions that rule 1 leaves."""
        return Memory.objects.filter(session__in=sessions).exclude(expires_at__lt=self.now)


@dataclass(frozen=True)
class RetentionResult:
    """What a run deleted, or with dry_run would delete."""

    transcript_cutoff: datetime
    session_cutoff: datetime
    dry_run: bool
    transcripts_deleted: int = 0
    sessions_deleted: int = 0
    # Deleted with their sessions.
    summaries_deleted: int = 0
    # Kept, with session NULL.
    memories_detached: int = 0
    expired_memories_deleted: int = 0

    @property
    def total(self) -> int:
        """Rows the three rules delete (summaries go with their sessions): the unit of on_progress."""
        return self.expired_memories_deleted + self.transcripts_deleted + self.sessions_deleted

    def describe(self) -> str:
        """'3 processed transcripts, 1 session (...), 2 expired memories': for the commands' summary lines."""
        return (
            f"{self.transcripts_deleted} processed transcripts, {self.sessions_deleted} sessions "
            f"(with {self.summaries_deleted} summary memories; {self.memories_detached} other memories kept, "
            f"detached), {self.expired_memories_deleted} expired memories"
        )


def retention_apply(
    *,
    retention_days: int | None = None,
    session_retention_days: int | None = None,
    account: Account | None = None,
    namespace: str | None = None,
    dry_run: bool = False,
    batch_size: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> RetentionResult:
    """Apply the three rules of retention now (days not given: settings.INGEST); with dry_run, count only.

    `on_progress` is told after each batch how many rows it deleted (expired
    memories, transcripts, sessions: RetentionResult.total's units).
    """
    window = RetentionWindow.ending_now(
        retention_days=retention_days,
        session_retention_days=session_retention_days,
        account=account,
        namespace=namespace,
    )
    if dry_run:
        return _count(window)
    size = int(settings.INGEST["RETENTION_BATCH_SIZE"]) if batch_size is None else batch_size
    progress = on_progress or (lambda rows: None)
    expired = _delete_expired_memories(window, size, progress)
    transcripts = _delete_transcripts(window, size, progress)
    sessions = _delete_sessions(window, size, progress)
    return RetentionResult(
        transcript_cutoff=window.transcript_cutoff,
        session_cutoff=window.session_cutoff,
        dry_run=False,
        transcripts_deleted=transcripts + sessions["transcripts"],
        sessions_deleted=sessions["sessions"],
        summaries_deleted=sessions["summaries"],
        memories_detached=sessions["detached"],
        expired_memories_deleted=expired,
    )


def _count(window: RetentionWindow) -> RetentionResult:
    sessions = window.sessions()
    memories = window.live_memories_of(sessions)
    return RetentionResult(
        transcript_cutoff=window.transcript_cutoff,
        session_cutoff=window.session_cutoff,
        dry_run=True,
        transcripts_deleted=window.transcripts().count(),
        sessions_deleted=sessions.count(),
        summaries_deleted=memories.filter(kind=MemoryKind.SUMMARY).count(),
        memories_detached=memories.exclude(kind=MemoryKind.SUMMARY).count(),
        expired_memories_deleted=window.expired_memories().count(),
    )


def _detach(memories: QuerySet[Memory], **links: None) -> int:
    """Clear links of these memories, and their users' cached copies, which carry the links."""
    users_changed(memories.values_list("account_id", "namespace", "user_id").distinct())
    return memories.update(**links)


def _delete_expired_memories(window: RetentionWindow, size: int, progress: Callable[[int], None]) -> int:
    deleted = 0
    while True:
        with transaction.atomic():
            batch = list(
                window.expired_memories()
                .select_for_update(skip_locked=True)
                .only("account", "namespace", "user_id", "content")[:size]
            )
            if not batch:
                return deleted
            count = memories_delete(memories=batch, actor=ACTOR)
        deleted += count
        progress(count)


def _delete_transcripts(window: RetentionWindow, size: int, progress: Callable[[int], None]) -> int:
    deleted = 0
    while True:
        with transaction.atomic():
            # Locked: an admin's "retry" (processed -> queued) waits for this batch, or is seen by it.
            ids = list(window.transcripts().select_for_update(skip_locked=True).values_list("id", flat=True)[:size])
            if not ids:
                return deleted
            _detach(Memory.objects.filter(source_transcript_id__in=ids), source_transcript=None)
            count = _deleted_of(RawTranscript, RawTranscript.objects.filter(pk__in=ids).delete())
        deleted += count
        progress(count)


def _delete_sessions(window: RetentionWindow, size: int, progress: Callable[[int], None]) -> Counter[str]:
    done: Counter[str] = Counter()
    # Found busy on a second look: left to the next run, not found again in this one.
    busy: set[uuid.UUID] = set()
    while True:
        with transaction.atomic():
            # Locked, so transcript_store (which locks the session it adds to) cannot add a transcript now.
            candidates = list(
                window.sessions()
                .exclude(pk__in=busy)
                .order_by("updated_at")
                .select_for_update(skip_locked=True)
                .values_list("pk", flat=True)[:size]
            )
            if not candidates:
                return done
            ids = _still_deletable(window, candidates)
            busy.update(set(candidates) - set(ids))
            summaries = list(
                window.live_memories_of(ids)
                .filter(kind=MemoryKind.SUMMARY)
                .only("account", "namespace", "user_id", "content")
            )
            done["summaries"] += memories_delete(memories=summaries, actor=ACTOR)
            done["detached"] += _detach(Memory.objects.filter(session__in=ids), session=None)
            _detach(Memory.objects.filter(source_transcript__session__in=ids), source_transcript=None)
            # Cascades to the sessions' transcripts: all locked above, all due.
            deleted = Session.objects.filter(pk__in=ids).delete()
            done["sessions"] += _deleted_of(Session, deleted)
            done["transcripts"] += _deleted_of(RawTranscript, deleted)
        progress(len(ids))


def _still_deletable(window: RetentionWindow, candidates: list[uuid.UUID]) -> list[uuid.UUID]:
    """The candidates that are still due now that they are locked.

    The first look's snapshot may predate a transcript that committed since,
    or an admin's retry of one; this look sees both. A session goes only if
    this transaction could lock every one of its transcripts and each is due.
    """
    transcripts = RawTranscript.objects.filter(session_id__in=candidates)
    cutoff = window.session_transcripts_before
    due: Counter[uuid.UUID] = Counter(
        session_id
        for session_id, status, processed_at in transcripts.select_for_update(skip_locked=True).values_list(
            "session_id", "status", "processed_at"
        )
        if status == TranscriptStatus.PROCESSED and processed_at is not None and processed_at < cutoff
    )
    existing = Counter(transcripts.values_list("session_id", flat=True))
    idle = Session.objects.filter(pk__in=candidates, updated_at__lt=window.session_cutoff).values_list("pk", flat=True)
    return [pk for pk in idle if due[pk] == existing[pk]]


def _deleted_of(model: type[Any], deleted: tuple[int, dict[str, int]]) -> int:
    """Rows of `model` among what QuerySet.delete() reports (it counts cascaded rows too)."""
    return deleted[1].get(model._meta.label, 0)
