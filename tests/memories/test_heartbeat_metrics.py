"""/metrics: the transcript processor's heartbeat age, read from its database row on each scrape."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import OperationalError
from django.utils import timezone

import memories.metrics as metrics
from memories.ingest import HEARTBEAT_NAME, CycleResult, record_heartbeat
from memories.models import ProcessorHeartbeat
from tests.metrics import scrape, unlabelled

pytestmark = pytest.mark.django_db

AGE = "memory_processor_heartbeat_age_seconds"
RECORDED = "memory_processor_heartbeat_recorded"


def test_before_any_heartbeat_the_age_is_left_out_and_flagged() -> None:
    assert not ProcessorHeartbeat.objects.exists()

    scraped = unlabelled(scrape())

    assert scraped[RECORDED] == 0
    assert AGE not in scraped


def test_right_after_a_heartbeat_its_age_is_small() -> None:
    record_heartbeat(result=CycleResult())

    scraped = unlabelled(scrape())

    assert scraped[RECORDED] == 1
    assert 0 <= scraped[AGE] < 5


def test_the_age_counts_from_the_last_beat_in_the_database() -> None:
    record_heartbeat(result=CycleResult())
    # Redis's copy still says "now": the row, written first by every beat, is what counts.
    ProcessorHeartbeat.objects.filter(name=HEARTBEAT_NAME).update(beat_at=timezone.now() - timedelta(minutes=10))

    scraped = unlabelled(scrape())

    assert 600 <= scraped[AGE] < 610
    assert scraped[RECORDED] == 1


def test_an_unreadable_database_leaves_the_heartbeat_out_of_a_scrape_that_still_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    record_heartbeat(result=CycleResult())

    def unreadable() -> float | None:
        raise OperationalError("canceling statement due to statement timeout")

    monkeypatch.setattr(metrics, "read_heartbeat", unreadable)

    scraped = {name for name, _ in scrape()}

    assert AGE not in scraped
    assert RECORDED not in scraped
    assert "raw_processed_total" in scraped
