"""Prometheus metrics of the background work: transcript processing, and the
gauges that are facts of the database rather than of one process.

The counters and histograms count what this process did; under `make run`
(PROMETHEUS_MULTIPROC_DIR) /metrics sums them over every process, the job
workers included (memoryproject.prometheus). The queue depths are
read from PostgreSQL on every scrape instead, by a collector: a number kept in
one process would say nothing about rows written and processed by others.
Each is a count over a partial index (an index-only scan), capped and under a
statement timeout (METRICS_DB_TIMEOUT), in one statement; if the database is
slow or down, the scrape leaves those gauges out and says so in
memory_metrics_database_up, and the rest of /metrics is served as usual.
The processor's heartbeat age is read the same way, from its row.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

from django.conf import settings
from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper
from django.utils import timezone
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from memories.models import Memory, ProcessorHeartbeat, RawTranscript, TranscriptStatus
from memoryproject.prometheus import register_collector

logger = logging.getLogger(__name__)

RAW_PROCESSED = Counter(
    "raw_processed_total",
    "Transcript processing attempts by outcome: processed, retried (queued again after a failure, or after its"
    " worker died) or error (given up)",
    ["status"],
)
RAW_PROCESSING_SECONDS = Histogram(
    "raw_processing_seconds",
    "Wall time of one transcript's processing attempt (extraction, embedding, writes), whatever its outcome",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
RAW_EXTRACTED_MEMORIES = Histogram(
    "raw_extracted_memories",
    "Discrete memories each processed transcript added (those already stored are not counted again)",
    buckets=(0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 100),
)
STATUSES = ("processed", "retried", "error")
for _status in STATUSES:
    RAW_PROCESSED.labels(_status)

# A count stops here: past it the gauge reads COUNT_CAP, and the scrape stays cheap whatever the backlog.
COUNT_CAP = 1_000_000


class _Outcome(Protocol):
    processed: int
    retried: int
    failed: int
    memories_created: int


Result = TypeVar("Result", bound=_Outcome)


def count_outcome(result: _Outcome) -> None:
    """Count what happened to the transcript(s) of a result (memories.ingest.CycleResult)."""
    if result.processed:
        RAW_PROCESSED.labels("processed").inc(result.processed)
        RAW_EXTRACTED_MEMORIES.observe(result.memories_created)
    if result.retried:
        RAW_PROCESSED.labels("retried").inc(result.retried)
    if result.failed:
        RAW_PROCESSED.labels("error").inc(result.failed)


def measure_transcript(run: Callable[..., Result]) -> Callable[..., Result]:
    """Decorates the processing of one transcript: its duration and outcome. A
    run that wrote nothing (another worker had taken the transcript over) is not counted."""

    @functools.wraps(run)
    def measured(*args: object, **kwargs: object) -> Result:
        started = time.perf_counter()
        result = run(*args, **kwargs)
        if result.processed or result.retried or result.failed:
            RAW_PROCESSING_SECONDS.observe(time.perf_counter() - started)
            count_outcome(result)
        return result

    return measured


# -- gauges read from the database on scrape ------------------------------------------------


def _capped_count(queryset_sql: str) -> str:
    return f"(SELECT count(*) FROM (SELECT 1 FROM {queryset_sql} LIMIT {COUNT_CAP}) AS capped)"


def _sql() -> tuple[str, list[str]]:
    memory = Memory._meta.db_table
    transcript = RawTranscript._meta.db_table
    # The WHERE clauses are the predicates of the partial indexes transcript_queued_due,
    # memory_embedding_queue and memory_embedding_failed.
    return (
        "SELECT "
        + ", ".join(
            [
                _capped_count(f"{transcript} WHERE status = %s"),
                _capped_count(f"{memory} WHERE embedding IS NULL AND embedding_failed_at IS NULL"),
                _capped_count(f"{memory} WHERE embedding IS NULL AND embedding_failed_at IS NOT NULL"),
            ]
        ),
        [TranscriptStatus.QUEUED.value],
    )


GAUGES = (
    ("raw_queue_depth", "Transcripts queued for processing (status queued, due or waiting for a retry)"),
    ("memory_embedder_pending_rows", "Memories waiting for the background embedder to give them a vector"),
    ("memory_embedder_failed_rows", "Memories the background embedder gave up on (stored, found by keyword only)"),
)


@contextmanager
def _bounded() -> Iterator[CursorWrapper]:
    """A cursor whose statements (and the ORM's, meanwhile) stop after METRICS_DB_TIMEOUT.

    In a savepoint that is always rolled back: SET LOCAL's timeout must not
    outlive it when the scrape runs inside a caller's transaction.
    """
    timeout_ms = max(1, round(float(settings.METRICS_DB_TIMEOUT) * 1000))
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('statement_timeout', %s, true)", [f"{timeout_ms}ms"])
            yield cursor
        transaction.set_rollback(True)


def read_counts() -> tuple[int, int, int]:
    """The three gauges' values, in one statement under METRICS_DB_TIMEOUT."""
    sql, params = _sql()
    with _bounded() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    queued, pending, failed = (int(value) for value in row)
    return queued, pending, failed


class DatabaseGauges(Collector):
    """raw_queue_depth and the embedder's pending and failed rows, counted on each scrape."""

    def describe(self) -> Iterable[Metric]:
        # Without describe(), registering would run collect(): a query at import time.
        for name, documentation in GAUGES:
            yield GaugeMetricFamily(name, documentation)
        yield GaugeMetricFamily("memory_metrics_database_up", "1 if this scrape could count the database gauges")

    def collect(self) -> Iterable[Metric]:
        try:
            values: tuple[int, ...] | None = read_counts()
        except Exception as error:  # never a failed scrape: the other metrics still matter
            logger.warning("metrics: could not count the queues in the database: %s", error)
            values = None
        if values is not None:
            for (name, documentation), value in zip(GAUGES, values, strict=True):
                yield GaugeMetricFamily(name, documentation, value=value)
        yield GaugeMetricFamily(
            "memory_metrics_database_up",
            "1 if this scrape could count the database gauges",
            value=0 if values is None else 1,
        )


DATABASE_GAUGES = DatabaseGauges()
register_collector(DATABASE_GAUGES)


# -- the processor's heartbeat, read from the database on scrape -------------------------------------

HEARTBEAT_AGE = "memory_processor_heartbeat_age_seconds"
HEARTBEAT_AGE_HELP = (
    "Seconds since the transcript processor last beat (left out if it never did:"
    " see memory_processor_heartbeat_recorded)"
)
HEARTBEAT_RECORDED = "memory_processor_heartbeat_recorded"
HEARTBEAT_RECORDED_HELP = "1 if the transcript processor ever recorded a heartbeat, 0 if it never did"


def read_heartbeat() -> float | None:
    """Seconds since the processor's last beat, or None if it never beat; under METRICS_DB_TIMEOUT.

    From its row, not from Redis's copy: record_heartbeat writes the row first,
    so the row is never the older of the two.
    """
    # Here, not at the top: memories.ingest imports this module.
    from memories.ingest import HEARTBEAT_NAME

    with _bounded():
        beat_at = ProcessorHeartbeat.objects.filter(name=HEARTBEAT_NAME).values_list("beat_at", flat=True).first()
    if beat_at is None:
        return None
    # A writer whose clock runs ahead of this one's would make it negative.
    return max(0.0, (timezone.now() - beat_at).total_seconds())


class ProcessorHeartbeatGauges(Collector):
    """The processor's heartbeat age, read on each scrape: a fact of the database, the same whoever answers.

    Before the first beat the age is left out and memory_processor_heartbeat_recorded
    is 0, rather than an age that would pass for a healthy processor (0) or
    compare false with any threshold (NaN): alert rules tell "never ran"
    (recorded == 0) from "stopped" (age > 300); see docs/alerts.yml. If the
    database cannot be read, both are left out (memory_metrics_database_up says why).
    """

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(HEARTBEAT_AGE, HEARTBEAT_AGE_HELP)
        yield GaugeMetricFamily(HEARTBEAT_RECORDED, HEARTBEAT_RECORDED_HELP)

    def collect(self) -> Iterable[Metric]:
        try:
            age = read_heartbeat()
        except Exception as error:  # never a failed scrape
            logger.warning("metrics: could not read the processor heartbeat: %s", error)
            return
        if age is not None:
            yield GaugeMetricFamily(HEARTBEAT_AGE, HEARTBEAT_AGE_HELP, value=age)
        yield GaugeMetricFamily(HEARTBEAT_RECORDED, HEARTBEAT_RECORDED_HELP, value=0 if age is None else 1)


HEARTBEAT_GAUGES = ProcessorHeartbeatGauges()
register_collector(HEARTBEAT_GAUGES)
