"""Vectors are stored as halfvec and go to PostgreSQL in its binary form (memories.vectors)."""

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


def _half(vector: np.ndarray) -> np.ndarray:
    return vector.astype(np.float16).astype(np.float32)


def test_a_vector_written_by_the_orm_reads_back_as_its_16_bit_rounding(account: AccountWithKey) -> None:
    vector = _unit(1)
    memory = make_memory(account.account, embedding=vector)

    stored = Memory.objects.get(pk=memory.pk).embedding
    assert isinstance(stored, np.ndarray)
    assert stored.dtype == np.float32
    assert np.array_equal(stored, _half(vector))
    assert float(stored @ vector) == pytest.approx(1.0, abs=1e-3)


def test_bulk_update_sends_vectors_inside_a_case(account: AccountWithKey) -> None:
    # Django's bulk_update wraps each value in CASE ... END: PostgreSQL must be told the parameter's type.
    first, second = make_memory(account.account, "one"), make_memory(account.account, "two")
    first.embedding, second.embedding = _unit(2), _unit(3)
    Memory.objects.bulk_update([first, second], ["embedding"])

    for memory, seed in ((first, 2), (second, 3)):
        stored = Memory.objects.get(pk=memory.pk).embedding
        assert np.array_equal(stored, _half(_unit(seed)))


def test_a_parameter_compares_like_numpy() -> None:
    a, b = _unit(4), _unit(5)
    params: list[Any] = [VectorParam(a), VectorParam(b), VectorParam(a)]
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 - (%s::halfvec <=> %s::halfvec), vector_dims(%s::halfvec)", params)
        similarity, dimensions = cursor.fetchone()
    assert dimensions == 384
    assert similarity == pytest.approx(float(_half(a) @ _half(b)), abs=1e-6)


def test_each_connection_names_the_vector_type() -> None:
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 'halfvec'::regtype::oid")
        (oid,) = cursor.fetchone()
    assert connection.connection.adapters.get_dumper(VectorParam, PyFormat.BINARY).oid == oid


def test_a_vector_has_one_dimension() -> None:
    with pytest.raises(ValueError, match="one dimension"):
        VectorParam(np.zeros((2, 3)))


def test_a_memorys_vector_stays_in_its_row(account: AccountWithKey) -> None:
    # A 32-bit vector (1,544 bytes) with a few hundred characters of text passed
    # PostgreSQL's TOAST threshold (2,032 bytes): the vector went out of line and
    # an exact search fetched it with one more index lookup per row.
    content = "User mentioned that their favourite hiking trail runs along the coast " * 6
    memory = make_memory(account.account, content, embedding=_unit(6))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_column_toast_chunk_id(embedding), pg_column_size(embedding) FROM memories_memory WHERE id = %s",
            [memory.pk],
        )
        chunk, size = cursor.fetchone()
    assert (chunk, size) == (None, 4 + 4 + 2 * 384)
