"""Write-behind access tracking (memories.access) against the real Redis and PostgreSQL."""

from __future__ import annotations

import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from io import StringIO
from typing import Any, cast

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.models import Schedule
from prometheus_client import REGISTRY

from memories import access
from memories.access import FlushResult, dropped_records, flush_access_counts, pending_access, record_access
from memories.cache import tiered_cache
from memories.models import AccessFlush, Memory, MemoryHistory
from memories.tasks import ACCESS_FLUSH_SCHEDULE, ensure_access_flush_schedule, flush_access_counts_task
from tests.concurrency import in_threads
from tests.factories import AccountWithKey, bulk_memories, make_account, make_memory


def _memories(account: AccountWithKey, count: int) -> list[Memory]:
    return [make_memory(account.account, f"memory {i}") for i in range(count)]


def _counts(memories: list[Memory]) -> dict[uuid.UUID, int]:
    return dict(Memory.objects.filter(pk__in=[m.pk for m in memories]).values_list("id", "access_count"))


def _backdate_claims(seconds: float = 120) -> None:
    """Make every claim look abandoned: older than CLAIM_STALE_SECONDS."""
    client = access._redis()
    claims = cast("list[tuple[bytes, float]]", client.zrange(access._claims_key(), 0, -1, withscores=True))
    assert claims
    client.zadd(access._claims_key(), {member: score - seconds for member, score in claims})


def _claim_keys() -> list[bytes]:
    return list(access._redis().scan_iter(match=access._key("flushing:*")))


def _dropped_metric() -> float:
    return REGISTRY.get_sample_value("memory_access_records_dropped_total") or 0.0


# -- recording and flushing --------------------------------------------------------------------


@pytest.mark.django_db
def test_reads_raise_access_count_and_last_accessed_at_but_not_updated_at(account: AccountWithKey) -> None:
    long_ago = timezone.now() - timedelta(days=3)
    later = timezone.now() + timedelta(days=3)
    a, b, c = (make_memory(account.account, text, updated_at=long_ago) for text in ("a", "b", "c"))
    Memory.objects.filter(pk=c.pk).update(access_count=10, last_accessed_at=later)
    t1 = timezone.now() - timedelta(minutes=2)
    t2 = t1 + timedelta(seconds=30, microseconds=123)
    history = MemoryHistory.objects.count()

    record_access(memory_ids=[a.id, b.id], at=t1)
    record_access(memory_ids=[a.id, c.id], at=t2)
    # A read reported late: it counts, but does not move the time back.
    record_access(memory_ids=[a.id], at=t1 - timedelta(minutes=1))
    result = flush_access_counts()

    assert (result.memories, result.reads, result.claims, result.recovered) == (3, 5, 1, 0)
    rows = {m.pk: m for m in Memory.objects.filter(pk__in=[a.pk, b.pk, c.pk])}
    assert (rows[a.pk].access_count, rows[a.pk].last_accessed_at) == (3, t2)
    assert (rows[b.pk].access_count, rows[b.pk].last_accessed_at) == (1, t1)
    assert (rows[c.pk].access_count, rows[c.pk].last_accessed_at) == (11, later)
    assert {row.updated_at for row in rows.values()} == {long_ago}
    assert MemoryHistory.objects.count() == history
    assert flush_access_counts().reads == 0


@pytest.mark.django_db
def test_recording_writes_nothing_to_postgresql(account: AccountWithKey) -> None:
    memories = _memories(account, 3)

    with CaptureQueriesContext(connection) as queries:
        for _ in range(5):
            record_access(memory_ids=[m.id for m in memories])

    assert len(queries) == 0
    assert set(_counts(memories).values()) == {0}
    assert pending_access().reads == 15
    assert flush_access_counts().reads == 15
    assert set(_counts(memories).values()) == {5}


@pytest.mark.django_db
def test_reads_of_deleted_memories_are_skipped(account: AccountWithKey) -> None:
    kept, deleted = _memories(account, 2)
    record_access(memory_ids=[kept.id, deleted.id, kept.id])
    deleted.delete()

    result = flush_access_counts(batch_size=1)

    assert (result.memories, result.reads) == (1, 2)
    assert _counts([kept]) == {kept.id: 2}


@pytest.mark.django_db
def test_many_batches_each_apply_their_part(account: AccountWithKey) -> None:
    memories = _memories(account, 25)
    for i, memory in enumerate(memories):
        record_access(memory_ids=[memory.id] * (i + 1))

    result = flush_access_counts(batch_size=4)

    assert (result.memories, result.reads) == (25, sum(range(1, 26)))
    assert _counts(memories) == {m.id: i + 1 for i, m in enumerate(memories)}
    assert AccessFlush.objects.get().reads == result.reads


@pytest.mark.django_db
def test_a_page_larger_than_one_script_call_is_counted_whole(account: AccountWithKey) -> None:
    memories = _memories(account, 3)
    page = [m.id for m in memories] * 700  # 2,100 ids: three script calls

    record_access(memory_ids=page)

    assert flush_access_counts().reads == 2100
    assert set(_counts(memories).values()) == {700}


@pytest.mark.django_db
def test_disabled_tracking_records_nothing(account: AccountWithKey) -> None:
    (memory,) = _memories(account, 1)
    dropped = dropped_records()
    with override_settings(ACCESS_TRACKING={**settings.ACCESS_TRACKING, "ENABLED": False}):
        record_access(memory_ids=[memory.id])

    assert pending_access().reads == 0
    # Switched off is not a failure.
    assert dropped_records() == dropped
    assert flush_access_counts().reads == 0


# -- concurrency and crashes -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_racing_flushers_apply_every_read_exactly_once() -> None:
    account = make_account("race")
    memories = _memories(account, 30)
    ids = [m.id for m in memories]
    recorded: list[int] = []
    results: list[FlushResult] = []
    lock = threading.Lock()
    recording = threading.Event()
    recording.set()
    start = threading.Barrier(7)
    dropped = dropped_records()

    def recorder(seed: int) -> None:
        rng = random.Random(seed)
        start.wait()
        for _ in range(150):
            page = rng.sample(ids, rng.randint(1, 10))
            record_access(memory_ids=page)
            with lock:
                recorded.append(len(page))

    def flusher() -> None:
        start.wait()
        while recording.is_set():
            result = flush_access_counts(batch_size=7)
            with lock:
                results.append(result)

    def recorders() -> None:
        in_threads([partial(recorder, seed) for seed in range(4)])
        recording.clear()

    in_threads([recorders, flusher, flusher, flusher])
    results.append(flush_access_counts())

    assert dropped_records() == dropped
    total = sum(recorded)
    assert total > 0
    assert sum(r.reads for r in results) == total
    assert sum(_counts(memories).values()) == total
    assert sum(r.claims for r in results) == AccessFlush.objects.count()


def _apply_after(start: threading.Barrier, outcomes: list[tuple[int, int] | None], claim_id: uuid.UUID) -> None:
    start.wait()
    outcomes.append(access._apply_claim(access._redis(), claim_id, batch_size=10))


@pytest.mark.django_db(transaction=True)
def test_two_appliers_of_one_claim_apply_it_once() -> None:
    account = make_account("race")
    memories = _memories(account, 50)
    client = access._redis()
    for round_ in range(5):
        record_access(memory_ids=[m.id for m in memories])
        claim_id = access._claim(client)
        assert claim_id is not None
        outcomes: list[tuple[int, int] | None] = []
        start = threading.Barrier(4)
        in_threads([partial(_apply_after, start, outcomes, claim_id)] * 4)

        assert sorted(outcomes, key=lambda outcome: outcome is not None) == [None, None, None, (50, 50)]
        assert set(_counts(memories).values()) == {round_ + 1}
        access._release_claim(client, claim_id)


@pytest.mark.django_db
def test_a_claim_applied_before_a_crash_is_not_applied_again(account: AccountWithKey) -> None:
    memories = _memories(account, 2)
    record_access(memory_ids=[m.id for m in memories])
    client = access._redis()
    # The flusher claims and commits, then dies before deleting the claim's key.
    claim_id = access._claim(client)
    assert claim_id is not None
    assert access._apply_claim(client, claim_id, batch_size=100) == (2, 2)
    assert len(_claim_keys()) == 1
    assert pending_access().reads == 0  # an applied claim is not pending

    # Too fresh to be abandoned: another flusher leaves it to its owner.
    assert flush_access_counts().reads == 0
    assert len(_claim_keys()) == 1

    _backdate_claims()
    result = flush_access_counts()

    assert (result.reads, result.claims, result.recovered) == (0, 0, 0)
    assert _claim_keys() == []
    assert client.zcard(access._claims_key()) == 0
    assert set(_counts(memories).values()) == {1}


@pytest.mark.django_db
def test_a_claim_left_unapplied_is_applied_by_the_next_flusher(account: AccountWithKey) -> None:
    old, new = _memories(account, 2)
    record_access(memory_ids=[old.id, old.id])
    # The flusher claims, then dies before its transaction commits.
    assert access._claim(access._redis()) is not None
    record_access(memory_ids=[old.id, new.id])
    assert pending_access() == access.PendingAccess(memories=2, reads=4, claims=1)

    _backdate_claims()
    result = flush_access_counts()

    assert (result.reads, result.claims, result.recovered) == (4, 2, 1)
    assert _counts([old, new]) == {old.id: 3, new.id: 1}
    assert _claim_keys() == []
    assert flush_access_counts().reads == 0


@pytest.mark.django_db
def test_flush_records_are_pruned_after_a_day_unless_their_claim_remains(account: AccountWithKey) -> None:
    (memory,) = _memories(account, 1)
    forgotten = AccessFlush.objects.create(claim_id=uuid.uuid4())
    record_access(memory_ids=[memory.id])
    client = access._redis()
    # Applied, its key never deleted, and nobody flushed for two days.
    unreleased = access._claim(client)
    assert unreleased is not None
    access._apply_claim(client, unreleased, batch_size=10)
    AccessFlush.objects.update(applied_at=timezone.now() - timedelta(days=2))

    flush_access_counts()

    assert AccessFlush.objects.filter(pk=forgotten.pk).exists() is False
    assert AccessFlush.objects.filter(pk=unreleased).exists()
    _backdate_claims()
    assert flush_access_counts().reads == 0
    assert _counts([memory]) == {memory.id: 1}


# -- Redis unavailable ---------------------------------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def silent_redis() -> Iterator[int]:
    """A port that accepts connections and never answers: a hung Redis."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def _caches_at(port: int, timeout: float = 0.5) -> dict[str, Any]:
    default: dict[str, Any] = settings.CACHES["default"]
    options = {**default["OPTIONS"], "SOCKET_CONNECT_TIMEOUT": timeout, "SOCKET_TIMEOUT": timeout}
    return {"default": {**default, "LOCATION": f"redis://127.0.0.1:{port}/0", "OPTIONS": options}}


def test_recording_with_redis_down_drops_the_reads_and_counts_them(closed_port: int) -> None:
    ids = [uuid.uuid4() for _ in range(50)]
    dropped, metric = dropped_records(), _dropped_metric()

    # override_settings(CACHES) makes Django build new cache clients: django-redis connects anew.
    with override_settings(CACHES=_caches_at(closed_port)):
        for _ in range(3):  # enough failures to open the breaker
            record_access(memory_ids=ids)
        assert dropped_records() == dropped + 150
        # With the breaker open, Redis is not even tried: no connection error is logged or counted as a failure.
        assert tiered_cache().breaker.is_open
        failures_before = tiered_cache().breaker.failures
        record_access(memory_ids=ids[:10])
        assert tiered_cache().breaker.failures == failures_before

    assert dropped_records() == dropped + 160
    assert _dropped_metric() == metric + 160


def test_recording_with_redis_hung_gives_up_at_the_socket_timeout(silent_redis: int) -> None:
    dropped = dropped_records()

    with override_settings(CACHES=_caches_at(silent_redis, timeout=0.2)):
        started = time.perf_counter()
        record_access(memory_ids=[uuid.uuid4()])
        elapsed = time.perf_counter() - started

    assert elapsed < 1.0
    assert dropped_records() == dropped + 1


@pytest.mark.django_db
def test_recording_resumes_after_the_breaker_cools_down(account: AccountWithKey, closed_port: int) -> None:
    (memory,) = _memories(account, 1)
    tiered_cache().breaker.cooldown = 0.05
    with override_settings(CACHES=_caches_at(closed_port)):
        for _ in range(3):
            record_access(memory_ids=[memory.id])
    time.sleep(0.1)

    record_access(memory_ids=[memory.id])

    assert flush_access_counts().reads == 1


# -- schedule, task and command ------------------------------------------------------------------


@pytest.mark.django_db
def test_the_schedule_is_created_once_and_follows_the_setting() -> None:
    Schedule.objects.filter(name=ACCESS_FLUSH_SCHEDULE).delete()

    first = ensure_access_flush_schedule()
    second = ensure_access_flush_schedule()

    assert first.pk == second.pk
    schedule = Schedule.objects.get(name=ACCESS_FLUSH_SCHEDULE)
    assert schedule.func == "memories.tasks.flush_access_counts_task"
    assert (schedule.schedule_type, schedule.minutes, schedule.repeats) == (Schedule.MINUTES, 1, -1)

    Schedule.objects.create(name=ACCESS_FLUSH_SCHEDULE, func="old.copy", schedule_type=Schedule.DAILY)
    with override_settings(ACCESS_TRACKING={**settings.ACCESS_TRACKING, "FLUSH_INTERVAL_MINUTES": 5}):
        ensure_access_flush_schedule()

    schedule = Schedule.objects.get(name=ACCESS_FLUSH_SCHEDULE)
    assert (schedule.pk, schedule.minutes) == (first.pk, 5)


@pytest.mark.django_db
def test_migrate_keeps_the_schedule() -> None:
    Schedule.objects.filter(name=ACCESS_FLUSH_SCHEDULE).delete()

    call_command("migrate", verbosity=0)

    assert Schedule.objects.filter(name=ACCESS_FLUSH_SCHEDULE, func="memories.tasks.flush_access_counts_task").count()


@pytest.mark.django_db
def test_the_task_flushes(account: AccountWithKey) -> None:
    (memory,) = _memories(account, 1)
    record_access(memory_ids=[memory.id, memory.id])

    result = flush_access_counts_task()

    assert (result["memories"], result["reads"]) == (1, 2)
    assert _counts([memory]) == {memory.id: 2}


@pytest.mark.django_db
def test_the_command_dry_run_applies_nothing(account: AccountWithKey) -> None:
    a, b = _memories(account, 2)
    record_access(memory_ids=[a.id, b.id, a.id])

    out = StringIO()
    call_command("flush_access", "--dry-run", stdout=out)

    assert out.getvalue().strip() == "Would apply 3 reads to 2 memories (dry run: nothing applied)."
    assert set(_counts([a, b]).values()) == {0}
    assert pending_access().reads == 3

    out = StringIO()
    call_command("flush_access", stdout=out)

    assert out.getvalue().startswith("Applied 3 reads to 2 memories in ")
    assert _counts([a, b]) == {a.id: 2, b.id: 1}


@pytest.mark.django_db
def test_the_command_reports_redis_down_as_an_error(closed_port: int) -> None:
    with override_settings(CACHES=_caches_at(closed_port)), pytest.raises(CommandError, match="Redis is unavailable"):
        call_command("flush_access", stdout=StringIO())


# -- recording in the background -------------------------------------------------------------------


def _pending_fields() -> dict[bytes, bytes]:
    """The pending hash as Redis holds it now (pending_access() would first send the queue)."""
    return cast(dict[bytes, bytes], access._redis().hgetall(access._pending_key()))


@pytest.mark.django_db
def test_an_api_read_is_counted_by_the_background_thread_without_the_request_waiting(
    account: AccountWithKey, api: Any
) -> None:
    memory = make_memory(account.account, "User flies to Lisbon monthly")

    assert api.get(f"/memory/memories/{memory.id}").status_code == 200

    field = f"n:{memory.id.hex}".encode()
    deadline = time.monotonic() + 5
    while field not in _pending_fields():
        assert time.monotonic() < deadline, "the recorder thread never sent the read"
        time.sleep(0.01)
    assert _pending_fields()[field] == b"1"


@pytest.mark.django_db
def test_reads_queued_in_a_burst_are_sent_together_and_all_counted(account: AccountWithKey) -> None:
    memories = _memories(account, 5)
    for memory in memories * 4:
        access.record_access_later(memory_ids=[memory.id])

    flush_access_counts()

    assert set(_counts(memories).values()) == {4}


def test_queued_reads_are_dropped_and_counted_when_redis_is_down(closed_port: int) -> None:
    dropped = dropped_records()
    with override_settings(CACHES=_caches_at(closed_port)):
        access.record_access_later(memory_ids=[uuid.uuid4(), uuid.uuid4()])
        access.send_queued_records()

    assert dropped_records() == dropped + 2


@pytest.mark.django_db
def test_a_flush_keeps_the_rows_it_updates_on_their_pages(account: AccountWithKey) -> None:
    # Rows of about 1 KB (a halfvec and a short text): at fillfactor 50 a page's
    # free space is as large as its rows, so all of them can be updated in one
    # transaction (at 60, 31 of 40 were). A row moved to another page would add
    # an entry to every index, the HNSW one included.
    bulk_memories(account.account, count=40, user_id="u1")
    memory_ids = list(Memory.objects.filter(user_id="u1").values_list("id", flat=True))
    record_access(memory_ids=memory_ids)

    def updates() -> tuple[int, int]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relname = 'memories_memory'"
            )
            row = cursor.fetchone()
        return (row[0], row[1]) if row else (0, 0)

    before = updates()
    assert flush_access_counts().memories == 40
    after = updates()

    assert (after[0] - before[0], after[1] - before[1]) == (40, 40)
