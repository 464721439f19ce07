"""Retention: expired memories, old processed transcripts and idle sessions go; nothing else, and no link breaks."""

from __future__ import annotations

import uuid
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone
from django_q.models import Schedule
from rest_framework.test import APIClient

from memories import selectors
from memories.cache import tiered_cache
from memories.ingest_tasks import RETENTION_SCHEDULE, apply_retention_task, ensure_ingest_schedules
from memories.models import Account, HistoryAction, Memory, MemoryHistory, MemoryKind, RawTranscript, Session
from memories.models import TranscriptStatus as Status
from memories.retention import ACTOR, RetentionWindow, retention_apply
from tests.factories import AccountWithKey, bulk_memories, make_memory, make_session, make_transcript

pytestmark = pytest.mark.django_db

PAST = timedelta(hours=1)


def _expiring(account: Account, content: str, *, expires_in: timedelta | None, **fields: Any) -> Memory:
    expires_at = None if expires_in is None else timezone.now() + expires_in
    return make_memory(account, content, expires_at=expires_at, **fields)


def _old_session_with_memories(
    account: Account, external_id: str = "old", **fields: Any
) -> tuple[Session, Memory, Memory]:
    """A session idle for 400 days whose one transcript is processed and gone, with its summary and one fact."""
    session = make_session(account, external_id, idle_days=400, **fields)
    summary = make_memory(
        account,
        f"Summary of {external_id}",
        kind=MemoryKind.SUMMARY,
        session=session,
        namespace=session.namespace,
        category="session_summary",
        key=f"session:{external_id}",
    )
    fact = make_memory(account, f"User said something in {external_id}", session=session, namespace=session.namespace)
    return session, summary, fact


# -- expired memories --------------------------------------------------------------------------------


def test_expired_memories_are_deleted_and_unexpired_and_unexpiring_ones_kept(account: AccountWithKey) -> None:
    expired = _expiring(account.account, "User is in Paris this week", expires_in=-PAST)
    later = _expiring(account.account, "User is in Rome next week", expires_in=PAST)
    forever = _expiring(account.account, "User prefers tea", expires_in=None)

    result = retention_apply()

    assert result.expired_memories_deleted == 1
    assert set(Memory.objects.values_list("pk", flat=True)) == {later.pk, forever.pk}
    assert not Memory.objects.filter(pk=expired.pk).exists()


def test_deleting_an_expired_memory_ends_its_history_with_the_deletion(account: AccountWithKey) -> None:
    expired = _expiring(account.account, "User is in Paris this week", expires_in=-PAST)

    retention_apply()

    history = MemoryHistory.objects.get(memory_id=expired.pk)
    assert (history.action, history.actor, history.account_id) == (HistoryAction.DELETE, ACTOR, account.account.id)
    assert (history.old_content, history.new_content) == ("User is in Paris this week", None)


def test_deleting_expired_memories_replaces_their_users_cache_generation(account: AccountWithKey) -> None:
    memory = _expiring(account.account, "User is in Paris this week", expires_in=PAST)
    selectors.memory_get(account=account.account, memory_id=memory.pk)
    Memory.objects.filter(pk=memory.pk).update(expires_at=timezone.now() - PAST)
    cache = tiered_cache()
    before = cache.generation(account.account.id, "default", "u1")

    retention_apply()

    assert cache.generation(account.account.id, "default", "u1") != before
    with pytest.raises(Memory.DoesNotExist):
        selectors.memory_get(account=account.account, memory_id=memory.pk)


def test_expired_memories_are_deleted_in_batches(account: AccountWithKey) -> None:
    for index in range(5):
        _expiring(account.account, f"Expired fact {index}", expires_in=-PAST)
    batches: list[int] = []

    result = retention_apply(batch_size=2, on_progress=batches.append)

    assert batches == [2, 2, 1]
    assert result.expired_memories_deleted == 5
    assert not Memory.objects.exists()


# -- transcripts ---------------------------------------------------------------------------------------


def test_old_processed_transcripts_go_and_their_memories_stay_unlinked(account: AccountWithKey) -> None:
    session = make_session(account.account)
    old = make_transcript(session, processed_days_ago=31)
    recent = make_transcript(session, processed_days_ago=29)
    memory = make_memory(account.account, "User prefers tea", session=session, source_transcript=old)

    result = retention_apply(retention_days=30)

    assert result.transcripts_deleted == 1
    assert list(RawTranscript.objects.values_list("pk", flat=True)) == [recent.pk]
    memory.refresh_from_db()
    assert (memory.source_transcript_id, memory.session_id) == (None, session.pk)


@pytest.mark.parametrize("status", [Status.QUEUED, Status.PROCESSING, Status.ERROR])
def test_unprocessed_transcripts_are_never_deleted_however_old(account: AccountWithKey, status: str) -> None:
    session = make_session(account.account, idle_days=1000)
    # Processed long ago and queued again (an admin's retry keeps processed_at): still not deleted.
    transcript = make_transcript(session, status=status, processed_days_ago=1000)
    RawTranscript.objects.filter(pk=transcript.pk).update(created_at=timezone.now() - timedelta(days=1000))

    result = retention_apply(retention_days=0, session_retention_days=0)

    assert (result.transcripts_deleted, result.sessions_deleted) == (0, 0)
    assert RawTranscript.objects.filter(pk=transcript.pk).exists()
    assert Session.objects.filter(pk=session.pk).exists()


# -- sessions ----------------------------------------------------------------------------------------


def test_old_processed_sessions_go_with_their_summary_and_their_discrete_memories_stay_detached(
    account: AccountWithKey,
) -> None:
    session, summary, fact = _old_session_with_memories(account.account)

    result = retention_apply()

    assert (result.sessions_deleted, result.summaries_deleted, result.memories_detached) == (1, 1, 1)
    assert not Session.objects.filter(pk=session.pk).exists()
    assert not Memory.objects.filter(pk=summary.pk).exists()
    assert MemoryHistory.objects.filter(memory_id=summary.pk, action=HistoryAction.DELETE, actor=ACTOR).exists()
    fact.refresh_from_db()
    assert fact.session_id is None
    assert not MemoryHistory.objects.filter(memory_id=fact.pk).exists()


def test_a_cached_memory_of_a_deleted_session_is_read_without_its_session(account: AccountWithKey) -> None:
    # No summary to delete: only the detached link can tell the cache.
    session, summary, fact = _old_session_with_memories(account.account)
    summary.delete()
    assert selectors.memory_get(account=account.account, memory_id=fact.pk).session_id == session.pk

    retention_apply()

    assert selectors.memory_get(account=account.account, memory_id=fact.pk).session_id is None


def test_a_deleted_sessions_old_transcripts_go_with_it_and_unlink_their_memories(account: AccountWithKey) -> None:
    # Transcripts kept longer than sessions would be: the session takes its due transcripts along.
    session, _, fact = _old_session_with_memories(account.account)
    transcript = make_transcript(session, processed_days_ago=400)
    Memory.objects.filter(pk=fact.pk).update(source_transcript=transcript)

    result = retention_apply(retention_days=390, session_retention_days=365)

    assert (result.sessions_deleted, result.transcripts_deleted) == (1, 1)
    fact.refresh_from_db()
    assert (fact.session_id, fact.source_transcript_id) == (None, None)


def test_a_cached_memory_of_a_deleted_transcript_is_read_without_the_link(account: AccountWithKey) -> None:
    session = make_session(account.account)
    transcript = make_transcript(session, processed_days_ago=40)
    # Linked to the transcript only (its session link cleared by hand): the transcript link alone must tell the cache.
    memory = make_memory(account.account, "User prefers tea", user_id="u2", source_transcript=transcript)
    # A cached record holds the transcript id as text.
    assert str(selectors.memory_get(account=account.account, memory_id=memory.pk).source_transcript_id) == str(
        transcript.pk
    )

    retention_apply(retention_days=30)

    assert selectors.memory_get(account=account.account, memory_id=memory.pk).source_transcript_id is None


def test_a_session_takes_along_a_transcript_the_transcript_rule_skipped_and_unlinks_its_memories(
    account: AccountWithKey,
) -> None:
    from memories import retention

    session, _, _ = _old_session_with_memories(account.account)
    transcript = make_transcript(session, processed_days_ago=400)
    # Linked to the transcript only: the transcript link alone must tell the cache.
    memory = make_memory(account.account, "User prefers tea", user_id="u2", source_transcript=transcript)
    assert str(selectors.memory_get(account=account.account, memory_id=memory.pk).source_transcript_id) == str(
        transcript.pk
    )
    window = RetentionWindow.ending_now(retention_days=390, session_retention_days=365)

    # The session rule alone, as when the transcript rule found this transcript busy and skipped it.
    done = retention._delete_sessions(window, 100, lambda rows: None)

    assert (done["sessions"], done["transcripts"]) == (1, 1)
    assert selectors.memory_get(account=account.account, memory_id=memory.pk).source_transcript_id is None


def test_recent_sessions_stay(account: AccountWithKey) -> None:
    session = make_session(account.account, idle_days=300)
    make_memory(account.account, "Summary", kind=MemoryKind.SUMMARY, session=session)

    result = retention_apply(session_retention_days=365)

    assert result.sessions_deleted == 0
    assert Session.objects.filter(pk=session.pk).exists()
    assert Memory.objects.filter(session=session).count() == 1


@pytest.mark.parametrize("status", [Status.QUEUED, Status.PROCESSING, Status.ERROR])
def test_sessions_with_unprocessed_transcripts_stay(account: AccountWithKey, status: str) -> None:
    session, summary, _ = _old_session_with_memories(account.account)
    make_transcript(session, status=status)

    dry = retention_apply(dry_run=True)
    result = retention_apply()

    assert (dry.sessions_deleted, result.sessions_deleted) == (0, 0)
    assert Session.objects.filter(pk=session.pk).exists()
    assert Memory.objects.filter(pk=summary.pk, session=session).exists()


def test_a_session_stays_while_transcript_retention_keeps_its_transcript(account: AccountWithKey) -> None:
    session, _, _ = _old_session_with_memories(account.account)
    transcript = make_transcript(session, processed_days_ago=370)

    dry = retention_apply(retention_days=400, session_retention_days=365, dry_run=True)
    result = retention_apply(retention_days=400, session_retention_days=365)

    assert (dry.sessions_deleted, result.sessions_deleted, result.transcripts_deleted) == (0, 0, 0)
    assert RawTranscript.objects.filter(pk=transcript.pk).exists()


def test_a_session_with_a_recently_processed_transcript_stays(account: AccountWithKey) -> None:
    # Its updated_at is old (the last transcript produced no summary), but the transcript says it is in use.
    session, _, _ = _old_session_with_memories(account.account)
    make_transcript(session, processed_days_ago=10)

    assert retention_apply(retention_days=30, session_retention_days=365).sessions_deleted == 0
    assert Session.objects.filter(pk=session.pk).exists()


def test_a_session_whose_transcript_was_requeued_after_the_first_look_stays(account: AccountWithKey) -> None:
    from memories import retention

    session, _, _ = _old_session_with_memories(account.account)
    transcript = make_transcript(session, processed_days_ago=400)
    window = RetentionWindow.ending_now(retention_days=390, session_retention_days=365)
    assert list(window.sessions().values_list("pk", flat=True)) == [session.pk]
    # An admin's retry between the first look and the lock.
    RawTranscript.objects.filter(pk=transcript.pk).update(status=Status.QUEUED)

    assert retention._still_deletable(window, [session.pk]) == []


def test_a_deleted_session_id_can_be_used_again(account: AccountWithKey) -> None:
    from memories.ingest import transcript_store

    _old_session_with_memories(account.account, "again")
    retention_apply()

    transcript = transcript_store(
        account=account.account,
        namespace="default",
        user_id="u1",
        session_data="User: I prefer tea.",
        session_id="again",
        metadata={"user_id": "u1"},
    )

    assert transcript.session.external_id == "again"


# -- dry run -----------------------------------------------------------------------------------------


def test_dry_run_deletes_nothing_and_counts_what_a_run_deletes(account: AccountWithKey) -> None:
    _old_session_with_memories(account.account)
    make_transcript(make_session(account.account, "recent"), processed_days_ago=40)
    _expiring(account.account, "User is in Paris this week", expires_in=-PAST)
    counts = (Memory.objects.count(), Session.objects.count(), RawTranscript.objects.count())

    dry = retention_apply(dry_run=True)

    assert (Memory.objects.count(), Session.objects.count(), RawTranscript.objects.count()) == counts
    assert not MemoryHistory.objects.exists()
    done = retention_apply()
    assert dry.dry_run
    assert not done.dry_run
    counted = (dry.expired_memories_deleted, dry.transcripts_deleted, dry.sessions_deleted)
    assert counted == (done.expired_memories_deleted, done.transcripts_deleted, done.sessions_deleted) == (1, 1, 1)
    assert (dry.summaries_deleted, dry.memories_detached) == (done.summaries_deleted, done.memories_detached) == (1, 1)


# -- command -----------------------------------------------------------------------------------------


def test_cleanup_command_deletes_and_prints_a_summary_line(account: AccountWithKey) -> None:
    _old_session_with_memories(account.account)
    make_transcript(make_session(account.account, "recent"), processed_days_ago=10)
    _expiring(account.account, "User is in Paris this week", expires_in=-PAST)
    out = StringIO()

    call_command("cleanup", "--retention-days", "7", "--session-retention-days", "365", stdout=out)

    assert out.getvalue().startswith(
        "Deleted 1 processed transcripts, 1 sessions (with 1 summary memories; 1 other memories kept, detached), "
        "1 expired memories (transcripts 7 days after processing, idle sessions 365 days) in "
    )
    assert not RawTranscript.objects.exists()
    assert list(Session.objects.values_list("external_id", flat=True)) == ["recent"]


def test_cleanup_command_dry_run_deletes_nothing_and_says_what_it_would(account: AccountWithKey) -> None:
    _old_session_with_memories(account.account)
    _expiring(account.account, "User is in Paris this week", expires_in=-PAST)
    out = StringIO()

    call_command("cleanup", "--dry-run", stdout=out)

    assert "Would delete 0 processed transcripts, 1 sessions" in out.getvalue()
    assert "1 expired memories" in out.getvalue()
    assert "dry run: nothing deleted" in out.getvalue()
    assert (Memory.objects.count(), Session.objects.count()) == (3, 1)


@pytest.mark.parametrize(
    ("option", "value"), [("--retention-days", "-1"), ("--session-retention-days", "-1"), ("--batch-size", "0")]
)
def test_cleanup_command_rejects_bad_options(option: str, value: str) -> None:
    with pytest.raises(CommandError, match=option):
        call_command("cleanup", option, value)


def test_cleanup_command_help_says_it_deletes_and_how_to_only_count() -> None:
    from memories.management.commands.cleanup import Command

    parser = Command().create_parser("manage.py", "cleanup")
    text = parser.format_help()

    assert "DELETES" in text
    assert "--dry-run" in text
    assert "never deleted" in text


# -- schedule ----------------------------------------------------------------------------------------


def test_the_retention_schedule_is_created_once() -> None:
    ensure_ingest_schedules()
    ensure_ingest_schedules()

    schedule = Schedule.objects.get(name=RETENTION_SCHEDULE)
    assert (schedule.func, schedule.minutes) == ("memories.ingest_tasks.apply_retention_task", 24 * 60)


def test_the_daily_task_applies_the_whole_retention(account: AccountWithKey) -> None:
    _old_session_with_memories(account.account)
    make_transcript(make_session(account.account, "recent"), processed_days_ago=40)
    _expiring(account.account, "User is in Paris this week", expires_in=-PAST)

    done = apply_retention_task()

    assert (done["expired_memories_deleted"], done["transcripts_deleted"], done["sessions_deleted"]) == (1, 1, 1)


# -- API ---------------------------------------------------------------------------------------------


def _everything_due(account: Account, namespace: str) -> None:
    _old_session_with_memories(account, f"old-{namespace}", namespace=namespace)
    make_transcript(make_session(account, f"recent-{namespace}", namespace=namespace), processed_days_ago=40)
    _expiring(account, f"Expired in {namespace}", expires_in=-PAST, namespace=namespace)


def test_cleanup_endpoint_applies_retention_to_the_callers_namespace_only(
    api: APIClient, account: AccountWithKey, other_account: AccountWithKey
) -> None:
    _everything_due(account.account, "travel")
    _everything_due(account.account, "work")
    _everything_due(other_account.account, "travel")

    response = api.post("/api/memory/travel/cleanup")

    assert response.status_code == 200
    body = response.json()
    assert (body["expired_memories_deleted"], body["transcripts_deleted"], body["sessions_deleted"]) == (1, 1, 1)
    assert (body["retention_days"], body["session_retention_days"]) == (30, 365)
    assert not Memory.objects.filter(account=account.account, namespace="travel", expires_at__isnull=False).exists()
    assert not Session.objects.filter(account=account.account, namespace="travel", external_id="old-travel").exists()
    for owner, namespace in [(account.account, "work"), (other_account.account, "travel")]:
        assert Memory.objects.filter(account=owner, namespace=namespace).count() == 3
        assert Session.objects.filter(account=owner, namespace=namespace).count() == 2
        assert RawTranscript.objects.filter(account=owner, namespace=namespace).count() == 1


def test_cleanup_endpoint_takes_the_session_retention_and_counts_in_a_dry_run(
    api: APIClient, account: AccountWithKey
) -> None:
    make_session(account.account, "month-old", namespace="travel", idle_days=40)

    dry = api.post("/api/memory/travel/cleanup?session_retention_days=30&dry_run=true").json()
    kept = api.post("/api/memory/travel/cleanup").json()
    done = api.post("/api/memory/travel/cleanup", {"session_retention_days": 30}, format="json").json()

    assert (dry["dry_run"], dry["sessions_deleted"]) == (True, 1)
    assert kept["sessions_deleted"] == 0
    assert done["sessions_deleted"] == 1
    assert not Session.objects.exists()


# -- query plans -------------------------------------------------------------------------------------


def _analyze(*tables: str) -> None:
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"ANALYZE {table}")


def test_the_expiry_sweep_uses_the_partial_index(account: AccountWithKey) -> None:
    bulk_memories(account.account, count=6_000, user_id="big", spread_users=100)
    # Few rows with an expiry among many without: the shape of a live table.
    some = list(Memory.objects.values_list("pk", flat=True)[:60])
    Memory.objects.filter(pk__in=some[:30]).update(expires_at=timezone.now() - PAST)
    Memory.objects.filter(pk__in=some[30:]).update(expires_at=timezone.now() + PAST)
    _analyze("memories_memory")

    for window in (
        RetentionWindow.ending_now(),
        RetentionWindow.ending_now(account=account.account, namespace="default"),
    ):
        batch = window.expired_memories().select_for_update(skip_locked=True).only("content")[:1000]
        assert "memory_expiring" in batch.explain()


def test_the_session_sweep_uses_the_updated_at_index(account: AccountWithKey) -> None:
    Session.objects.bulk_create(
        [
            Session(account=account.account, external_id=uuid.uuid4().hex, user_id=f"u{index % 50}")
            for index in range(3_000)
        ]
    )
    make_session(account.account, "old", idle_days=400)
    _analyze("memories_session", "memories_rawtranscript")

    sessions = RetentionWindow.ending_now().sessions().order_by("updated_at").select_for_update(skip_locked=True)
    batch = sessions.values_list("pk", flat=True)[:1000]

    assert "session_updated" in batch.explain()
