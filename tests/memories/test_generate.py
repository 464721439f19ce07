"""The data generator: memories.generate and `manage.py generate_memories`."""

from __future__ import annotations

import re
import statistics
from datetime import datetime, timedelta
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models import Count
from django.utils import timezone
from rest_framework.test import APIClient

from memories.embedding import get_embedder
from memories.generate import (
    HNSW_INDEX,
    GenerateError,
    GenerateResult,
    allocate,
    generate_memories,
    user_ids,
    user_memories,
)
from memories.management.commands.generate_memories import Command
from memories.models import Account, Memory, MemoryKind, content_hash
from tests.conftest import SpyEmbedder
from tests.factories import AccountWithKey, assert_stored_vector, make_memory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 6, 1, 12, tzinfo=timezone.get_current_timezone())


def _generate(account: Account, *, users: int = 3, memories: int = 60, **options: object) -> GenerateResult:
    return generate_memories(account=account, users=users, memories=memories, **options)  # type: ignore[arg-type]


def _counts(account: Account) -> list[int]:
    rows = Memory.objects.filter(account=account).values("user_id").annotate(n=Count("id")).order_by("-n")
    return [row["n"] for row in rows]


class Recorder:
    """A Progress that remembers what it was told."""

    def __init__(self) -> None:
        self.phases: dict[str, int | None] = {}
        self.done: dict[str, int] = {}
        self._phase = ""

    def begin(self, phase: str, total: int | None) -> None:
        self.phases[phase] = total
        self.done[phase] = 0
        self._phase = phase

    def advance(self, count: int) -> None:
        self.done[self._phase] += count


def test_memories_are_spread_zipf_like_over_the_users() -> None:
    counts = allocate(users=1_000, memories=100_000)

    assert sum(counts) == 100_000
    assert counts == sorted(counts, reverse=True)
    assert counts[0] >= 10_000  # a few heavy users
    assert 10 <= statistics.median(counts) <= 100  # most with tens
    assert min(counts) >= 1


def test_the_heaviest_user_has_many_more_than_the_median(account: AccountWithKey) -> None:
    result = _generate(account.account, users=5, memories=100)

    counts = _counts(account.account)
    assert (result.users, result.memories, sum(counts), len(counts)) == (5, 100, 100, 5)
    assert counts[0] >= 2 * statistics.median(counts)


def test_rows_are_what_the_services_would_store(account: AccountWithKey) -> None:
    _generate(account.account, now=NOW)

    rows = list(Memory.objects.filter(account=account.account))
    embedder = get_embedder()
    sample = rows[:8]
    expected = embedder.embed([memory.content for memory in sample])
    for memory, vector in zip(sample, expected, strict=True):
        assert_stored_vector(memory.embedding, vector)
    for memory in rows:
        assert memory.content_hash == content_hash(memory.content)
        assert memory.embedding_model == embedder.model_name
        assert memory.kind in {MemoryKind.FACT, MemoryKind.PREFERENCE, MemoryKind.EVENT}
        assert 0 <= memory.importance <= 1
        assert NOW - timedelta(days=365) <= memory.created_at <= memory.updated_at <= NOW
        assert (memory.access_count == 0) == (memory.last_accessed_at is None)
        if memory.last_accessed_at is not None:
            assert memory.created_at <= memory.last_accessed_at <= NOW
        assert memory.expires_at is None or memory.expires_at > NOW
        assert memory.tags
        assert memory.metadata["source"]
    # No two memories of a user that the service would merge as duplicates.
    assert len({(m.user_id, m.content_hash) for m in rows}) == len(rows)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM memories_memory WHERE account_id = %s"
            " AND search_vector = to_tsvector('english', content)",
            [account.account.id],
        )
        assert cursor.fetchone() == (len(rows),)


def test_a_generated_memory_is_found_by_its_meaning(account: AccountWithKey, api: APIClient) -> None:
    _generate(account.account, seed=7, now=NOW)
    user = user_ids(3)[0]
    specs = list(user_memories(seed=7, user_id=user, count=_counts(account.account)[0], now=NOW))
    ids = dict(Memory.objects.filter(account=account.account, user_id=user).values_list("content", "id"))

    found = 0
    for spec in specs:
        response = api.get("/memory/relevant", {"user_id": user, "query": spec.question, "limit": "5"})
        assert response.status_code == 200
        found += str(ids[spec.content]) in [hit["id"] for hit in response.json()["results"]]

    # Some questions are generic ("Which team do I support?") and several memories answer them.
    assert found >= 0.8 * len(specs)


def test_the_same_seed_gives_the_same_memories_and_vectors(
    account: AccountWithKey, other_account: AccountWithKey
) -> None:
    def snapshot(account: Account, namespace: str) -> list[tuple[object, ...]]:
        fields = ["user_id", "content", "kind", "category", "key", "tags", "metadata", "importance", "pinned"]
        fields += ["access_count", "last_accessed_at", "created_at", "updated_at", "expires_at"]
        return sorted(Memory.objects.filter(account=account, namespace=namespace).values_list(*fields))

    _generate(account.account, seed=3, now=NOW)
    # Embedded by two forked workers instead of this process: the same vectors.
    _generate(other_account.account, seed=3, now=NOW, workers=2, batch_size=8)
    _generate(account.account, seed=4, now=NOW, namespace="other")

    assert snapshot(account.account, "default") == snapshot(other_account.account, "default")
    assert snapshot(account.account, "default") != snapshot(account.account, "other")
    ours, theirs = (
        {m.content: np.asarray(m.embedding) for m in Memory.objects.filter(account=a, namespace="default")}
        for a in (account.account, other_account.account)
    )
    for content, vector in ours.items():
        assert_stored_vector(theirs[content], vector)


def test_the_vector_cache_spares_the_second_run_the_model(
    account: AccountWithKey, tmp_path: Path, spy_embedder: SpyEmbedder
) -> None:
    first = _generate(account.account, cache_path=tmp_path / "vectors.sqlite3")
    spy_embedder.texts.clear()
    second = _generate(account.account, cache_path=tmp_path / "vectors.sqlite3", namespace="again")

    assert (first.embedded, first.cached + first.embedded) >= (1, 60)
    assert (second.embedded, second.cached) == (0, 60)
    assert spy_embedder.texts == []
    vectors = {
        (m.namespace, m.content): m.embedding for m in Memory.objects.filter(account=account.account).only("embedding")
    }
    for (namespace, content), vector in vectors.items():
        if namespace == "again":
            np.testing.assert_array_equal(vector, vectors[("default", content)])


def test_another_accounts_data_is_untouched(account: AccountWithKey, other_account: AccountWithKey) -> None:
    theirs = make_memory(other_account.account, "Their own memory", user_id=user_ids(1)[0])
    before = {f.name: getattr(theirs, f.name) for f in Memory._meta.concrete_fields if not f.generated}

    _generate(account.account)

    theirs.refresh_from_db()
    assert {name: getattr(theirs, name) for name in before} == before
    assert Memory.objects.filter(account=other_account.account).count() == 1


def test_a_namespace_with_memories_is_refused(account: AccountWithKey) -> None:
    make_memory(account.account, "Already here")

    with pytest.raises(GenerateError, match="already has memories in namespace 'default'"):
        _generate(account.account)

    assert Memory.objects.filter(account=account.account).count() == 1


def test_progress_reports_every_memory(account: AccountWithKey) -> None:
    recorder = Recorder()

    _generate(account.account, progress=recorder, batch_size=16)

    assert recorder.phases["memories"] == 60
    assert recorder.done["memories"] == 60


def _index_definition() -> tuple[str, bool, bool] | None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexdef, indisvalid, indisready FROM pg_indexes"
            " JOIN pg_index ON indexrelid = to_regclass(indexname) WHERE indexname = %s",
            [HNSW_INDEX],
        )
        row = cursor.fetchone()
    return None if row is None else (row[0], row[1], row[2])


def test_inside_a_transaction_the_index_is_rebuilt_without_concurrently(account: AccountWithKey) -> None:
    migrated = _index_definition()

    result = _generate(account.account, rebuild_index=True)

    assert result.index_rebuilt
    assert _index_definition() == migrated


@pytest.mark.django_db(transaction=True)
def test_a_rebuilt_index_is_the_one_the_migrations_made() -> None:
    account = Account.objects.create(name="bulk")
    migrated = _index_definition()
    assert migrated is not None
    assert "USING hnsw (embedding halfvec_cosine_ops) WITH (m='16', ef_construction='64')" in migrated[0]
    recorder = Recorder()

    result = _generate(account, rebuild_index=True, progress=recorder)

    assert result.index_rebuilt
    assert _index_definition() == migrated
    assert recorder.phases["index"] == 60


@pytest.mark.django_db(transaction=True)
def test_a_failed_load_writes_nothing_and_leaves_the_index(spy_embedder: SpyEmbedder) -> None:
    account = Account.objects.create(name="bulk")
    migrated = _index_definition()

    def fail_on_the_second_batch() -> None:
        if spy_embedder.calls == 2:
            raise RuntimeError("model failed")

    spy_embedder.before = fail_on_the_second_batch
    with pytest.raises(RuntimeError, match="model failed"):
        _generate(account, rebuild_index=True, batch_size=20)

    assert Memory.objects.count() == 0
    assert _index_definition() == migrated


def test_command_help_explains_the_options() -> None:
    text = Command().create_parser("manage.py", "generate_memories").format_help()

    options = ("--users", "--memories", "--account", "--namespace", "--seed", "--batch-size", "--workers")
    for option in (*options, "--vector-cache", "--no-vector-cache"):
        assert option in text
    assert "Zipf" in text


def test_command_generates_and_prints_a_summary(account: AccountWithKey) -> None:
    out = StringIO()

    call_command(
        "generate_memories", "--users", "3", "--memories", "60", "--account", "fresh", "--seed", "5",
        "--no-vector-cache", stdout=out, stderr=StringIO(),
    )  # fmt: skip

    summary = out.getvalue().strip().splitlines()[-1]
    assert re.fullmatch(
        r"Generated 60 memories of 3 users in account 'fresh' \(namespace 'default'\) in [\d.]+ s \(\d+/s\): "
        r"\d+ texts embedded, 0 vectors from the cache; HNSW index kept\.",
        summary,
    ), summary
    assert _counts(Account.objects.get(name="fresh"))[0] > 20
    with pytest.raises(CommandError, match="already has memories"):
        call_command("generate_memories", "--users", "3", "--memories", "60", "--account", "fresh", stdout=out)
