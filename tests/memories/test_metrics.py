"""/metrics: the transcript processor's counters, and the queue gauges read from the database on scrape."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from prometheus_client import REGISTRY

import memories.metrics as metrics
from memories.ingest import process_transcript, requeue_stale_claims, transcript_store
from memories.models import Account, Memory, RawTranscript, TranscriptStatus
from memories.services import MemoryInput, memory_batch_create_pending
from tests.factories import AccountWithKey, bulk_memories, bulk_processed_transcripts
from tests.metrics import scrape

pytestmark = pytest.mark.django_db

TRANSCRIPTS = Path(__file__).resolve().parent.parent / "data" / "transcripts"


def _store(account: Account, session_id: str = "s1") -> RawTranscript:
    data = json.loads((TRANSCRIPTS / "01_flight_booking.json").read_text())
    return transcript_store(
        account=account,
        namespace="travel",
        user_id="u1",
        session_data=data["session_data"],
        session_id=session_id,
        metadata={"user_id": "u1"},
    )


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _llm_down() -> dict[str, Any]:
    # Nothing listens on port 9 of loopback here: every extraction fails at once.
    return {**settings.EXTRACTION, "PROVIDER": "openai", "BASE_URL": "http://127.0.0.1:9/v1", "TIMEOUT": 1.0}


def test_processing_a_transcript_moves_the_raw_counters_shown_at_metrics(account: AccountWithKey) -> None:
    transcript = _store(account.account)
    processed = _sample("raw_processed_total", status="processed")
    durations = _sample("raw_processing_seconds_count")
    extracted_count = _sample("raw_extracted_memories_count")
    extracted_sum = _sample("raw_extracted_memories_sum")

    process_transcript(transcript_id=transcript.id)

    transcript.refresh_from_db()
    assert transcript.memories_created >= 4
    scraped = scrape()
    assert scraped[("raw_processed_total", (("status", "processed"),))] == processed + 1
    assert scraped[("raw_processing_seconds_count", ())] == durations + 1
    assert scraped[("raw_extracted_memories_count", ())] == extracted_count + 1
    assert scraped[("raw_extracted_memories_sum", ())] == extracted_sum + transcript.memories_created
    assert ("raw_processed_total", (("status", "error"),)) in scraped


def test_failed_attempts_count_as_retried_then_error(account: AccountWithKey) -> None:
    transcript = _store(account.account)
    before = {status: _sample("raw_processed_total", status=status) for status in ("processed", "retried", "error")}
    durations = _sample("raw_processing_seconds_count")
    extracted = _sample("raw_extracted_memories_count")

    with override_settings(EXTRACTION=_llm_down(), INGEST={**settings.INGEST, "MAX_ATTEMPTS": 2}):
        process_transcript(transcript_id=transcript.id)
        RawTranscript.objects.filter(pk=transcript.pk).update(next_attempt_at=timezone.now())
        process_transcript(transcript_id=transcript.id)

    transcript.refresh_from_db()
    assert transcript.status == TranscriptStatus.ERROR
    after = {status: _sample("raw_processed_total", status=status) for status in before}
    assert after == {"processed": before["processed"], "retried": before["retried"] + 1, "error": before["error"] + 1}
    assert _sample("raw_processing_seconds_count") == durations + 2
    assert _sample("raw_extracted_memories_count") == extracted


def test_a_transcript_whose_worker_died_counts_as_retried(account: AccountWithKey) -> None:
    transcript = _store(account.account)
    RawTranscript.objects.filter(pk=transcript.pk).update(
        status=TranscriptStatus.PROCESSING, attempts=1, claimed_at=timezone.now() - timedelta(hours=1)
    )
    retried = _sample("raw_processed_total", status="retried")

    assert requeue_stale_claims() == 1

    assert _sample("raw_processed_total", status="retried") == retried + 1


def test_queue_depth_is_the_number_of_queued_transcripts(account: AccountWithKey) -> None:
    first = _store(account.account, "s1")
    _store(account.account, "s2")
    _store(account.account, "s3")
    process_transcript(transcript_id=first.id)

    queued = RawTranscript.objects.filter(status=TranscriptStatus.QUEUED).count()
    assert queued == 2
    assert scrape()[("raw_queue_depth", ())] == queued
    assert _sample("raw_queue_depth") == queued


def test_pending_and_failed_rows_are_the_memories_without_a_vector(account: AccountWithKey) -> None:
    memory_batch_create_pending(
        account=account.account,
        items=[MemoryInput(user_id="u1", content=f"Pending fact {i}") for i in range(4)],
        actor="test",
    )
    given_up = Memory.objects.filter(embedding__isnull=True).first()
    assert given_up is not None

    scraped = scrape()
    assert scraped[("memory_embedder_pending_rows", ())] == Memory.objects.filter(embedding__isnull=True).count() == 4
    assert scraped[("memory_embedder_failed_rows", ())] == 0
    assert scraped[("memory_metrics_database_up", ())] == 1

    Memory.objects.filter(pk=given_up.pk).update(embedding_attempts=5, embedding_failed_at=timezone.now())
    assert (_sample("memory_embedder_pending_rows"), _sample("memory_embedder_failed_rows")) == (3, 1)


def test_a_slow_database_leaves_the_gauges_out_and_metrics_still_answers(
    account: AccountWithKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        (timeout_before,) = cursor.fetchone()
    monkeypatch.setattr(metrics, "_sql", lambda: ("SELECT pg_sleep(5), 1, 1", []))

    with override_settings(METRICS_DB_TIMEOUT=0.05):
        scraped = scrape()

    assert scraped[("memory_metrics_database_up", ())] == 0
    assert ("raw_queue_depth", ()) not in scraped
    assert ("memory_embedder_pending_rows", ()) not in scraped
    assert ("raw_processed_total", (("status", "processed"),)) in scraped
    # The caller's transaction is intact, and the timeout did not outlive the scrape.
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone() == (timeout_before,)
    assert Account.objects.filter(pk=account.account.pk).exists()


def test_the_gauges_count_through_the_partial_indexes(account: AccountWithKey) -> None:
    # Many embedded rows and processed transcripts, few waiting: the shape of a live table.
    bulk_memories(account.account, count=5_000)
    transcript = _store(account.account)
    bulk_processed_transcripts(transcript.session, count=3000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE memories_memory")
        cursor.execute("ANALYZE memories_rawtranscript")
        sql, params = metrics._sql()
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())

    for index in ("transcript_queued_due", "memory_embedding_queue", "memory_embedding_failed"):
        assert f"Index Only Scan using {index}" in plan, plan
    assert "Seq Scan" not in plan, plan
