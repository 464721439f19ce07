"""Small factories: the fewest fields a test needs, the rest defaulted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from django.db import connection
from django.utils import timezone

from memories.models import Account, ApiKey, Memory, RawTranscript, Session, TranscriptStatus, content_hash
from memories.services import MemoryInput, memory_batch_create_pending


@dataclass
class AccountWithKey:
    account: Account
    key: ApiKey
    raw_key: str


def make_account(name: str = "acme") -> AccountWithKey:
    account = Account.objects.create(name=name)
    key, raw_key = ApiKey.generate(account=account, name=f"{name}-key")
    return AccountWithKey(account=account, key=key, raw_key=raw_key)


def make_memory(account: Account, content: str = "User prefers tea", *, user_id: str = "u1", **fields: Any) -> Memory:
    """A row written directly, without embedding: for tests of reads and admin, not of writes."""
    return Memory.objects.create(
        account=account, user_id=user_id, content=content, content_hash=content_hash(content), **fields
    )


def bulk_memories(account: Account, *, count: int, user_id: str | None = None, spread_users: int = 0) -> None:
    """`count` rows with random unit vectors in one INSERT: for tests that need a
    table big enough for the planner. The first `count - spread` rows go to
    `user_id`; with spread_users, the rest go to users user0..userN.

    The HNSW index is dropped for the load and rebuilt from its own definition
    (a bulk build is many times faster than row-by-row inserts); inside the
    test's transaction, so nothing outlives the test.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'memory_embedding_hnsw'")
        (hnsw_definition,) = cursor.fetchone()
        cursor.execute("DROP INDEX memory_embedding_hnsw")
        # Django's foreign keys are deferred; CREATE INDEX refuses to run with checks pending.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(
            """
            INSERT INTO memories_memory (id, account_id, namespace, user_id, kind, category, content, content_hash,
                tags, metadata, importance, pinned, access_count, created_at, updated_at, embedding, embedding_model)
            SELECT gen_random_uuid(), %(account)s, 'default',
                CASE WHEN %(spread)s = 0 OR g %% 2 = 0 THEN %(user)s ELSE 'user' || (g %% GREATEST(%(spread)s, 1)) END,
                'fact', '', 'memory number ' || g, md5(g::text), ARRAY['t' || (g %% 10)],
                jsonb_build_object('n', g %% 7), random(), g %% 50 = 0, 0, now() - g * interval '1 minute', now(),
                (SELECT l2_normalize(array_agg(random() - 0.5)::vector) FROM generate_series(1, 384) WHERE g > 0),
                'all-MiniLM-L6-v2'
            FROM generate_series(1, %(count)s) g
            """,
            {"account": account.id, "user": user_id or "bulk", "spread": spread_users, "count": count},
        )
        cursor.execute(hnsw_definition)
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")
        cursor.execute("ANALYZE memories_memory")


def make_session(
    account: Account, external_id: str = "s1", *, user_id: str = "u1", namespace: str = "default", idle_days: float = 0
) -> Session:
    """A session last updated `idle_days` ago (updated_at is auto_now: set after the insert)."""
    session = Session.objects.create(account=account, namespace=namespace, external_id=external_id, user_id=user_id)
    if idle_days:
        session.updated_at = timezone.now() - timedelta(days=idle_days)
        Session.objects.filter(pk=session.pk).update(updated_at=session.updated_at)
    return session


def make_transcript(
    session: Session, *, status: str = TranscriptStatus.PROCESSED, processed_days_ago: float | None = None
) -> RawTranscript:
    """A transcript of the session; a processed one was processed `processed_days_ago` (default: now)."""
    processed_at = None
    if processed_days_ago is not None or status == TranscriptStatus.PROCESSED:
        processed_at = timezone.now() - timedelta(days=processed_days_ago or 0)
    return RawTranscript.objects.create(
        account=session.account,
        namespace=session.namespace,
        user_id=session.user_id,
        session=session,
        text="User: I prefer tea.",
        status=status,
        processed_at=processed_at,
    )


def bulk_processed_transcripts(session: Session, *, count: int) -> None:
    """`count` processed transcripts of the session: a live table's shape (many done, few queued) for query plans."""
    RawTranscript.objects.bulk_create(
        [
            RawTranscript(
                account=session.account,
                namespace=session.namespace,
                user_id=session.user_id,
                session=session,
                text="User: hi",
                status=TranscriptStatus.PROCESSED,
                processed_at=timezone.now(),
            )
            for _ in range(count)
        ]
    )


def make_pending(account: Account, contents: Sequence[str], *, user_id: str = "u1") -> list[Memory]:
    """Memories stored without their vector (an async write), one millisecond apart, oldest first:
    the embedder claims them in this order (the rows of one batch write would share one created_at)."""
    results = memory_batch_create_pending(
        account=account, items=[MemoryInput(user_id=user_id, content=content) for content in contents], actor="test"
    )
    memories = [result.memory for result in results]
    base = timezone.now()
    for offset, memory in enumerate(memories):
        memory.created_at = base + timedelta(milliseconds=offset)
    Memory.objects.bulk_update(memories, ["created_at"])
    return memories


def assert_stored_vector(stored: object, expected: npt.NDArray[np.floating[Any]]) -> None:
    """`stored`, read back from an embedding column, is `expected` within the
    column's 16-bit rounding (halfvec, memories.vectors): one unit in the last
    place, 2**-10 of the value, whichever way two nearly equal inputs rounded."""
    assert stored is not None
    np.testing.assert_allclose(np.asarray(stored, dtype=np.float32), expected, rtol=2**-10, atol=1e-6)
