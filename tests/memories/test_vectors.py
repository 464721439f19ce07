"""Vectors go to PostgreSQL in pgvector's binary form (memories.vectors)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from django.db import connection
from psycopg.adapt import PyFormat

from memories.models import Memory
from memories.vectors import VectorParam
from tests.factories import AccountWithKey, make_memory

pytestmark = pytest.mark.django_db


def _unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(384).astype(np.float32)
    return vector / np.linalg.norm(vector)


def test_a_vector_written_by_the_orm_reads_back_unchanged(account: AccountWithKey) -> None:
    vector = _unit(1)
    memory = make_memory(account.account, embedding=vector)

    stored = Memory.objects.get(pk=memory.pk).embedding
    assert stored is not None
    assert np.array_equal(np.asarray(stored, dtype=np.float32), vector)


def test_bulk_update_sends_vectors_inside_a_case(account: AccountWithKey) -> None:
    # Django's bulk_update wraps each value in CASE ... END: PostgreSQL must be told the parameter's type.
    first, second = make_memory(account.account, "one"), make_memory(account.account, "two")
    first.embedding, second.embedding = _unit(2), _unit(3)
    Memory.objects.bulk_update([first, second], ["embedding"])

    for memory, seed in ((first, 2), (second, 3)):
        stored = Memory.objects.get(pk=memory.pk).embedding
        assert np.array_equal(np.asarray(stored, dtype=np.float32), _unit(seed))


def test_a_parameter_compares_like_numpy() -> None:
    a, b = _unit(4), _unit(5)
    params: list[Any] = [VectorParam(a), VectorParam(b), VectorParam(a)]
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 - (%s::vector <=> %s::vector), vector_dims(%s::vector)", params)
        similarity, dimensions = cursor.fetchone()
    assert dimensions == 384
    assert similarity == pytest.approx(float(a @ b), abs=1e-6)


def test_each_connection_names_the_vector_type() -> None:
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 'vector'::regtype::oid")
        (oid,) = cursor.fetchone()
    assert connection.connection.adapters.get_dumper(VectorParam, PyFormat.BINARY).oid == oid


def test_a_vector_has_one_dimension() -> None:
    with pytest.raises(ValueError, match="one dimension"):
        VectorParam(np.zeros((2, 3)))
