"""Memories as cache records: plain JSON of the columns a reader needs.

The vector and the tsvector stay out (0.8 KB and more a memory, and no reader
of the API needs them); a record turns back into a Memory without a query.
Timestamps are written as the API writes them (iso_utc), so that a cached
read answers with them as they are, without parsing a datetime.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from django.db import models

from memories.models import EMBEDDING_DIMENSIONS, Memory

# What readers never use stays in the database: the vector, the full-text
# vector, the duplicate-detection hash and the background embedder's record of
# failures (the admin's, read from the row).
DEFERRED = (
    "embedding",
    "search_vector",
    "content_hash",
    "embedding_attempts",
    "embedding_error",
    "embedding_next_attempt_at",
    "embedding_failed_at",
)
_FIELDS = [field for field in Memory._meta.concrete_fields if field.name not in DEFERRED]
_ATTNAMES = [field.attname for field in _FIELDS]
_DATETIMES = {field.attname for field in _FIELDS if isinstance(field, models.DateTimeField)}
_DATETIME_COLUMNS = {field.column for field in _FIELDS if isinstance(field, models.DateTimeField)}
# The columns of a record, in memory_to_record's order: what SQL selects to build one without a model.
RECORD_COLUMNS = [field.column for field in _FIELDS]
_UUIDS = {field.attname for field in _FIELDS if isinstance(field, (models.UUIDField, models.ForeignKey))} & {
    "id",
    "session_id",
}


def iso_utc(value: datetime) -> str:
    """ISO 8601 in UTC with a Z, as DRF's DateTimeField writes it with USE_TZ
    and TIME_ZONE = "UTC": seconds, then microseconds only when there are any."""
    text = value.astimezone(UTC).isoformat()
    return text[:-6] + "Z"


def iso_utc_sql(expression: str) -> str:
    """iso_utc over a timestamptz expression, in SQL (NULL stays NULL): always
    the microseconds, then none when they are zero. One to_char and a replace
    cost 0.17 us a value against 0.38 for two to_char and a comparison of
    date_trunc's, four times a record (preloading writes a million)."""
    return f"replace(to_char(({expression}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), '.000000Z', 'Z')"


def memory_to_record(memory: Memory) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for name in _ATTNAMES:
        value = getattr(memory, name)
        if isinstance(value, datetime):
            value = iso_utc(value)
        elif isinstance(value, uuid.UUID):
            value = str(value)
        record[name] = value
    return record


def record_json_sql(alias: str) -> str:
    """SQL for the record of row `alias` as JSON text, made by PostgreSQL: what
    memory_to_record gives, bar insignificant form (JSON columns as PostgreSQL
    writes them). For preloading, which
    writes a million records without building a model instance or parsing a
    column in Python."""
    columns = ", ".join(
        f"{iso_utc_sql(f'{alias}.{column}')} AS {column}" if column in _DATETIME_COLUMNS else f"{alias}.{column}"
        for column in RECORD_COLUMNS
    )
    return f"(SELECT row_to_json(record)::text FROM (SELECT {columns}) AS record)"


def memory_from_record(record: dict[str, Any]) -> Memory:
    values = []
    for name in _ATTNAMES:
        value = record[name]
        if value is not None and name in _DATETIMES:
            value = datetime.fromisoformat(value)
        elif value is not None and name in _UUIDS:
            value = uuid.UUID(value)
        values.append(value)
    return Memory.from_db("default", _ATTNAMES, values)


def earliest_expiry(records: Iterable[Mapping[str, Any]]) -> datetime | None:
    """When the first of these memories expires: a cached answer holding them must not outlive it."""
    expiries = [datetime.fromisoformat(r["expires_at"]) for r in records if r.get("expires_at")]
    return min(expiries) if expiries else None


def memory_output(record: Mapping[str, Any]) -> dict[str, Any]:
    """A memory as the API shows it (memories.api.serializers.MemoryOutputSerializer's
    output), from its record: cached reads answer from the records they hold,
    without building a model instance."""
    return {
        "id": record["id"],
        "user_id": record["user_id"],
        "namespace": record["namespace"],
        "session_id": record["session_id"],
        "kind": record["kind"],
        "category": record["category"],
        "key": record["key"],
        "content": record["content"],
        "tags": list(record["tags"]),
        "metadata": record["metadata"],
        "importance": float(record["importance"]),
        "pinned": record["pinned"],
        "access_count": record["access_count"],
        "last_accessed_at": _iso_text(record["last_accessed_at"]),
        "created_at": _iso_text(record["created_at"]),
        "updated_at": _iso_text(record["updated_at"]),
        "expires_at": _iso_text(record["expires_at"]),
        # The vector itself is never sent: clients need to know it exists and of what model.
        "embedding": (
            {"model": record["embedding_model"], "dimensions": EMBEDDING_DIMENSIONS}
            if record["embedding_model"]
            else None
        ),
    }


def _iso_text(value: str | None) -> str | None:
    """A record's timestamp as the API writes it. Records write it so
    (iso_utc); one cached before they did is rewritten."""
    if value is None or value.endswith("Z"):
        return value
    return iso_utc(datetime.fromisoformat(value))
