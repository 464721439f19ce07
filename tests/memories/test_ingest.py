"""The transcript processor: extraction into the hierarchy, idempotency, retries, heartbeat, retention, schedules."""

from __future__ import annotations

import json
import socket
from datetime import datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import orjson
import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone
from django_q.models import Schedule
from django_redis import get_redis_connection

from memories.ingest import (
    HEARTBEAT_NAME,
    HEARTBEAT_REDIS_KEY,
    process_queued,
    process_transcript,
    requeue_stale_claims,
    retry_delay,
    transcript_store,
    transcripts_retry,
)
from memories.ingest_tasks import PROCESS_SCHEDULE, RETENTION_SCHEDULE, ensure_ingest_schedules
from memories.models import (
    Account,
    Memory,
    MemoryKind,
    ProcessingDay,
    ProcessorHeartbeat,
    RawTranscript,
    Session,
    TranscriptStatus,
    content_hash,
)
from memories.retention import retention_apply
from tests.factories import AccountWithKey, bulk_processed_transcripts, make_memory

pytestmark = pytest.mark.django_db

TRANSCRIPTS = Path(__file__).resolve().parent.parent / "data" / "transcripts"


def _sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((TRANSCRIPTS / name).read_text())
    return data


def _store(
    account: Account, name: str = "01_flight_booking.json", *, session_id: str = "s1", **kw: Any
) -> RawTranscript:
    user_id = kw.get("user_id", "u1")
    return transcript_store(
        account=account,
        namespace=kw.get("namespace", "travel"),
        user_id=user_id,
        session_data=_sample(name)["session_data"],
        session_id=session_id,
        metadata={"user_id": user_id, "session_type": "travel"},
    )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _llm_down() -> dict[str, Any]:
    """An LLM extractor pointed at a port nobody listens on: every extraction fails at once."""
    return {
        **settings.EXTRACTION,
        "PROVIDER": "openai",
        "BASE_URL": f"http://127.0.0.1:{_closed_port()}/v1",
        "API_KEY": "sk-test",
        "TIMEOUT": 1.0,
    }


def test_processing_extracts_discrete_memories_linked_to_session_and_transcript(account: AccountWithKey) -> None:
    transcript = _store(account.account)

    result = process_transcript(transcript_id=transcript.id)

    assert result.processed == 1
    transcript.refresh_from_db()
    assert transcript.status == TranscriptStatus.PROCESSED
    assert transcript.attempts == 1
    assert transcript.processed_at is not None
    assert transcript.duration_seconds is not None
    assert transcript.duration_seconds > 0
    discrete = Memory.objects.filter(source_transcript=transcript).exclude(kind=MemoryKind.SUMMARY)
    contents = set(discrete.values_list("content", flat=True))
    assert "User prefers window seats" in contents
    assert "User is vegetarian" in contents
    assert transcript.memories_created == len(contents) >= 4
    session = Session.objects.get(account=account.account, namespace="travel", external_id="s1")
    assert all(memory.session_id == session.id for memory in discrete)
    assert all(memory.user_id == "u1" and memory.namespace == "travel" for memory in discrete)
    assert all(memory.embedding is not None for memory in discrete)


def test_processing_writes_the_session_summary_as_an_embedded_summary_memory(account: AccountWithKey) -> None:
    transcript = _store(account.account, "04_promotion.json")

    process_transcript(transcript_id=transcript.id)

    session = Session.objects.get(pk=transcript.session_id)
    assert session.summary
    assert session.summary_embedding is not None
    summary = Memory.objects.get(kind=MemoryKind.SUMMARY, session=session)
    assert summary.content == session.summary
    assert summary.source_transcript_id == transcript.id
    assert summary.embedding is not None


def test_reprocessing_a_transcript_does_not_duplicate_memories(account: AccountWithKey) -> None:
    transcript = _store(account.account)
    process_transcript(transcript_id=transcript.id)
    before = sorted(Memory.objects.values_list("id", "content"))

    assert transcripts_retry(transcript_ids=[transcript.id]) == 1
    again = process_transcript(transcript_id=transcript.id)

    assert again.processed == 1
    assert again.memories_created == 0
    assert sorted(Memory.objects.values_list("id", "content")) == before
    assert Memory.objects.filter(kind=MemoryKind.SUMMARY).count() == 1


def test_reprocessing_deletes_what_the_transcript_no_longer_yields_but_not_what_the_user_stored(
    account: AccountWithKey,
) -> None:
    transcript = _store(account.account)
    process_transcript(transcript_id=transcript.id)
    stale = Memory.objects.filter(source_transcript=transcript, kind="preference").first()
    assert stale is not None
    # A memory the user stored through the API that a run merged with and linked: never deleted.
    mine = make_memory(account.account, "User owns a red bicycle", user_id="u1", namespace="travel")
    Memory.objects.filter(pk=mine.pk).update(source_transcript=transcript)
    # An earlier run extracted something this run will not (an older extractor, say).
    changed = "User prefers aisle seats, once"
    Memory.objects.filter(pk=stale.pk).update(content=changed, content_hash=content_hash(changed), embedding=None)

    transcripts_retry(transcript_ids=[transcript.id])
    process_transcript(transcript_id=transcript.id)

    assert not Memory.objects.filter(content="User prefers aisle seats, once").exists()
    assert Memory.objects.filter(pk=mine.pk).exists()


def test_two_transcripts_of_one_session_keep_one_summary_memory(account: AccountWithKey) -> None:
    first = _store(account.account, "01_flight_booking.json", session_id="same")
    second = _store(account.account, "02_dinner_recipe.json", session_id="same")

    process_queued(limit=10)

    assert first.session_id == second.session_id
    assert Memory.objects.filter(kind=MemoryKind.SUMMARY, session_id=first.session_id).count() == 1
    session = Session.objects.get(pk=first.session_id)
    assert session.summary == Memory.objects.get(kind=MemoryKind.SUMMARY).content


def test_a_claimed_transcript_is_not_processed_twice(account: AccountWithKey) -> None:
    transcript = _store(account.account)

    assert process_transcript(transcript_id=transcript.id).processed == 1
    assert process_transcript(transcript_id=transcript.id).processed == 0
    assert process_queued(limit=10).processed == 0

    transcript.refresh_from_db()
    assert transcript.attempts == 1


def test_failed_extraction_retries_with_exponential_backoff_then_marks_error(account: AccountWithKey) -> None:
    transcript = _store(account.account)
    max_attempts = settings.INGEST["MAX_ATTEMPTS"]

    with override_settings(EXTRACTION=_llm_down(), INGEST={**settings.INGEST, "RETRY_BASE_SECONDS": 10.0}):
        delays = []
        for attempt in range(1, max_attempts + 1):
            before = timezone.now()
            result = process_transcript(transcript_id=transcript.id)
            transcript.refresh_from_db()
            assert transcript.attempts == attempt
            assert "Extraction unavailable" in transcript.last_error
            if attempt < max_attempts:
                assert result.retried == 1
                assert transcript.status == TranscriptStatus.QUEUED
                delays.append((transcript.next_attempt_at - before).total_seconds())
                # Not due yet: a scan skips it.
                assert process_queued(limit=10).processed == 0
                RawTranscript.objects.filter(pk=transcript.pk).update(next_attempt_at=timezone.now())
            else:
                assert result.failed == 1
                assert transcript.status == TranscriptStatus.ERROR

    assert [round(d) for d in delays] == [10 * 2**i for i in range(max_attempts - 1)]
    assert not Memory.objects.exists()
    day = ProcessingDay.objects.get(account=account.account, namespace="travel")
    assert (day.retried, day.errors, day.processed) == (max_attempts - 1, 1, 0)
    # The LLM is back (default extractor): a retry from the admin processes it.
    transcripts_retry(transcript_ids=[transcript.id])
    assert process_queued(limit=10).processed == 1


def test_backoff_is_capped() -> None:
    with override_settings(INGEST={**settings.INGEST, "RETRY_BASE_SECONDS": 30.0, "RETRY_MAX_SECONDS": 100.0}):
        assert [retry_delay(n).total_seconds() for n in (1, 2, 3, 4)] == [30.0, 60.0, 100.0, 100.0]


def test_a_worker_that_died_leaves_its_transcript_to_be_claimed_again(account: AccountWithKey) -> None:
    transcript = _store(account.account)
    stale_claim = timezone.now() - timedelta(seconds=settings.INGEST["STALE_CLAIM_SECONDS"] + 1)
    RawTranscript.objects.filter(pk=transcript.pk).update(
        status=TranscriptStatus.PROCESSING, claimed_at=stale_claim, attempts=1
    )

    result = process_queued(limit=10)

    assert result.requeued_stale == 1
    assert result.processed == 1
    transcript.refresh_from_db()
    assert transcript.status == TranscriptStatus.PROCESSED
    assert transcript.attempts == 2


def test_a_dead_workers_transcript_past_the_attempt_limit_is_marked_error(account: AccountWithKey) -> None:
    transcript = _store(account.account)
    RawTranscript.objects.filter(pk=transcript.pk).update(
        status=TranscriptStatus.PROCESSING,
        claimed_at=timezone.now() - timedelta(days=1),
        attempts=settings.INGEST["MAX_ATTEMPTS"],
    )

    assert requeue_stale_claims() == 1

    transcript.refresh_from_db()
    assert transcript.status == TranscriptStatus.ERROR
    assert "worker stopped" in transcript.last_error


def test_a_worker_whose_claim_was_taken_over_writes_nothing(account: AccountWithKey) -> None:
    from memories import ingest

    transcript = _store(account.account)
    claimed = ingest._claim_one(transcript.id)
    assert claimed is not None
    # Meanwhile the claim was considered dead and another worker took the row.
    RawTranscript.objects.filter(pk=transcript.pk).update(claim_id=None, status=TranscriptStatus.QUEUED)

    result = ingest._run(*claimed)

    assert result.processed == 0
    assert not Memory.objects.exists()
    transcript.refresh_from_db()
    assert transcript.status == TranscriptStatus.QUEUED


def test_processing_beats_the_heartbeat_in_redis_and_the_database(account: AccountWithKey) -> None:
    _store(account.account)

    process_queued(limit=10)

    status = orjson.loads(get_redis_connection("default").get(HEARTBEAT_REDIS_KEY))
    assert status["processed_total"] == 1
    assert timezone.now() - datetime.fromisoformat(status["last_beat"]) < timedelta(seconds=30)
    row = ProcessorHeartbeat.objects.get(name=HEARTBEAT_NAME)
    assert row.processed_total == 1
    assert row.last_cycle["processed"] == 1


def test_daily_statistics_count_processed_transcripts_and_memories(account: AccountWithKey) -> None:
    _store(account.account, session_id="a")
    _store(account.account, "04_promotion.json", session_id="b")

    process_queued(limit=10)

    day = ProcessingDay.objects.get(account=account.account, namespace="travel", day=timezone.now().date())
    assert day.processed == 2
    assert day.memories_created == Memory.objects.exclude(kind=MemoryKind.SUMMARY).count()
    assert day.seconds_total > 0


def test_retention_deletes_only_old_processed_transcripts_and_keeps_their_memories(account: AccountWithKey) -> None:
    old = _store(account.account, session_id="old")
    process_transcript(transcript_id=old.id)
    RawTranscript.objects.filter(pk=old.pk).update(processed_at=timezone.now() - timedelta(days=31))
    recent = _store(account.account, "04_promotion.json", session_id="recent")
    process_transcript(transcript_id=recent.id)
    queued = _store(account.account, "02_dinner_recipe.json", session_id="queued")
    RawTranscript.objects.filter(pk=queued.pk).update(created_at=timezone.now() - timedelta(days=400))
    memories = Memory.objects.count()

    dry = retention_apply(retention_days=30, dry_run=True)
    assert (dry.transcripts_deleted, RawTranscript.objects.count()) == (1, 3)
    result = retention_apply(retention_days=30)

    assert result.transcripts_deleted == 1
    assert set(RawTranscript.objects.values_list("id", flat=True)) == {recent.id, queued.id}
    assert Memory.objects.count() == memories
    kept = Memory.objects.filter(session__external_id="old")
    assert kept.exists()
    assert all(memory.source_transcript_id is None for memory in kept)


def test_process_raw_run_once_processes_the_queue_and_prints_a_summary(account: AccountWithKey) -> None:
    for index in range(3):
        _store(account.account, session_id=f"s{index}")
    out = StringIO()

    call_command("process_raw", "--run-once", "--retention-days", "60", stdout=out)

    assert RawTranscript.objects.filter(status=TranscriptStatus.PROCESSED).count() == 3
    assert "Processed 3 transcripts" in out.getvalue()
    assert "retention (60 days) deleted 0" in out.getvalue()


def test_process_raw_dry_run_retention_deletes_nothing(account: AccountWithKey) -> None:
    transcript = _store(account.account)
    process_transcript(transcript_id=transcript.id)
    RawTranscript.objects.filter(pk=transcript.pk).update(processed_at=timezone.now() - timedelta(days=10))
    out = StringIO()

    call_command("process_raw", "--run-once", "--retention-days", "5", "--dry-run", stdout=out)

    assert "would delete 1" in out.getvalue()
    assert RawTranscript.objects.filter(pk=transcript.pk).exists()


def test_process_raw_rejects_bad_options() -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--interval"):
        call_command("process_raw", "--run-once", "--interval", "0")


def test_ingest_schedules_are_created_once_and_repaired() -> None:
    ensure_ingest_schedules()
    ensure_ingest_schedules()
    Schedule.objects.filter(name=PROCESS_SCHEDULE).update(minutes=7)

    ensure_ingest_schedules()

    process = Schedule.objects.get(name=PROCESS_SCHEDULE)
    assert (process.func, process.minutes) == ("memories.ingest_tasks.process_queued_task", 1)
    retention = Schedule.objects.get(name=RETENTION_SCHEDULE)
    assert (retention.func, retention.minutes) == ("memories.ingest_tasks.apply_retention_task", 1440)


def test_the_scheduled_tasks_process_and_apply_retention(account: AccountWithKey) -> None:
    from memories.ingest_tasks import apply_retention_task, process_queued_task, process_transcript_task

    first = _store(account.account, session_id="a")
    _store(account.account, "04_promotion.json", session_id="b")

    assert process_transcript_task(str(first.id))["processed"] == 1
    assert process_queued_task()["processed"] == 1
    assert apply_retention_task()["transcripts_deleted"] == 0


def test_queue_scans_use_the_partial_indexes(account: AccountWithKey) -> None:
    from django.db import connection

    from memories.ingest_selectors import queue_position

    # Many processed transcripts, few queued: the shape of a live table.
    transcript = _store(account.account)
    bulk_processed_transcripts(transcript.session, count=3000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE memories_rawtranscript")
    due = (
        RawTranscript.objects.filter(status=TranscriptStatus.QUEUED, next_attempt_at__lte=timezone.now())
        .order_by("next_attempt_at", "created_at")
        .values_list("id", flat=True)[:1]
    )
    retention = RawTranscript.objects.filter(
        status=TranscriptStatus.PROCESSED, processed_at__lt=timezone.now() - timedelta(days=30)
    )

    assert "transcript_queued_due" in due.explain()
    assert "transcript_processed" in retention.values_list("id", flat=True)[:1000].explain()
    assert queue_position(transcript=transcript) == 0


@pytest.mark.django_db(transaction=True)
def test_process_raw_without_run_once_processes_every_interval_until_sigterm(
    subprocess_env: dict[str, str], account: AccountWithKey
) -> None:
    import signal
    import subprocess
    import sys
    import time

    process = subprocess.Popen(
        [sys.executable, "manage.py", "process_raw", "--interval", "0.2"],
        env=subprocess_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Stored while the loop already runs: picked up by a later cycle.
        time.sleep(1.0)
        transcript = _store(account.account)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            transcript.refresh_from_db()
            if transcript.status == TranscriptStatus.PROCESSED:
                break
            time.sleep(0.1)
        assert transcript.status == TranscriptStatus.PROCESSED
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Processed 1 transcripts" in out
    assert out.strip().endswith("Stopped.")
