"""Embeddings in PostgreSQL: stored as pgvector's halfvec, sent in its binary form.

Stored as halfvec (16-bit floats), not vector (32-bit): a memory row with a
1,544-byte vector was about 2 KB, over PostgreSQL's TOAST threshold (2,032
bytes) for a quarter of the rows, whose vectors then lived out of line, one
TOAST index lookup each when an exact search read them. As halfvec (776
bytes) no row is toasted and a page holds more rows. On a copy of the
bench data set (100,000 memories, fillfactor 60), an exact search's
nearest-100 scan of one user: 9,397 rows 16.0 -> 10.2 ms, 3,733 rows 7.3 ->
3.1 ms, 1,918 rows 3.2 -> 2.0 ms; heap 385 -> 304 MB plus 47 MB of TOAST,
HNSW index 168 -> 97 MB. The rounding moves a cosine by about 1e-4: over 300
searches of five users the top 10 and top 100 were the same rows as with
32-bit vectors. The model and every computation in Python stay float32.

pgvector's own adapters send a vector as text: 384 floats formatted in Python
(200 us a vector through VectorField, 440 us through psycopg's list dumper)
and parsed again by PostgreSQL. A batch of 100 memories sends each vector
twice (the near-duplicate check, then the INSERT): ~65 ms of formatting. The
binary form (dimensions, a reserved zero, then big-endian float16) costs ~2 us.

Binary parameters need server-side binding (settings: DATABASES OPTIONS
server_side_binding), and PostgreSQL must know their type: `halfvec` is the
extension's, with an oid of its own in each database, so each connection
looks it up once (use_vector_type, on connection_created). Until it has (a
database whose extension is not created yet), the parameter names no type and
PostgreSQL infers it from where it goes, which works for a halfvec column or
`%s::halfvec` but not inside a CASE (Django's bulk_update).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import numpy as np
import numpy.typing as npt
import psycopg
from django.db import connection
from django.db.backends.base.base import BaseDatabaseWrapper
from pgvector.django import HalfVectorField
from psycopg.adapt import Dumper, PyFormat
from psycopg.pq import Format
from psycopg.types import TypeInfo


class VectorParam:
    """A vector as a query parameter: `cursor.execute("... %s::halfvec ...", [VectorParam(v)])`."""

    __slots__ = ("values",)

    def __init__(self, values: npt.ArrayLike) -> None:
        array = np.asarray(values, dtype=np.float32)
        if array.ndim != 1:
            raise ValueError(f"a vector has one dimension, not {array.ndim}")
        self.values = array

    def to_binary(self) -> bytes:
        return struct.pack(">HH", len(self.values), 0) + self.values.astype(">f2").tobytes()

    def to_text(self) -> str:
        return "[" + ",".join(repr(float(value)) for value in self.values.astype(np.float16)) + "]"


class _VectorBinaryDumper(Dumper):
    format = Format.BINARY

    def dump(self, obj: VectorParam) -> bytes:
        return obj.to_binary()


class _VectorTextDumper(Dumper):
    # For what psycopg writes as SQL text (Django's debug log of executed queries), not for sending.

    def dump(self, obj: VectorParam) -> bytes:
        return obj.to_text().encode()


# The binary one last: it is the one used where either would do.
psycopg.adapters.register_dumper(VectorParam, _VectorTextDumper)
psycopg.adapters.register_dumper(VectorParam, _VectorBinaryDumper)


def use_vector_type(sender: object, *, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """connection_created's receiver: this connection's vector parameters name
    their type. Runs at every checkout from the pool; queries once per connection."""
    raw = connection.connection
    if raw is None or raw.adapters.get_dumper(VectorParam, PyFormat.BINARY).oid:
        return
    info = TypeInfo.fetch(raw, "halfvec")
    if info is not None:
        typed = type("VectorBinaryDumper", (_VectorBinaryDumper,), {"oid": info.oid})
        raw.adapters.register_dumper(VectorParam, typed)


def parse_vector(text: str) -> npt.NDArray[np.float32]:
    """A vector as PostgreSQL writes it ('[0.1,0.2,...]'), as float32."""
    return np.array(text[1:-1].split(","), dtype=np.float32)


class EmbeddingField(HalfVectorField):
    """pgvector's HalfVectorField, written in the binary form and read as a
    float32 array, as the model gives it (reads stay text: they are rare)."""

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        return None if value is None else parse_vector(value)

    def to_python(self, value: Any) -> Any:
        if value is None or isinstance(value, list | np.ndarray):
            return value
        return parse_vector(value)

    def get_prep_value(self, value: Any) -> Any:
        if value is None or isinstance(value, str | VectorParam):
            return value
        return VectorParam(value)


def vectors_store(*, vectors: Sequence[tuple[UUID, npt.ArrayLike]], model_name: str) -> None:
    """Set each memory's embedding (and embedding_model) in one UPDATE joined
    to a VALUES list. The caller holds the rows' locks and the transaction.

    Django's bulk_update writes a CASE WHEN id = ... THEN ... per field, which
    PostgreSQL walks for every row it updates. 30 rows of the bench data set,
    the two ways alternated 20 times: 47.5 ms through bulk_update, 37.8 ms
    joined; the rest is the new rows' index entries, HNSW's above all.
    """
    if not vectors:
        return
    rows = ", ".join(["(%s::uuid, %s::halfvec)"] * len(vectors))
    params: list[Any] = [model_name]
    for memory_id, vector in vectors:
        params += [memory_id, VectorParam(vector)]
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE memories_memory AS m SET embedding = v.embedding, embedding_model = %s"
            f" FROM (VALUES {rows}) AS v(id, embedding) WHERE m.id = v.id",
            params,
        )
