"""The background embedder of fire-and-forget writes: claiming, batching,
crashes, coalescing of requests, the sweeper's schedule and the command."""

from __future__ import annotations

import threading
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_q.models import Schedule

import memories.embedder as embedder
from memories.embedder import drain, embed_pending, embed_pending_batch, request_embedding
from memories.embedding.minilm import MODEL_NAME
from memories.models import Account, Memory
from memories.services import MemoryInput, memory_batch_create_pending
from memories.tasks import EMBED_SWEEP_SCHEDULE, ensure_embed_sweep_schedule, sweep_pending_embeddings_task
from tests.concurrency import in_threads
from tests.conftest import SpyEmbedder
from tests.factories import AccountWithKey, make_account, make_pending


def _pending(account: Account, count: int, *, user_id: str = "u1") -> list[Memory]:
    return make_pending(account, [f"Pending fact number {i} about tea" for i in range(count)], user_id=user_id)


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the embedder tasks enqueued, instead of enqueuing them."""
    calls: list[int] = []
    monkeypatch.setattr(embedder, "_enqueue", lambda: calls.append(1))
    return calls


@pytest.mark.django_db
def test_one_model_call_per_batch_oldest_first(account: AccountWithKey, spy_embedder: SpyEmbedder) -> None:
    rows = _pending(account.account, 7)

    assert embed_pending(batch_size=3) == 7

    assert spy_embedder.calls == 3
    assert spy_embedder.texts == [row.content for row in rows]
    assert not Memory.objects.filter(embedding__isnull=True).exists()
    assert set(Memory.objects.values_list("embedding_model", flat=True)) == {MODEL_NAME}


@pytest.mark.django_db
def test_batch_size_comes_from_settings(account: AccountWithKey, spy_embedder: SpyEmbedder, settings: Any) -> None:
    settings.ASYNC_WRITES = {**settings.ASYNC_WRITES, "BATCH_SIZE": 4}
    _pending(account.account, 9)

    assert embed_pending() == 9
    assert spy_embedder.calls == 3


@pytest.mark.django_db
def test_limit_bounds_the_rows_embedded(account: AccountWithKey) -> None:
    _pending(account.account, 5)

    assert embed_pending(limit=2, batch_size=10) == 2
    assert Memory.objects.filter(embedding__isnull=True).count() == 3


@pytest.mark.django_db
def test_a_failed_model_call_leaves_the_rows_pending_and_the_sweeper_embeds_them(
    account: AccountWithKey, spy_embedder: SpyEmbedder
) -> None:
    _pending(account.account, 4)

    def crash() -> None:
        raise RuntimeError("worker died mid-batch")

    spy_embedder.before = crash
    with pytest.raises(RuntimeError):
        embed_pending_batch(limit=10)
    assert Memory.objects.filter(embedding__isnull=True).count() == 4

    spy_embedder.before = None
    assert sweep_pending_embeddings_task() == {"embedded": 4}
    assert not Memory.objects.filter(embedding__isnull=True).exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_claimers_never_embed_the_same_row(spy_embedder: SpyEmbedder) -> None:
    account = make_account("race").account
    rows = _pending(account, 10)
    # Both claimers are inside their model call at once, each holding its rows' locks.
    both_embedding = threading.Barrier(2, timeout=30)

    def wait_for_the_other() -> None:
        both_embedding.wait()

    spy_embedder.before = wait_for_the_other
    claimed: list[int] = []

    def claimer() -> None:
        claimed.append(embed_pending_batch(limit=5).embedded)

    in_threads([claimer, claimer])

    assert claimed == [5, 5]
    assert sorted(spy_embedder.texts) == sorted(row.content for row in rows)
    assert not Memory.objects.filter(embedding__isnull=True).exists()


@pytest.mark.django_db(transaction=True)
def test_rows_of_a_claim_that_rolls_back_are_skipped_meanwhile_then_swept(spy_embedder: SpyEmbedder) -> None:
    account = make_account("crash").account
    _pending(account, 3)
    holding = threading.Event()
    release = threading.Event()
    swept_meanwhile: list[int] = []

    def crashing_worker() -> None:
        def hold_then_die() -> None:
            holding.set()
            assert release.wait(30)
            raise RuntimeError("kill -9")

        spy_embedder.before = hold_then_die
        with pytest.raises(RuntimeError):
            embed_pending_batch(limit=10)

    def sweeper() -> None:
        assert holding.wait(30)
        # The crashing worker still holds the rows: skipped, not waited for.
        swept_meanwhile.append(embed_pending())
        release.set()

    in_threads([crashing_worker, sweeper])
    spy_embedder.before = None

    assert swept_meanwhile == [0]
    assert Memory.objects.filter(embedding__isnull=True).count() == 3
    assert sweep_pending_embeddings_task() == {"embedded": 3}
    assert not Memory.objects.filter(embedding__isnull=True).exists()


@pytest.mark.django_db
def test_rapid_writes_enqueue_one_task(
    account: AccountWithKey, enqueued: list[int], django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        for i in range(100):
            memory_batch_create_pending(
                account=account.account, items=[MemoryInput(user_id="u1", content=f"fact {i}")], actor="test"
            )

    assert len(enqueued) == 1


@pytest.mark.django_db
def test_the_drain_clears_the_flag_so_the_next_write_enqueues_again(
    account: AccountWithKey, enqueued: list[int], spy_embedder: SpyEmbedder, settings: Any
) -> None:
    settings.ASYNC_WRITES = {**settings.ASYNC_WRITES, "BATCH_SIZE": 4}
    request_embedding()
    _pending(account.account, 10)

    result = drain(sleep=lambda seconds: None)

    assert (result.embedded, result.batches) == (10, 3)
    assert spy_embedder.calls == 3
    request_embedding()
    assert len(enqueued) == 2


@pytest.mark.django_db
def test_a_write_committed_just_before_the_flag_is_cleared_is_embedded(
    account: AccountWithKey, enqueued: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # That write found the flag set and enqueued nothing: this task must see it.
    _pending(account.account, 2)
    clear = embedder._clear_flag
    late: list[Memory] = []

    def write_then_clear() -> None:
        if not late:
            late.extend(_pending(account.account, 1, user_id="u2"))
        clear()

    monkeypatch.setattr(embedder, "_clear_flag", write_then_clear)

    result = drain(sleep=lambda seconds: None)

    assert result.embedded == 3
    assert not Memory.objects.filter(embedding__isnull=True).exists()


@pytest.mark.django_db
def test_past_its_budget_the_task_hands_over_to_a_new_one(
    account: AccountWithKey, enqueued: list[int], settings: Any
) -> None:
    settings.ASYNC_WRITES = {**settings.ASYNC_WRITES, "BATCH_SIZE": 2}
    _pending(account.account, 5)

    result = drain(budget_seconds=0.0, sleep=lambda seconds: None)

    assert result.batches == 1
    assert len(enqueued) == 1
    assert Memory.objects.filter(embedding__isnull=True).count() == 3


@pytest.mark.django_db
def test_the_sweep_schedule_is_created_once_and_follows_settings(settings: Any) -> None:
    Schedule.objects.filter(name=EMBED_SWEEP_SCHEDULE).delete()

    first = ensure_embed_sweep_schedule()
    second = ensure_embed_sweep_schedule()

    assert first.pk == second.pk
    schedule = Schedule.objects.get(name=EMBED_SWEEP_SCHEDULE)
    assert schedule.func == "memories.tasks.sweep_pending_embeddings_task"
    assert (schedule.schedule_type, schedule.minutes, schedule.repeats) == (Schedule.MINUTES, 1, -1)

    settings.ASYNC_WRITES = {**settings.ASYNC_WRITES, "SWEEP_INTERVAL_MINUTES": 5}
    ensure_embed_sweep_schedule()
    assert Schedule.objects.get(name=EMBED_SWEEP_SCHEDULE).minutes == 5


@pytest.mark.django_db
def test_the_claim_reads_the_queue_index_and_skips_given_up_rows(account: AccountWithKey) -> None:
    # The claim exactly as the embedder sends it.
    with CaptureQueriesContext(connection) as queries:
        embed_pending_batch(limit=50)
    claim = next(q["sql"] for q in queries.captured_queries if "FOR UPDATE SKIP LOCKED" in q["sql"])
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + claim)
        plan = "\n".join(row[0] for row in cursor.fetchall())

    assert "memory_embedding_queue" in plan
    assert "Seq Scan" not in plan


def _command(*args: str) -> str:
    out = StringIO()
    call_command("embed_pending", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.mark.django_db
def test_command_dry_run_changes_nothing(account: AccountWithKey, spy_embedder: SpyEmbedder) -> None:
    _pending(account.account, 3)

    output = _command("--dry-run")

    assert output.strip() == f"3 memories wait for a vector from {MODEL_NAME} (dry run: nothing changed)."
    assert Memory.objects.filter(embedding__isnull=True).count() == 3
    assert spy_embedder.calls == 0


@pytest.mark.django_db
def test_command_embeds_and_prints_a_summary(account: AccountWithKey, spy_embedder: SpyEmbedder) -> None:
    _pending(account.account, 5)

    output = _command("--batch-size", "2")

    assert output.strip().startswith(f"Embedded 5 pending memories with {MODEL_NAME} in ")
    assert spy_embedder.calls == 3
    assert not Memory.objects.filter(embedding__isnull=True).exists()
