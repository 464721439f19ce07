"""Writes to memories. Every change goes through here so that it is embedded,
deduplicated, recorded in MemoryHistory, and invalidated in every cache tier.

Embedding happens before the transaction opens: a model call never holds
row locks, and a failed call changes nothing. A provider that is unavailable
(down, timing out, its breaker open) does not fail the write: the rows are
stored pending, as fire-and-forget writes are, and embedded later. Fire-and-forget writes
(`memory_batch_create_pending`) skip the model call: their rows are stored
without a vector and memories.embedder fills it in the background.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Field, Model
from django.db.models.sql import InsertQuery
from django.utils import timezone

from memories.embedder import (
    FAILURE_FIELDS,
    clear_embedding_failure,
    enqueue_unless_flagged,
    queue_flag,
    request_embedding,
)
from memories.embedding import EmbeddingUnavailable, get_embedder
from memories.invalidation import invalidate_after_commit, invalidate_before_commit, users_changed
from memories.models import Account, HistoryAction, Memory, MemoryHistory, MemoryKind, content_hash
from memories.operations import operation
from memories.vectors import VectorParam

# Fields a client may change; the rest (counters, vectors, hashes) belong to the service.
logger = logging.getLogger(__name__)

UPDATABLE_FIELDS = ("content", "kind", "category", "key", "tags", "metadata", "importance", "pinned", "expires_at")


class KeyConflict(Exception):
    """The change would give a memory the (category, key) another memory of the user has."""


@dataclass(frozen=True)
class MemoryInput:
    """One memory to store, already validated by the API's serializer."""

    user_id: str
    content: str
    namespace: str = "default"
    kind: str = MemoryKind.FACT
    category: str = ""
    key: str | None = None
    tags: Sequence[str] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    importance: float = 0.5
    pinned: bool = False
    expires_at: datetime | None = None


@dataclass(frozen=True)
class WriteResult:
    memory: Memory
    # False when the input updated an existing memory: same key, or a duplicate.
    created: bool
    # Why an existing memory was updated: "key", "duplicate", or "" when created.
    matched_by: str = ""


def _history(memory: Memory, *, action: str, actor: str, old: str | None, changes: dict[str, Any]) -> MemoryHistory:
    return MemoryHistory(
        memory_id=memory.id,
        account_id=memory.account_id,
        action=action,
        old_content=old,
        new_content=None if action == HistoryAction.DELETE else memory.content,
        changes=changes,
        actor=actor,
    )


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple):
        return list(value)
    return value


def _apply(memory: Memory, values: Mapping[str, Any]) -> dict[str, Any]:
    """Set the values that differ; return {"field": [old, new]} of what changed."""
    changes: dict[str, Any] = {}
    for name, value in values.items():
        new = list(value) if name == "tags" else value
        old = getattr(memory, name)
        if old != new:
            changes[name] = [_json_value(old), _json_value(new)]
            setattr(memory, name, new)
    return changes


def _input_values(item: MemoryInput) -> dict[str, Any]:
    return {
        "content": item.content,
        "kind": item.kind,
        "category": item.category,
        "key": item.key,
        "tags": list(item.tags),
        "metadata": dict(item.metadata),
        "importance": item.importance,
        "pinned": item.pinned,
        "expires_at": item.expires_at,
    }


def _merge_duplicate(existing: Memory, item: MemoryInput) -> dict[str, Any]:
    """A near-identical memory was stored again: keep one, with the newer wording
    and the union of what both said about it."""
    return {
        "content": item.content,
        "tags": list(dict.fromkeys([*existing.tags, *item.tags])),
        "metadata": {**existing.metadata, **item.metadata},
        "importance": max(existing.importance, item.importance),
        "pinned": existing.pinned or item.pinned,
        "expires_at": None if existing.expires_at is None or item.expires_at is None else item.expires_at,
    }


# Unkeyed items from which a batch's near-duplicates are found in one pass
# over its users' rows rather than one lookup per item (_find_matches).
_ONE_PASS_ITEMS = 10


def _find_matches(
    *, account: Account, items: Sequence[MemoryInput], vectors: np.ndarray | None
) -> list[tuple[Memory, str] | None]:
    """For each item, the existing memory it should update, and why.

    One query for the whole batch: a keyed item matches its (user, category,
    key); any other matches the same user's most similar memory of the same
    kind when that is at least DUPLICATE_SIMILARITY alike, or has the same
    normalised content (rows still waiting for their vector match that way).
    Without vectors (a fire-and-forget write) only the key and the content
    hash can match. Rows are locked so two writers cannot both decide to insert.
    """
    if not items:
        return []
    threshold = settings.MEMORY["DUPLICATE_SIMILARITY"]
    rows = [
        (
            index,
            item.namespace,
            item.user_id,
            item.kind,
            item.category,
            item.key,
            content_hash(item.content),
            None if vectors is None else VectorParam(vectors[index]),
        )
        for index, item in enumerate(items)
    ]
    placeholders = ", ".join(
        ["(%s::int, %s::text, %s::text, %s::text, %s::text, %s::text, %s::text, %s::halfvec)"] * len(rows)
    )
    params: list[Any] = [value for row in rows for value in row]
    similar = [item for item in items if item.key is None]
    ctes = ""
    if len(similar) >= _ONE_PASS_ITEMS and vectors is not None:
        # Each item's nearest same-kind memory, from one pass over the batch's
        # users' rows (both CTEs MATERIALIZED: inlined, the planner looks the
        # rows up again for every item). A batch of 100 for a user of 20,000
        # memories took 865 ms looked up item by item (each rereads the user's
        # 7,000 rows of its kind) and takes 175 ms in one pass; for a user of
        # 1,959, 33.5 against 19.3 ms. Below _ONE_PASS_ITEMS the lookups are
        # cheaper (one item: 1.3 ms against 23 ms; ten: about even).
        ctes = """,
        mine AS MATERIALIZED (
            SELECT id, namespace, user_id, kind, embedding FROM memories_memory
            WHERE account_id = %s AND namespace = ANY(%s) AND user_id = ANY(%s) AND kind = ANY(%s)
              AND key IS NULL AND embedding IS NOT NULL
        ),
        near AS MATERIALIZED (
            SELECT DISTINCT ON (input.idx) input.idx, m.id
            FROM input
            JOIN mine m ON m.namespace = input.namespace AND m.user_id = input.user_id AND m.kind = input.kind
            WHERE input.key IS NULL AND 1 - cosine_distance(m.embedding, input.embedding) >= %s
            ORDER BY input.idx, cosine_distance(m.embedding, input.embedding), m.id
        )"""
        params += [
            account.id,
            sorted({item.namespace for item in similar}),
            sorted({item.user_id for item in similar}),
            sorted({str(item.kind) for item in similar}),
            threshold,
        ]
        nearest = "SELECT near.id, 'duplicate', 2 FROM near WHERE near.idx = input.idx"
        nearest_params: list[Any] = []
    else:
        nearest = """(SELECT m.id, 'duplicate', 2 FROM memories_memory m
             WHERE input.key IS NULL AND m.account_id = %s AND m.namespace = input.namespace
               AND m.user_id = input.user_id AND m.kind = input.kind AND m.key IS NULL
               AND input.embedding IS NOT NULL AND m.embedding IS NOT NULL
               AND 1 - (m.embedding <=> input.embedding) >= %s
             ORDER BY m.embedding <=> input.embedding LIMIT 1)"""
        nearest_params = [account.id, threshold]
    sql = f"""
        WITH input(idx, namespace, user_id, kind, category, key, hash, embedding) AS (VALUES {placeholders}){ctes}
        SELECT input.idx, match.id, match.reason
        FROM input
        CROSS JOIN LATERAL (
            SELECT m.id, 'key' AS reason, 0 AS rank FROM memories_memory m
            WHERE input.key IS NOT NULL AND m.account_id = %s AND m.namespace = input.namespace
              AND m.user_id = input.user_id AND m.category = input.category AND m.key = input.key
            UNION ALL
            SELECT m.id, 'duplicate', 1 FROM memories_memory m
            WHERE input.key IS NULL AND m.account_id = %s AND m.namespace = input.namespace
              AND m.user_id = input.user_id AND m.content_hash = input.hash AND m.key IS NULL
            UNION ALL
            {nearest}
            ORDER BY rank LIMIT 1
        ) AS match
    """
    params += [account.id, account.id, *nearest_params]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        found = {idx: (memory_id, reason) for idx, memory_id, reason in cursor.fetchall()}
    memories = Memory.objects.select_for_update().in_bulk([memory_id for memory_id, _ in found.values()])
    return [
        (memories[found[i][0]], found[i][1]) if i in found and found[i][0] in memories else None
        for i in range(len(items))
    ]


def _dedupe_within(items: Sequence[MemoryInput], vectors: np.ndarray | None) -> list[int | None]:
    """For each item, an earlier item of the same batch it duplicates, if any:
    same key, or (unkeyed, same kind) the same normalised content or, with
    vectors, a similarity of at least DUPLICATE_SIMILARITY."""
    threshold = settings.MEMORY["DUPLICATE_SIMILARITY"]
    similarity = vectors @ vectors.T if vectors is not None and len(items) else None
    hashes = [content_hash(item.content) for item in items]
    earlier: list[int | None] = []
    for i, item in enumerate(items):
        match = None
        for j in range(i):
            other = items[j]
            same_slot = (other.namespace, other.user_id) == (item.namespace, item.user_id)
            if not same_slot:
                continue
            if item.key is not None:
                if (other.category, other.key) == (item.category, item.key):
                    match = j
            elif (
                other.key is None
                and other.kind == item.kind
                and (hashes[i] == hashes[j] or (similarity is not None and similarity[i, j] >= threshold))
            ):
                match = j
        earlier.append(match)
    return earlier


def _write(
    *, account: Account, items: Sequence[MemoryInput], vectors: np.ndarray | None, actor: str
) -> list[WriteResult]:
    """Insert or update the items' rows. Without vectors, created rows and rows
    whose content changes are left waiting for one (embedding NULL, no model)."""
    model_name = get_embedder().model_name if vectors is not None else ""
    now = timezone.now()
    matches = _find_matches(account=account, items=items, vectors=vectors)
    within = _dedupe_within(items, vectors)
    results: list[WriteResult | None] = [None] * len(items)
    to_create: list[Memory] = []
    to_update: dict[Any, Memory] = {}
    history: list[MemoryHistory] = []
    for index, item in enumerate(items):
        earlier = within[index]
        target: tuple[Memory, str] | None = matches[index]
        if earlier is not None:
            earlier_result = results[earlier]
            assert earlier_result is not None
            target = (earlier_result.memory, "key" if item.key is not None else "duplicate")
        if target is None:
            memory = Memory(
                account=account,
                namespace=item.namespace,
                user_id=item.user_id,
                content_hash=content_hash(item.content),
                embedding=None if vectors is None else vectors[index],
                embedding_model=model_name,
                created_at=now,
                updated_at=now,
                **_input_values(item),
            )
            to_create.append(memory)
            results[index] = WriteResult(memory=memory, created=True)
            history.append(_history(memory, action=HistoryAction.CREATE, actor=actor, old=None, changes={}))
            continue
        memory, reason = target
        old_content = memory.content
        values = _input_values(item) if reason == "key" else _merge_duplicate(memory, item)
        changes = _apply(memory, values)
        if changes:
            memory.content_hash = content_hash(memory.content)
            if vectors is not None:
                memory.embedding = vectors[index]
                memory.embedding_model = model_name
            elif "content" in changes:
                # The old vector describes text that is gone: wait for the new one.
                memory.embedding = None
                memory.embedding_model = ""
            if "content" in changes:
                # The old text's failures say nothing about the new one.
                clear_embedding_failure(memory)
            memory.updated_at = now
            if memory.id not in {m.id for m in to_create}:
                to_update[memory.id] = memory
            content_change = changes.pop("content", None)
            action = HistoryAction.UPDATE if reason == "key" else HistoryAction.MERGE
            history.append(
                _history(
                    memory, action=action, actor=actor, old=old_content if content_change else None, changes=changes
                )
            )
        results[index] = WriteResult(memory=memory, created=False, matched_by=reason)
    users_changed({(account.id, item.namespace, item.user_id) for item in items})
    Memory.objects.bulk_create(to_create)
    if to_update:
        Memory.objects.bulk_update(
            list(to_update.values()),
            [*UPDATABLE_FIELDS, "content_hash", "embedding", "embedding_model", *FAILURE_FIELDS, "updated_at"],
        )
    MemoryHistory.objects.bulk_create(history)
    return [result for result in results if result is not None]


def memory_batch_create(*, account: Account, items: Sequence[MemoryInput], actor: str) -> list[WriteResult]:
    """Store many memories: one embedding call, one transaction, all or nothing.

    Items that match an existing memory (same key, or a near-duplicate)
    update it instead of adding a twin; results come back in input order.
    """
    with _operation(account, items):
        try:
            vectors = get_embedder().embed([item.content for item in items])
        except EmbeddingUnavailable as error:
            # The provider is down, not the write: store the rows pending, as an
            # async write does, and let the background embedder give them their
            # vectors when the provider is back (its breaker spares the wait).
            logger.warning("embedding provider unavailable, %d memories stored pending: %s", len(items), error)
            return _write_pending(account=account, items=items, actor=actor)
        return _write_retrying(account=account, items=items, vectors=vectors, actor=actor)


def memory_batch_create_pending(*, account: Account, items: Sequence[MemoryInput], actor: str) -> list[WriteResult]:
    """Store many memories without waiting for the model: one transaction, all
    or nothing, rows without their vectors; the background embedder is asked
    for them once the transaction has committed.

    Same upsert by key and same merge of exact duplicates (normalised content)
    as memory_batch_create, but not the merge of near-duplicates: that needs
    the vector this write does not wait for, and the embedder does not merge
    afterwards either, so two differently worded copies can both stay.
    """
    with _operation(account, items):
        return _write_pending(account=account, items=items, actor=actor)


def _write_pending(*, account: Account, items: Sequence[MemoryInput], actor: str) -> list[WriteResult]:
    if len(items) == 1:
        stored = _store_new_pending(account=account, item=items[0], actor=actor)
        if stored is not None:
            return [stored]
    results = _write_retrying(account=account, items=items, vectors=None, actor=actor)
    # Outside an atomic block this runs at once (the write has committed);
    # inside a caller's, after its commit: the embedder never looks too early.
    transaction.on_commit(request_embedding)
    return results


def _store_new_pending(*, account: Account, item: MemoryInput, actor: str) -> WriteResult | None:
    """The common fire-and-forget store, a memory that matches none of its
    user's, in one statement: the lookup of a match (by key, or by content
    hash: _find_matches without vectors), the memory's INSERT and its history's,
    in one round trip and, outside a caller's transaction, its own transaction
    (no BEGIN and COMMIT round trips). None when it matches a memory, or when a
    concurrent writer took its key first: nothing was written, and the general
    path (_write) updates the match.

    Redis: its user's token is replaced before, and after the commit together
    with the embedder's flag (request_embedding), on one round trip.
    """
    users = {(account.id, item.namespace, item.user_id)}
    invalidate_before_commit(users)
    now = timezone.now()
    memory = Memory(
        account=account,
        namespace=item.namespace,
        user_id=item.user_id,
        content_hash=content_hash(item.content),
        embedding=None,
        embedding_model="",
        created_at=now,
        updated_at=now,
        **_input_values(item),
    )
    entry = _history(memory, action=HistoryAction.CREATE, actor=actor, old=None, changes={})
    if item.key is not None:
        match = "m.category = %s AND m.key = %s"
        match_params: list[Any] = [item.category, item.key]
    else:
        match = "m.content_hash = %s AND m.key IS NULL"
        match_params = [memory.content_hash]
    insert_memory, memory_params = _insert_select(memory)
    insert_history, history_params = _insert_select(entry)
    # Data-modifying CTEs run whether or not the outer query reads them; all
    # three parts see the table as it was before the statement.
    sql = f"""
        WITH match AS (
            SELECT m.id FROM memories_memory m
            WHERE m.account_id = %s AND m.namespace = %s AND m.user_id = %s AND {match}
            LIMIT 1
        ),
        created AS ({insert_memory} WHERE NOT EXISTS (SELECT 1 FROM match) RETURNING 1),
        logged AS ({insert_history} FROM created)
        SELECT EXISTS (SELECT 1 FROM match)
    """
    params = [account.id, item.namespace, item.user_id, *match_params, *memory_params, *history_params]
    try:
        # Inside a caller's transaction, a savepoint: a unique violation must not end it.
        with transaction.atomic() if connection.in_atomic_block else nullcontext(), connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
    except IntegrityError:
        return None  # A concurrent writer stored the same key: the general path finds its row.
    assert row is not None
    if row[0]:
        return None
    memory._state.adding = False
    memory._state.db = connection.alias
    # At once outside a transaction (the statement has committed), else after the caller's commit.
    transaction.on_commit(lambda: _after_pending_commit(users))
    return WriteResult(memory=memory, created=True)


def _after_pending_commit(users: set[tuple[int, str, str]]) -> None:
    """invalidate_after_commit and request_embedding, on one Redis round trip."""
    replies = invalidate_after_commit(users, also=queue_flag)
    if replies is None:
        # The cache could not use Redis (down, its breaker open, or the cache
        # disabled): request_embedding asks Redis on its own, as it always has.
        request_embedding()
    else:
        enqueue_unless_flagged(first=bool(replies[-1]))


# Per model: _insert_select's SQL and the fields whose values its parameters are.
_INSERT_SELECT: dict[type[Model], tuple[str, list[Field[Any, Any]]]] = {}


def _insert_select(instance: Model) -> tuple[str, list[Any]]:
    """Django's INSERT of one instance (QuerySet.bulk_create's columns, values,
    conversions and casts, whatever fields the model gains) as `INSERT INTO t
    (columns) SELECT values`, for the caller to add a WHERE or FROM clause.

    Django's compiler takes 50-130 us for these rows; its SQL does not depend
    on the values (one placeholder per field, casts from the field types), so
    it is compiled once per model and only the values are prepared per row, as
    the compiler prepares them (pre_save, then get_db_prep_save).
    """
    model = type(instance)
    cached = _INSERT_SELECT.get(model)
    if cached is None:
        opts = model._meta
        fields = [f for f in opts.concrete_fields if not f.generated and f is not opts.auto_field]
        query = InsertQuery(model)
        query.insert_values(fields, [instance])
        ((sql, params),) = query.get_compiler(connection=connection).as_sql()
        head, values = sql.split(" VALUES (", 1)
        if not values.endswith(")") or len(params) != len(fields):
            raise AssertionError(f"unexpected INSERT from Django: {sql}")
        cached = _INSERT_SELECT[model] = (f"{head} SELECT {values[:-1]}", fields)
    sql, fields = cached
    values = [field.pre_save(instance, True) for field in fields]
    if any(hasattr(value, "resolve_expression") for value in values):
        # An expression is compiled into the SQL, not sent as a parameter.
        raise ValueError("_insert_select takes plain values only")
    return sql, [field.get_db_prep_save(value, connection) for field, value in zip(fields, values, strict=True)]


def _write_retrying(
    *, account: Account, items: Sequence[MemoryInput], vectors: np.ndarray | None, actor: str
) -> list[WriteResult]:
    # A concurrent writer can insert the same key between our check and our
    # insert; the unique constraint catches it, and the second try sees its row.
    for attempt in range(2):
        try:
            with transaction.atomic():
                return _write(account=account, items=items, vectors=vectors, actor=actor)
        except IntegrityError:
            if attempt == 1:
                raise
    raise AssertionError("unreachable")


def _operation(account: Account, items: Sequence[MemoryInput]) -> AbstractContextManager[dict[str, int]]:
    """A write is a `store` of one memory or a `batch` of several (memories.operations)."""
    users = {item.user_id for item in items}
    return operation(
        "store" if len(items) == 1 else "batch",
        account_id=account.id,
        user_id=next(iter(users)) if len(users) == 1 else None,
        items=len(items),
    )


def memory_create(*, account: Account, item: MemoryInput, actor: str) -> WriteResult:
    """Store one memory (or update the one it duplicates or whose key it has)."""
    return memory_batch_create(account=account, items=[item], actor=actor)[0]


def memory_update(*, memory: Memory, changes: Mapping[str, Any], actor: str) -> Memory:
    """Change some fields of a memory; a content change re-embeds it."""
    unknown = set(changes) - set(UPDATABLE_FIELDS)
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    vector = None
    # With the provider down, a new content is stored without its vector, for the background embedder.
    deferred = False
    if "content" in changes and changes["content"] != memory.content:
        vector, deferred = _embed_or_defer(changes["content"])
    with transaction.atomic():
        locked = Memory.objects.select_for_update().get(pk=memory.pk)
        old_content = locked.content
        applied = _apply(locked, changes)
        if not applied:
            return locked
        fields = [*applied, "updated_at"]
        if "content" in applied:
            locked.content_hash = content_hash(locked.content)
            if vector is None and not deferred:  # content changed again since we embedded: embed what is stored now
                vector, deferred = _embed_or_defer(locked.content)
            locked.embedding = vector
            locked.embedding_model = get_embedder().model_name if vector is not None else ""
            clear_embedding_failure(locked)
            if deferred:
                transaction.on_commit(request_embedding)
            fields += ["content_hash", "embedding", "embedding_model", *FAILURE_FIELDS]
        locked.updated_at = timezone.now()
        users_changed([(locked.account_id, locked.namespace, locked.user_id)])
        try:
            with transaction.atomic():
                locked.save(update_fields=fields)
        except IntegrityError:
            raise KeyConflict(
                f"Another memory of this user already has category {locked.category!r} and key {locked.key!r}."
            ) from None
        content_change = applied.pop("content", None)
        _history(
            locked,
            action=HistoryAction.UPDATE,
            actor=actor,
            old=old_content if content_change else None,
            changes=applied,
        ).save()
    return locked


def _embed_or_defer(text: str) -> tuple[np.ndarray | None, bool]:
    """The text's vector, or (None, True) when the provider is unavailable: the caller stores it pending."""
    try:
        return get_embedder().embed([text])[0], False
    except EmbeddingUnavailable as error:
        logger.warning("embedding provider unavailable, a memory's new content stored pending: %s", error)
        return None, True


def memory_delete(*, memory: Memory, actor: str) -> None:
    """Delete a memory; its history stays, ending with the deletion."""
    memories_delete(memories=[memory], actor=actor)


def memories_delete(*, memories: Sequence[Memory], actor: str) -> int:
    """Delete memories in one transaction; each one's history stays, ending with the deletion.

    The instances need only id, account, namespace, user_id and content loaded.
    """
    if not memories:
        return 0
    with transaction.atomic():
        users_changed({(memory.account_id, memory.namespace, memory.user_id) for memory in memories})
        MemoryHistory.objects.bulk_create(
            [
                _history(memory, action=HistoryAction.DELETE, actor=actor, old=memory.content, changes={})
                for memory in memories
            ]
        )
        deleted, _ = Memory.objects.filter(pk__in=[memory.pk for memory in memories]).delete()
    return deleted
