"""The memory domain's tables.

Every row belongs to an Account, and every query filters by it: an API key
authenticates as its account, and another account's row is simply not found.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from typing import ClassVar

from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.db import models
from django.db.models import Q
from django.utils import timezone
from pgvector.django import HnswIndex

from memories.vectors import EmbeddingField

EMBEDDING_DIMENSIONS = 384
# Full-text configuration of the search vector and of the queries matched against it.
TEXT_SEARCH_CONFIG = "english"
API_KEY_PREFIX = "mp_"


class Account(models.Model):
    """A tenant: owns API keys and every memory stored through them."""

    name = models.CharField(max_length=200, unique=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name


def hash_api_key(raw_key: str) -> str:
    # Keys carry 256 bits of randomness, so a fast hash is enough: there is
    # nothing to brute-force, and lookups stay one indexed equality.
    return hashlib.sha256(raw_key.encode()).hexdigest()


class ApiKey(models.Model):
    """A bearer key of an account. Only its hash is stored; the key is shown once."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=200)
    # The first characters, kept to tell keys apart in the admin.
    prefix = models.CharField(max_length=16, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def generate(cls, *, account: Account, name: str) -> tuple[ApiKey, str]:
        """Create a key; return the row and the raw key, which is never stored."""
        raw_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        key = cls.objects.create(account=account, name=name, prefix=raw_key[:10], key_hash=hash_api_key(raw_key))
        return key, raw_key


class Session(models.Model):
    """One conversation of a user; its summary heads the memory hierarchy."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="sessions")
    namespace = models.CharField(max_length=100, default="default")
    # The client's own id for the session.
    external_id = models.CharField(max_length=255)
    user_id = models.CharField(max_length=255)
    summary = models.TextField(blank=True)
    summary_embedding = EmbeddingField(dimensions=EMBEDDING_DIMENSIONS, null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["account", "namespace", "external_id"], name="session_unique_external_id"),
        ]
        indexes: ClassVar = [
            # A user's sessions, newest first (hierarchy and session pages).
            models.Index(fields=["account", "namespace", "user_id", "-created_at"], name="session_user_created"),
            # The admin's session list, newest first across all accounts.
            models.Index(fields=["-created_at"], name="session_created"),
            # Session retention: sessions last updated before a cutoff, oldest first.
            models.Index(fields=["updated_at"], name="session_updated"),
        ]

    def __str__(self) -> str:
        return f"{self.external_id} ({self.user_id})"


class MemoryKind(models.TextChoices):
    FACT = "fact", "Fact"
    PREFERENCE = "preference", "Preference"
    EVENT = "event", "Event"
    SUMMARY = "summary", "Session summary"
    RAW = "raw", "Raw"


# The hierarchy's "discrete" level: single statements rather than summaries or transcripts.
DISCRETE_KINDS = (MemoryKind.FACT, MemoryKind.PREFERENCE, MemoryKind.EVENT)


def content_hash(content: str) -> str:
    """Hash of the content with case and white space folded: equal hashes are duplicates."""
    normalized = " ".join(content.split()).casefold()
    return hashlib.sha256(normalized.encode()).hexdigest()


class Memory(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="memories")
    namespace = models.CharField(max_length=100, default="default")
    user_id = models.CharField(max_length=255)
    session = models.ForeignKey(Session, on_delete=models.SET_NULL, null=True, blank=True, related_name="memories")
    kind = models.CharField(max_length=20, choices=MemoryKind.choices, default=MemoryKind.FACT)
    category = models.CharField(max_length=100, blank=True, default="")
    # With category, an upsert key: storing the same (user, category, key) again replaces the memory.
    # NULL, not "": unkeyed memories must not collide in the unique constraint.
    key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    content = models.TextField()
    content_hash = models.CharField(max_length=64, editable=False)
    tags = ArrayField(models.CharField(max_length=100), default=list, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    importance = models.FloatField(default=0.5)
    pinned = models.BooleanField(default=False)
    access_count = models.PositiveBigIntegerField(default=0)
    last_accessed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    embedding = EmbeddingField(dimensions=EMBEDDING_DIMENSIONS, null=True, blank=True)
    embedding_model = models.CharField(max_length=100, blank=True, default="")
    # The background embedder's record of this row's own failures (a text the
    # model rejects while it embeds others), reset when the content changes:
    # failed attempts, the last error, no claim before next_attempt_at (the
    # backoff), and failed_at once it gave up (ASYNC_EMBED_MAX_ATTEMPTS). An
    # outage of the whole provider is never counted here. db_default: raw
    # INSERTs (bulk loads) need not name these columns.
    embedding_attempts = models.SmallIntegerField(default=0, db_default=0)
    embedding_error = models.TextField(blank=True, default="", db_default="")
    embedding_next_attempt_at = models.DateTimeField(null=True, blank=True)
    embedding_failed_at = models.DateTimeField(null=True, blank=True)
    # The transcript this memory was extracted from; NULL for API writes, and
    # once retention has deleted the transcript (the session link stays).
    source_transcript = models.ForeignKey(
        "RawTranscript",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="memories",
        # Indexed by the partial memory_source_transcript below: most memories have none.
        db_index=False,
    )
    search_vector = models.GeneratedField(
        expression=SearchVector("content", config=TEXT_SEARCH_CONFIG),
        output_field=SearchVectorField(),
        db_persist=True,
    )

    class Meta:
        verbose_name_plural = "memories"
        constraints: ClassVar = [
            models.CheckConstraint(condition=Q(importance__gte=0) & Q(importance__lte=1), name="memory_importance_0_1"),
            # NULL keys are distinct in PostgreSQL, so only keyed memories are unique.
            models.UniqueConstraint(
                fields=["account", "namespace", "user_id", "category", "key"], name="memory_unique_key"
            ),
        ]
        indexes: ClassVar = [
            # List: a user's memories newest first, cursor on (created_at, id).
            models.Index(fields=["account", "namespace", "user_id", "-created_at", "-id"], name="memory_user_created"),
            # The admin's memory list: all memories newest first (1 ms instead of
            # a 100 ms sort at 100,000 rows).
            models.Index(fields=["-created_at", "-id"], name="memory_created"),
            # List filtered by kind, newest first.
            models.Index(
                fields=["account", "namespace", "user_id", "kind", "-created_at"], name="memory_user_kind_created"
            ),
            # A user's most important memories (preloading, ranking).
            models.Index(fields=["account", "namespace", "user_id", "-importance"], name="memory_user_importance"),
            # Exact-duplicate check on write: same user, same normalised content.
            models.Index(fields=["account", "namespace", "user_id", "content_hash"], name="memory_user_hash"),
            # `tags` filter: any (&&) and all (@>).
            GinIndex(fields=["tags"], name="memory_tags_gin"),
            # `metadata` filter: containment (@>), which also expresses equality of a key.
            GinIndex(fields=["metadata"], name="memory_metadata_gin", opclasses=["jsonb_path_ops"]),
            # Keyword candidates of relevance search: user_id = %s AND search_vector @@
            # tsquery (btree_gin). Per-user posting lists: the same lookup through a
            # search_vector index ANDed with a user B-tree read every user's rows
            # that hold a common word (memories.selectors.search_sql).
            GinIndex(fields=["user_id", "search_vector"], name="memory_user_search_vector_gin"),
            # Similarity candidates of large users' searches: ORDER BY embedding <=> query.
            HnswIndex(
                name="memory_embedding_hnsw",
                fields=["embedding"],
                m=16,
                ef_construction=64,
                opclasses=["halfvec_cosine_ops"],
            ),
            # `pinned=true` lists and the pinned preload strategy.
            models.Index(
                fields=["account", "namespace", "user_id", "-created_at"],
                name="memory_user_pinned",
                condition=Q(pinned=True),
            ),
            # The important preload strategy: importance above 0.7.
            models.Index(
                fields=["account", "namespace", "user_id", "-importance"],
                name="memory_user_important",
                condition=Q(importance__gt=0.7),
            ),
            # The background embedder's queue, oldest first, and the pending-rows
            # gauge: rows waiting for a vector that the embedder has not given up on.
            models.Index(
                fields=["created_at"],
                name="memory_embedding_queue",
                condition=Q(embedding__isnull=True, embedding_failed_at__isnull=True),
            ),
            # Rows the embedder gave up on: the admin's filter and the failed-rows gauge.
            models.Index(
                fields=["embedding_failed_at"],
                name="memory_embedding_failed",
                condition=Q(embedding__isnull=True, embedding_failed_at__isnull=False),
            ),
            # The expiry sweep: rows with an expiry, soonest first.
            models.Index(fields=["expires_at"], name="memory_expiring", condition=Q(expires_at__isnull=False)),
            # A transcript's memories: reprocessing it, the hierarchy's links, and
            # SET NULL when retention deletes the transcript.
            models.Index(
                fields=["source_transcript"],
                name="memory_source_transcript",
                condition=Q(source_transcript__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return self.content[:80]


class PendingInvalidation(models.Model):
    """A user whose cache generation a write could not replace (Redis was down):
    replaced by the first process to reach Redis again (memories.invalidation)."""

    # A plain number, not a foreign key: 0 stands for the API keys' own generation.
    account_id = models.BigIntegerField()
    namespace = models.CharField(max_length=100)
    user_id = models.CharField(max_length=255)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.account_id}/{self.namespace}/{self.user_id}"


class HistoryAction(models.TextChoices):
    CREATE = "create", "Created"
    UPDATE = "update", "Updated"
    MERGE = "merge", "Merged a duplicate"
    DELETE = "delete", "Deleted"


class MemoryHistory(models.Model):
    """Every change to a memory. Kept after the memory is deleted, hence no FK constraint."""

    memory = models.ForeignKey(
        Memory, on_delete=models.DO_NOTHING, db_constraint=False, related_name="history", related_query_name="history"
    )
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="+")
    action = models.CharField(max_length=20, choices=HistoryAction.choices)
    # NULL means "not part of this change", which "" (an empty content) cannot say.
    old_content = models.TextField(null=True, blank=True)  # noqa: DJ001
    new_content = models.TextField(null=True, blank=True)  # noqa: DJ001
    # Every other changed field: {"field": [old, new]}.
    changes = models.JSONField(default=dict, blank=True)
    # Who: "api:<key name>", "admin:<username>" or "system:<job>".
    actor = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "memory history"
        indexes: ClassVar = [
            # A memory's history, oldest first.
            models.Index(fields=["memory", "created_at"], name="history_memory_created"),
            # The admin's history list, newest first across all memories.
            models.Index(fields=["-created_at"], name="history_created"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.memory_id} at {self.created_at:%Y-%m-%d %H:%M:%S}"


class AccessFlush(models.Model):
    """A batch of reads that memories.access applied to access_count.

    Written in the transaction that applied the batch, so a flusher that finds
    the batch still in Redis after a crash knows it was applied and does not
    apply it twice. Rows are pruned after a day.
    """

    # The claim of the batch in Redis (its key is `access:flushing:<claim_id hex>`).
    claim_id = models.UUIDField(primary_key=True)
    memories = models.PositiveIntegerField(default=0)
    reads = models.PositiveBigIntegerField(default=0)
    applied_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes: ClassVar = [
            # The prune: rows applied before a cutoff.
            models.Index(fields=["applied_at"], name="accessflush_applied"),
        ]

    def __str__(self) -> str:
        return f"{self.claim_id} at {self.applied_at:%Y-%m-%d %H:%M:%S}"


class TranscriptStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    PROCESSING = "processing", "Processing"
    PROCESSED = "processed", "Processed"
    ERROR = "error", "Error"


class RawTranscript(models.Model):
    """A chat session sent to store_raw: the durable record of an ingest.

    The task queue only carries its id; this row is the truth. The processor
    claims it (queued -> processing, with a fresh claim_id), and either marks
    it processed in the same transaction that stores what was extracted, or
    puts it back in the queue with a later next_attempt_at, or after
    INGEST["MAX_ATTEMPTS"] marks it error with the reason.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Indexed by transcript_ns_status, which starts with the account.
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="raw_transcripts", db_index=False)
    namespace = models.CharField(max_length=100, default="default")
    user_id = models.CharField(max_length=255)
    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="transcripts")
    # Exactly one of the two holds the transcript: the chat text, or the {role, content} messages.
    text = models.TextField(blank=True)
    messages = models.JSONField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=20, choices=TranscriptStatus.choices, default=TranscriptStatus.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    # A queued row is not taken before this: the backoff of a retry.
    next_attempt_at = models.DateTimeField(default=timezone.now)
    # Set by each claim: a worker only finishes the row if it still holds its claim.
    claim_id = models.UUIDField(null=True, blank=True, editable=False)
    claimed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    # Wall time of the successful processing: the throughput behind estimated_processing_time.
    duration_seconds = models.FloatField(null=True, blank=True)
    memories_created = models.PositiveIntegerField(default=0)
    size_bytes = models.PositiveIntegerField(default=0)

    class Meta:
        indexes: ClassVar = [
            # The processor's scan and queue_position: queued rows that are due, oldest first.
            models.Index(
                fields=["next_attempt_at", "created_at"],
                name="transcript_queued_due",
                condition=Q(status="queued"),
            ),
            # The stale-claim sweep: rows a worker took and may have died with.
            models.Index(fields=["claimed_at"], name="transcript_processing", condition=Q(status="processing")),
            # Retention (processed before a cutoff) and the throughput sample (last processed).
            models.Index(fields=["-processed_at"], name="transcript_processed", condition=Q(status="processed")),
            # processing_status's counts by status and hierarchy's raw level, per account and namespace.
            models.Index(fields=["account", "namespace", "status", "-created_at"], name="transcript_ns_status"),
            # The admin's list, newest first.
            models.Index(fields=["-created_at"], name="transcript_created"),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"


class ProcessingDay(models.Model):
    """What the transcript processor did on one day for one account and namespace (UTC days)."""

    # Indexed by processingday_unique, which starts with the account.
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="+", db_index=False)
    namespace = models.CharField(max_length=100)
    day = models.DateField()
    processed = models.PositiveIntegerField(default=0)
    # Attempts that failed and were queued again, and transcripts given up (status error).
    retried = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    memories_created = models.PositiveIntegerField(default=0)
    seconds_total = models.FloatField(default=0.0)

    class Meta:
        constraints: ClassVar = [
            # Also the index of processing_status's "last days of this namespace".
            models.UniqueConstraint(fields=["account", "namespace", "day"], name="processingday_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.account_id}/{self.namespace} {self.day}"


class ProcessorHeartbeat(models.Model):
    """The transcript processor's last sign of life (also in Redis as `background_processor:status`)."""

    name = models.CharField(max_length=100, primary_key=True)
    beat_at = models.DateTimeField(default=timezone.now)
    # Who beat last: host and process id.
    worker = models.CharField(max_length=200, blank=True)
    processed_total = models.PositiveBigIntegerField(default=0)
    errors_total = models.PositiveBigIntegerField(default=0)
    last_cycle = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return f"{self.name} at {self.beat_at:%Y-%m-%d %H:%M:%S}"
