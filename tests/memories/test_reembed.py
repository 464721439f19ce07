"""Re-embedding stored memories: memories_reembed and `manage.py reembed`."""

from __future__ import annotations

import re
from io import StringIO

import numpy as np
import numpy.typing as npt
import pytest
from django.core.management import CommandError, call_command

from memories.embedding import get_embedder
from memories.embedding.minilm import MODEL_NAME
from memories.management.commands.reembed import Command as ReembedCommand
from memories.models import Memory
from memories.reembedding import memories_reembed
from tests.conftest import SpyEmbedder
from tests.factories import AccountWithKey, assert_stored_vector, make_account, make_memory

pytestmark = pytest.mark.django_db

SUMMARY = rf"Re-embedded (\d+) memories with {MODEL_NAME} in [\d.]+ s \(\d+/s\)\."


def _marker(value: float) -> npt.NDArray[np.float32]:
    """A recognisable vector that no model produces."""
    vector = np.zeros(384, dtype=np.float32)
    vector[0] = value
    return vector


def _run(*args: str) -> str:
    out = StringIO()
    call_command("reembed", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def _expected(content: str) -> npt.NDArray[np.float32]:
    vector: npt.NDArray[np.float32] = get_embedder().embed([content])[0]
    return vector


def test_fills_missing_embeddings_and_leaves_the_rest(account: AccountWithKey) -> None:
    pending = [make_memory(account.account, f"User fact number {i}: likes green tea") for i in range(3)]
    done = make_memory(account.account, "Already embedded", embedding=_marker(1.0), embedding_model="old-model")
    updated_at = {m.pk: m.updated_at for m in pending}

    output = _run("--only-missing")

    assert output.strip().splitlines()[-1].startswith("Re-embedded 3 memories with all-MiniLM-L6-v2 in ")
    for memory in pending:
        memory.refresh_from_db()
        assert memory.embedding_model == MODEL_NAME
        assert_stored_vector(memory.embedding, _expected(memory.content))
        # A new vector is not a content change.
        assert memory.updated_at == updated_at[memory.pk]
    done.refresh_from_db()
    np.testing.assert_array_equal(done.embedding, _marker(1.0))
    assert done.embedding_model == "old-model"


def test_dry_run_only_counts(account: AccountWithKey) -> None:
    pending = make_memory(account.account, "User prefers aisle seats")
    make_memory(account.account, "Embedded", embedding=_marker(1.0), embedding_model=MODEL_NAME)

    output = _run("--only-missing", "--dry-run")

    assert output.strip() == f"Would re-embed 1 memories with {MODEL_NAME} (dry run: nothing changed)."
    pending.refresh_from_db()
    assert pending.embedding is None
    assert pending.embedding_model == ""


def test_model_mismatch_reembeds_other_models_and_missing_rows(account: AccountWithKey) -> None:
    old = make_memory(account.account, "Embedded by an old model", embedding=_marker(1.0), embedding_model="old-model")
    missing = make_memory(account.account, "Never embedded")
    current = make_memory(account.account, "Current model", embedding=_marker(2.0), embedding_model=MODEL_NAME)

    output = _run("--model-mismatch")

    assert "Re-embedded 2 memories" in output
    old.refresh_from_db()
    missing.refresh_from_db()
    current.refresh_from_db()
    assert_stored_vector(old.embedding, _expected(old.content))
    assert_stored_vector(missing.embedding, _expected(missing.content))
    np.testing.assert_array_equal(current.embedding, _marker(2.0))


def test_without_filters_every_memory_is_reembedded(account: AccountWithKey) -> None:
    stale = make_memory(account.account, "Stale vector", embedding=_marker(1.0), embedding_model=MODEL_NAME)

    output = _run()

    assert "Re-embedded 1 memories" in output
    stale.refresh_from_db()
    assert_stored_vector(stale.embedding, _expected(stale.content))


def test_account_and_user_filters(account: AccountWithKey, other_account: AccountWithKey) -> None:
    mine = make_memory(account.account, "Mine", user_id="alice")
    same_account_other_user = make_memory(account.account, "Bob's", user_id="bob")
    other_tenant = make_memory(other_account.account, "Theirs", user_id="alice")

    output = _run("--account", "acme", "--user-id", "alice")

    assert "Re-embedded 1 memories" in output
    for memory in (mine, same_account_other_user, other_tenant):
        memory.refresh_from_db()
    assert mine.embedding is not None
    assert same_account_other_user.embedding is None
    assert other_tenant.embedding is None


def test_unknown_account_and_bad_batch_size_are_refused(db: None) -> None:
    with pytest.raises(CommandError, match="No account named 'nobody'"):
        _run("--account", "nobody")
    with pytest.raises(CommandError, match="--batch-size"):
        _run("--batch-size", "0")


def test_summary_line_counts_a_real_run(db: None) -> None:
    account = make_account("initech").account
    for i in range(5):
        make_memory(account, f"Memory {i}")

    output = _run("--batch-size", "2")

    summary = re.fullmatch(SUMMARY, output.strip())
    assert summary is not None, output
    assert summary.group(1) == "5"
    assert Memory.objects.filter(embedding__isnull=False, embedding_model=MODEL_NAME).count() == 5


def test_batches_by_primary_key_while_rows_leave_the_queryset(account: AccountWithKey) -> None:
    # Embedded rows drop out of an `embedding IS NULL` queryset as the run goes:
    # paging by offset would skip rows, paging by key does not.
    for i in range(7):
        make_memory(account.account, f"Pending memory {i}")
    progress: list[int] = []

    count = memories_reembed(
        queryset=Memory.objects.filter(embedding__isnull=True), batch_size=3, on_progress=progress.append
    )

    assert count == 7
    assert progress == [3, 3, 1]
    assert not Memory.objects.filter(embedding__isnull=True).exists()


def test_a_row_edited_during_embedding_keeps_its_writers_vector(
    account: AccountWithKey, spy_embedder: SpyEmbedder
) -> None:
    edited = make_memory(account.account, "Original text")
    untouched = make_memory(account.account, "Another text")

    def another_writer_edits() -> None:
        Memory.objects.filter(pk=edited.pk).update(content="Edited meanwhile")

    # The row changes while the model computes its old text's vector.
    spy_embedder.before = another_writer_edits

    count = memories_reembed(queryset=Memory.objects.all())

    assert count == 1
    edited.refresh_from_db()
    untouched.refresh_from_db()
    # The vector of "Original text" must not land on a row that now says something else.
    assert edited.embedding is None
    assert untouched.embedding is not None


def test_batch_size_must_be_positive(db: None) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        memories_reembed(queryset=Memory.objects.all(), batch_size=0)


def test_help_describes_the_options() -> None:
    text = ReembedCommand().create_parser("manage.py", "reembed").format_help()

    assert "--model-mismatch" in text
    for option in ("--account", "--user-id", "--only-missing", "--model-mismatch", "--batch-size", "--dry-run"):
        assert option in text
