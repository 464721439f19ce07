"""Vectors on their way to PostgreSQL, in pgvector's binary form.

pgvector's own adapters send a vector as text: 384 floats formatted in Python
(200 us a vector through VectorField, 440 us through psycopg's list dumper)
and parsed again by PostgreSQL. A batch of 100 memories sends each vector
twice (the near-duplicate check, then the INSERT): ~65 ms of formatting. The
binary form (pgvector's Vector.to_binary: dimensions, then big-endian
float4) costs ~2 us.

Binary parameters need server-side binding (settings: DATABASES OPTIONS
server_side_binding), and PostgreSQL must know their type: `vector` is the
extension's, with an oid of its own in each database, so each connection looks
it up once (use_vector_type, on connection_created). Until it has (a database
whose extension is not created yet), the parameter names no type and
PostgreSQL infers it from where it goes, which works for a vector column or
`%s::vector` but not inside a CASE (Django's bulk_update).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from django.db.backends.base.base import BaseDatabaseWrapper
from pgvector import Vector
from pgvector.django import VectorField
from psycopg.adapt import Dumper, PyFormat
from psycopg.pq import Format
from psycopg.types import TypeInfo


class VectorParam:
    """A vector as a query parameter: `cursor.execute("... %s::vector ...", [VectorParam(v)])`."""

    __slots__ = ("vector",)

    def __init__(self, values: npt.ArrayLike | Vector) -> None:
        if isinstance(values, Vector):
            self.vector = values
            return
        array = np.asarray(values, dtype=np.float32)
        if array.ndim != 1:
            raise ValueError(f"a vector has one dimension, not {array.ndim}")
        self.vector = Vector(array)


class _VectorBinaryDumper(Dumper):
    format = Format.BINARY

    def dump(self, obj: VectorParam) -> bytes:
        return obj.vector.to_binary()


class _VectorTextDumper(Dumper):
    # For what psycopg writes as SQL text (Django's debug log of executed queries), not for sending.

    def dump(self, obj: VectorParam) -> bytes:
        return obj.vector.to_text().encode()


# The binary one last: it is the one used where either would do.
psycopg.adapters.register_dumper(VectorParam, _VectorTextDumper)
psycopg.adapters.register_dumper(VectorParam, _VectorBinaryDumper)


def use_vector_type(sender: object, *, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """connection_created's receiver: this connection's vector parameters name
    their type. Runs at every checkout from the pool; queries once per connection."""
    raw = connection.connection
    if raw is None or raw.adapters.get_dumper(VectorParam, PyFormat.BINARY).oid:
        return
    info = TypeInfo.fetch(raw, "vector")
    if info is not None:
        typed = type("VectorBinaryDumper", (_VectorBinaryDumper,), {"oid": info.oid})
        raw.adapters.register_dumper(VectorParam, typed)


class EmbeddingField(VectorField):
    """pgvector's VectorField, written in the binary form (reads stay text: they are rare)."""

    def get_prep_value(self, value: Any) -> Any:
        if value is None or isinstance(value, str | VectorParam):
            return value
        return VectorParam(value)
