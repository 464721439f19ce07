"""Re-embedding stored memories: after a model change, or to fill rows still waiting for a vector."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from uuid import UUID

from django.db import transaction
from django.db.models import QuerySet
from django.db.models.functions import MD5

from memories.embedding import get_embedder
from memories.invalidation import users_changed
from memories.models import Memory
from memories.vectors import vectors_store


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def memories_reembed(
    *,
    queryset: QuerySet[Memory],
    batch_size: int = 64,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Embed the queryset's rows again with the current embedder; return how many were written.

    Rows are read in primary-key order, `batch_size` at a time, each page
    starting after the last key seen: memory stays bounded, rows that leave the
    queryset once embedded (an `embedding IS NULL` filter) shift nothing, and
    rows inserted meanwhile are either picked up or already embedded by their
    writer. `updated_at` is left alone: a new vector is not a content change.
    `on_progress` is called after each batch with the number of rows it read.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    embedder = get_embedder()
    pages = queryset.order_by("pk")
    last_pk: UUID | None = None
    written = 0
    while True:
        page = pages if last_pk is None else pages.filter(pk__gt=last_pk)
        rows = list(page.values_list("pk", "content")[:batch_size])
        if not rows:
            return written
        last_pk = rows[-1][0]
        vectors = embedder.embed([content for _, content in rows])
        with transaction.atomic():
            # Embedding takes a while, and a row edited or deleted meanwhile has
            # been (or will be) embedded by its writer: writing the vector of the
            # old text over it would silently break its search. Lock, then keep
            # only rows whose text is still the text that was embedded.
            current = dict(
                Memory.objects.filter(pk__in=[pk for pk, _ in rows])
                .select_for_update()
                .annotate(content_md5=MD5("content"))
                .values_list("pk", "content_md5")
            )
            updates = [
                (pk, vector)
                for (pk, content), vector in zip(rows, vectors, strict=True)
                if current.get(pk) == _md5(content)
            ]
            vectors_store(vectors=updates, model_name=embedder.model_name)
            # A cached memory shows its embedding's model: the users' entries must go.
            users_changed(
                Memory.objects.filter(pk__in=[pk for pk, _ in updates])
                .values_list("account_id", "namespace", "user_id")
                .distinct()
            )
        written += len(updates)
        if on_progress is not None:
            on_progress(len(rows))
