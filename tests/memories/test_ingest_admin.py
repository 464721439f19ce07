"""Admin pages of transcript ingestion."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django_q.models import OrmQ

from memories.ingest import transcript_store
from memories.models import RawTranscript, TranscriptStatus
from tests.factories import AccountWithKey

pytestmark = pytest.mark.django_db


def _transcript(account: AccountWithKey, session_id: str, status: str) -> RawTranscript:
    transcript = transcript_store(
        account=account.account,
        namespace="default",
        user_id="u1",
        session_data="User: I prefer tea.",
        session_id=session_id,
        metadata={"user_id": "u1"},
    )
    RawTranscript.objects.filter(pk=transcript.pk).update(status=status, attempts=5, last_error="LLM down " * 20)
    return transcript


def test_changelist_filters_by_status_and_shows_a_short_error(admin_client: Client, account: AccountWithKey) -> None:
    failed = _transcript(account, "a", TranscriptStatus.ERROR)
    _transcript(account, "b", TranscriptStatus.PROCESSED)

    response = admin_client.get(reverse("admin:memories_rawtranscript_changelist"), {"status__exact": "error"})

    assert response.status_code == 200
    page = response.content.decode()
    assert str(failed.id) in page
    assert "LLM down LLM down" in page
    assert page.count("LLM down") < 20
    assert admin_client.get(reverse("admin:memories_rawtranscript_change", args=[failed.id])).status_code == 200


def test_retry_action_queues_failed_transcripts_with_fresh_attempts(
    admin_client: Client, account: AccountWithKey
) -> None:
    failed = _transcript(account, "a", TranscriptStatus.ERROR)
    busy = _transcript(account, "b", TranscriptStatus.PROCESSING)

    response = admin_client.post(
        reverse("admin:memories_rawtranscript_changelist"),
        {"action": "retry", "_selected_action": [str(failed.id), str(busy.id)]},
        follow=True,
    )

    assert response.status_code == 200
    failed.refresh_from_db()
    busy.refresh_from_db()
    assert (failed.status, failed.attempts) == (TranscriptStatus.QUEUED, 0)
    assert busy.status == TranscriptStatus.PROCESSING
    assert "1 are being processed right now" in response.content.decode()


def test_heartbeat_and_daily_statistics_pages_load(admin_client: Client) -> None:
    assert admin_client.get(reverse("admin:memories_processorheartbeat_changelist")).status_code == 200
    assert admin_client.get(reverse("admin:memories_processingday_changelist")).status_code == 200


def test_reprocess_action_queues_a_processing_task_for_each_transcript_at_once(
    admin_client: Client, account: AccountWithKey, django_capture_on_commit_callbacks: Any
) -> None:
    processed = _transcript(account, "a", TranscriptStatus.PROCESSED)
    busy = _transcript(account, "b", TranscriptStatus.PROCESSING)
    OrmQ.objects.all().delete()  # the tasks store_raw queued

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("admin:memories_rawtranscript_changelist"),
            {"action": "reprocess", "_selected_action": [str(processed.id), str(busy.id)]},
            follow=True,
        )

    assert response.status_code == 200
    processed.refresh_from_db()
    assert (processed.status, processed.attempts) == (TranscriptStatus.QUEUED, 0)
    tasks = [task.task["args"] for task in OrmQ.objects.all()]
    assert tasks == [(str(processed.id),)]
    assert "1 are being processed right now" in response.content.decode()
