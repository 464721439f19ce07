"""Realistic synthetic data for benchmarks: `manage.py generate_memories`.

Users get a Zipf-like share of the memories (a few heavy users with
thousands, most with tens), each memory a distinct text from
memories.synthetic with tags, metadata, importance, pinning, access counts
and timestamps over the last year, and a real vector from the configured
embedder. Rows are written with COPY in one transaction, exactly as the
services would store them (content hash, model name; PostgreSQL computes the
full-text vector), but without MemoryHistory rows: they were never written
through the API.

Embedding is the slow part (the local model embeds ~250 of these texts a
second on one core), so it runs in worker processes, one per core, and
vectors are kept in an on-disk cache keyed by model name and text: a second
run of the same seed embeds nothing. A large load drops the HNSW index first
and builds it again afterwards from the model's own definition: 100,000
memories (vectors cached) load in 26 s so, 113 s into the kept index.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import multiprocessing
import random
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from multiprocessing.pool import AsyncResult
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from django.db import connection, connections, transaction
from django.db.models import Index
from django.utils import timezone

from memories.embedding import Vectors, get_embedder
from memories.invalidation import users_changed
from memories.models import Account, Memory, content_hash
from memories.synthetic import KEYED, UNKEYED, Template, fill
from memories.vectors import VectorParam

# Share of user ranked r is proportional to 1 / r**ZIPF_EXPONENT: at 100,000
# memories over 1,000 users the heaviest has ~18,000, the tenth ~1,400 and
# the median user ~20.
ZIPF_EXPONENT = 1.1
HNSW_INDEX = "memory_embedding_hnsw"
# Loads at least this large, and at least as large as the table already is,
# drop the HNSW index and build it again afterwards.
REBUILD_MIN_ROWS = 10_000
# The graph of 100,000 vectors needs ~250 MB; past maintenance_work_mem the
# build goes on on disk: 44 s at the default 64 MB, 18 s with this.
BUILD_MAINTENANCE_WORK_MEM = "1GB"
# The advisory lock that keeps generators one at a time.
_LOCK_KEY = 0x6D656D67656E  # "memgen"
_YEAR = timedelta(days=365)
_SOURCES = ("chat", "chat", "chat", "onboarding", "import", "agent")


class GenerateError(ValueError):
    """The generator cannot run with these arguments (the command shows the message)."""


class Progress(Protocol):
    """What a caller sees of a run: phases ("memories", "index"), each with its size when known."""

    def begin(self, phase: str, total: int | None) -> None: ...

    def advance(self, count: int) -> None: ...


@dataclass(frozen=True)
class GenerateResult:
    users: int
    memories: int
    # Texts the model embedded (equal texts of two users once), and vectors found in the on-disk cache.
    embedded: int
    cached: int
    seconds: float
    # Whether the HNSW index was dropped and built again, and how long that build took.
    index_rebuilt: bool
    index_seconds: float


@dataclass(frozen=True)
class MemorySpec:
    """One generated memory, before its vector."""

    user_id: str
    content: str
    # A question whose answer it is (how a test or a benchmark finds it by meaning).
    question: str
    kind: str
    category: str
    key: str | None
    tags: list[str]
    metadata: dict[str, Any]
    importance: float
    pinned: bool
    access_count: int
    last_accessed_at: datetime | None
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None


def allocate(*, users: int, memories: int) -> list[int]:
    """Memories per user, heaviest first: Zipf-like shares, every user at least
    one (when there are enough memories), summing to `memories` exactly."""
    if users < 1:
        raise GenerateError("users must be at least 1")
    if memories < 0:
        raise GenerateError("memories must not be negative")
    weights = [1 / rank**ZIPF_EXPONENT for rank in range(1, users + 1)]
    floor = 1 if memories >= users else 0
    spare = memories - floor * users
    total = sum(weights)
    shares = [spare * weight / total for weight in weights]
    counts = [floor + math.floor(share) for share in shares]
    # Largest remainders first: the rounding stays as close to the shares as can be.
    by_remainder = sorted(range(users), key=lambda i: (-(shares[i] - math.floor(shares[i])), i))
    for i in by_remainder[: memories - sum(counts)]:
        counts[i] += 1
    return counts


def user_ids(users: int) -> list[str]:
    """Heaviest user first: user-00001, user-00002, ..."""
    width = max(5, len(str(users)))
    return [f"user-{rank:0{width}d}" for rank in range(1, users + 1)]


def _spec(
    rng: random.Random, *, user_id: str, template: Template, content: str, question: str, now: datetime
) -> MemorySpec:
    # Activity grows over the year: more recent memories than old ones.
    created_at = now - _YEAR * rng.random() ** 1.5
    updated_at = created_at if rng.random() < 0.85 else created_at + (now - created_at) * rng.random()
    # Most memories are never read again; a few are read over and over.
    access_count = 0 if rng.random() < 0.5 else min(1_000, int(rng.paretovariate(1.2)))
    last_accessed_at = (
        None if access_count == 0 else created_at + (now - created_at) * (1 - rng.random() ** (1 + access_count))
    )
    keyed = template.key is not None
    importance = round(min(1.0, rng.betavariate(2, 3) + (0.3 if keyed else 0.0)), 2)
    pinned = rng.random() < (0.2 if keyed else 0.02)
    expires_at = now + timedelta(days=rng.uniform(7, 180)) if template.kind == "event" and rng.random() < 0.1 else None
    tags = list(template.tags)
    if importance >= 0.85:
        tags.append("important")
    if rng.random() < 0.1:
        tags.append("follow-up")
    metadata: dict[str, Any] = {"source": rng.choice(_SOURCES), "confidence": round(rng.uniform(0.6, 1.0), 2)}
    if template.kind == "event":
        metadata["mentioned_on"] = created_at.date().isoformat()
    return MemorySpec(
        user_id=user_id,
        content=content,
        question=question,
        kind=template.kind,
        category=template.category,
        key=template.key,
        tags=tags,
        metadata=metadata,
        importance=importance,
        pinned=pinned,
        access_count=access_count,
        last_accessed_at=last_accessed_at,
        created_at=created_at,
        updated_at=updated_at,
        expires_at=expires_at,
    )


def user_memories(*, seed: int, user_id: str, count: int, now: datetime) -> Iterator[MemorySpec]:
    """A user's `count` memories: a few keyed profile facts, then distinct
    statements (no two with the same content hash, as the service would merge
    them). The same seed and user give the same memories, relative to `now`."""
    rng = random.Random(f"{seed}:{user_id}")
    profile = rng.sample(KEYED, k=min(len(KEYED), count // 10 + 1, count))
    seen: set[str] = set()
    for index in range(count):
        for _ in range(1_000):
            template = profile[index] if index < len(profile) else rng.choice(UNKEYED)
            statement = fill(template, rng)
            digest = content_hash(statement.content)
            if digest not in seen:
                break
        else:  # pragma: no cover - millions of combinations per user
            raise GenerateError(f"ran out of distinct texts for {user_id} after {index} memories")
        seen.add(digest)
        yield _spec(
            rng, user_id=user_id, template=template, content=statement.content, question=statement.question, now=now
        )


# -- vectors ---------------------------------------------------------------------


class VectorCache:
    """Vectors computed before, in an SQLite file: keyed by model name and exact text.

    A vector depends on nothing else, so a hit is the vector the model would
    give; the model name keeps two models' spaces apart.
    """

    def __init__(self, path: Path, *, model_name: str, dimensions: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._model = model_name
        self._dimensions = dimensions
        self._db = sqlite3.connect(path, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vector BLOB NOT NULL)")

    def _key(self, text: str) -> bytes:
        return hashlib.sha256(f"{self._model}\0{text}".encode()).digest()

    def get_many(self, texts: Sequence[str]) -> dict[str, Vectors]:
        keys = {self._key(text): text for text in texts}
        found: dict[str, Vectors] = {}
        chunk = list(keys)
        for start in range(0, len(chunk), 500):
            part = chunk[start : start + 500]
            rows = self._db.execute(
                f"SELECT key, vector FROM vectors WHERE key IN ({','.join('?' * len(part))})", part
            ).fetchall()
            for key, blob in rows:
                vector = np.frombuffer(blob, dtype="<f4").astype(np.float32)
                if vector.shape == (self._dimensions,):
                    found[keys[key]] = vector
        return found

    def put_many(self, texts: Sequence[str], vectors: Vectors) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO vectors (key, vector) VALUES (?, ?)",
                [
                    (self._key(text), vector.astype("<f4").tobytes())
                    for text, vector in zip(texts, vectors, strict=True)
                ],
            )

    def close(self) -> None:
        self._db.close()


def default_cache_path() -> Path:
    """Beside the embedded servers' data (MEMORYPROJECT_DATA_DIR, .data by default)."""
    from memoryproject.embedded import DATA_DIR

    return DATA_DIR / "generated-vectors.sqlite3"


def _embed_in_worker(texts: list[str]) -> Vectors:
    # In a forked worker: the embedder and its weights came with the fork.
    return get_embedder().embed(texts)


@dataclass
class _Batch:
    specs: list[MemorySpec]
    known: dict[str, Vectors]
    # Rows whose vector the cache had; distinct texts it did not have, and their vectors once computed.
    from_cache: int
    missing: list[str]
    computed: AsyncResult[Vectors] | Vectors | None


class _Embedding:
    """Vectors of batches of texts: from the cache, else from the model, in
    this process or in `workers` forked ones (the model uses one core each)."""

    def __init__(self, *, cache: VectorCache | None, workers: int) -> None:
        self._cache = cache
        self._pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None

    def __enter__(self) -> _Embedding:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()

    def submit(self, specs: list[MemorySpec]) -> _Batch:
        texts = [spec.content for spec in specs]
        known = self._cache.get_many(texts) if self._cache is not None else {}
        # Two users' equal texts are embedded once.
        missing = [text for text in dict.fromkeys(texts) if text not in known]
        computed: AsyncResult[Vectors] | Vectors | None = None
        if missing:
            if self._pool is not None:
                computed = self._pool.apply_async(_embed_in_worker, (missing,))
            else:
                computed = get_embedder().embed(missing)
        from_cache = sum(1 for text in texts if text in known)
        return _Batch(specs=specs, known=known, from_cache=from_cache, missing=missing, computed=computed)

    def vectors(self, batch: _Batch) -> Vectors:
        """The batch's vectors in order (waiting for its worker)."""
        if batch.computed is not None:
            computed = batch.computed.get() if isinstance(batch.computed, AsyncResult) else batch.computed
            if self._cache is not None:
                self._cache.put_many(batch.missing, computed)
            batch.known.update(zip(batch.missing, computed, strict=True))
        return np.stack([batch.known[spec.content] for spec in batch.specs]).astype(np.float32)


# -- the HNSW index --------------------------------------------------------------


def hnsw_index() -> Index:
    """The HNSW index as the model (and so the migrations) define it."""
    index: Index = next(index for index in Memory._meta.indexes if index.name == HNSW_INDEX)
    return index


@contextlib.contextmanager
def _one_generator_at_a_time() -> Iterator[None]:
    """Two generators would both drop and build the index: the second waits."""
    if connection.in_atomic_block:
        # Held until the caller's transaction ends, however it ends.
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [_LOCK_KEY])
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [_LOCK_KEY])


def _index_valid() -> bool | None:
    """None when the index does not exist; False when a concurrent build left it unusable."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [HNSW_INDEX])
        row = cursor.fetchone()
    return None if row is None else bool(row[0])


def _concurrently() -> bool:
    # Outside a transaction the index is dropped and built without blocking
    # writers; a caller's transaction (a test) only allows the plain statements.
    return not connection.in_atomic_block


def _drop_index() -> None:
    if _index_valid() is None:
        return
    with connection.schema_editor(atomic=False) as editor:
        editor.remove_index(Memory, hnsw_index(), concurrently=_concurrently())  # type: ignore[call-arg]


def _build_index(progress: Progress | None) -> None:
    """Build the index (again) as the model defines it, unless it is there, reporting the vectors loaded."""
    if _index_valid() is False:
        _drop_index()
    if _index_valid():
        return
    if progress is not None:
        progress.begin("index", Memory.objects.filter(embedding__isnull=False).count())
    concurrently = _concurrently()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
        if concurrently:
            cursor.execute(f"SET maintenance_work_mem = '{BUILD_MAINTENANCE_WORK_MEM}'")
        else:
            # In the caller's transaction the setting ends with it. Django's foreign
            # keys are deferred, and CREATE INDEX refuses to run with checks pending.
            cursor.execute(f"SET LOCAL maintenance_work_mem = '{BUILD_MAINTENANCE_WORK_MEM}'")
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    watcher = _BuildWatcher(pid, progress) if progress is not None else None
    try:
        with connection.schema_editor(atomic=False) as editor:
            editor.add_index(Memory, hnsw_index(), concurrently=concurrently)  # type: ignore[call-arg]
    finally:
        if watcher is not None:
            watcher.stop()
        if concurrently:
            # A pooled connection must not keep it.
            with connection.cursor() as cursor:
                cursor.execute("RESET maintenance_work_mem")
    if not concurrently:
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL DEFERRED")


class _BuildWatcher:
    """Polls pg_stat_progress_create_index from its own connection while the build runs."""

    def __init__(self, pid: int, progress: Progress) -> None:
        self._pid = pid
        self._progress = progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hnsw-build-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        reported = 0
        try:
            while not self._stop.wait(0.5):
                with connections["default"].cursor() as cursor:
                    cursor.execute("SELECT tuples_done FROM pg_stat_progress_create_index WHERE pid = %s", [self._pid])
                    row = cursor.fetchone()
                if row is not None and row[0] > reported:
                    self._progress.advance(row[0] - reported)
                    reported = row[0]
        finally:
            connections["default"].close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# -- the load --------------------------------------------------------------------

_COLUMNS = (
    ("id", "uuid"),
    ("account", "int8"),
    ("namespace", "text"),
    ("user_id", "text"),
    ("kind", "text"),
    ("category", "text"),
    ("key", "text"),
    ("content", "text"),
    ("content_hash", "text"),
    ("tags", "varchar[]"),
    ("metadata", "jsonb"),
    ("importance", "float8"),
    ("pinned", "bool"),
    ("access_count", "int8"),
    ("last_accessed_at", "timestamptz"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
    ("expires_at", "timestamptz"),
    # Binary COPY names no type per field: the server reads each field with its
    # column's own input function, so pgvector's binary format goes as bytes.
    ("embedding", "bytea"),
    ("embedding_model", "text"),
)


def _copy(*, account: Account, namespace: str, specs: Sequence[MemorySpec], vectors: Vectors, model_name: str) -> None:
    """COPY the rows in binary, the vectors in pgvector's own binary format."""
    raw = connection.connection
    assert raw is not None
    column_of = {field.name: field.column for field in Memory._meta.concrete_fields}
    columns = ", ".join(column_of[name] for name, _ in _COLUMNS)
    sql = f"COPY {Memory._meta.db_table} ({columns}) FROM STDIN (FORMAT BINARY)"
    with raw.cursor() as cursor, cursor.copy(sql) as copy:
        copy.set_types([type_name for _, type_name in _COLUMNS])
        for spec, vector in zip(specs, vectors, strict=True):
            copy.write_row(
                (
                    uuid.uuid4(),
                    account.id,
                    namespace,
                    spec.user_id,
                    spec.kind,
                    spec.category,
                    spec.key,
                    spec.content,
                    content_hash(spec.content),
                    spec.tags,
                    spec.metadata,
                    spec.importance,
                    spec.pinned,
                    spec.access_count,
                    spec.last_accessed_at,
                    spec.created_at,
                    spec.updated_at,
                    spec.expires_at,
                    VectorParam(vector).to_binary(),
                    model_name,
                )
            )


def generate_memories(
    *,
    account: Account,
    users: int,
    memories: int,
    namespace: str = "default",
    seed: int = 0,
    batch_size: int = 1_000,
    cache_path: Path | None = None,
    rebuild_index: bool | None = None,
    workers: int = 1,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> GenerateResult:
    """Write `memories` generated memories of `users` users into the account's namespace.

    The namespace must hold none of the account's memories yet (a second run
    would repeat the same texts). Rows are written in one transaction: all or
    nothing. `cache_path`: an on-disk vector cache (see VectorCache), None for
    none. `rebuild_index`: drop the HNSW index before the load and build it
    after; None decides by size (REBUILD_MIN_ROWS, and at least the rows the
    table holds). Meanwhile searches of large users still answer, exactly and
    more slowly; outside a transaction the index is dropped and built
    CONCURRENTLY, so other writers are never blocked by the build (which
    took no longer so: 18 s at 100,000 rows either way).
    `workers`: processes that embed, forked from this one (the model uses one
    core each).
    """
    if batch_size < 1:
        raise GenerateError("batch_size must be at least 1")
    if workers < 1:
        raise GenerateError("workers must be at least 1")
    counts = allocate(users=users, memories=memories)
    now = now or timezone.now()
    started = time.perf_counter()
    embedder = get_embedder()
    with _one_generator_at_a_time():
        if Memory.objects.filter(account=account, namespace=namespace).exists():
            raise GenerateError(
                f"Account {account.name!r} already has memories in namespace {namespace!r}: "
                "generate into another namespace or account."
            )
        if rebuild_index is None:
            rebuild_index = memories >= REBUILD_MIN_ROWS and memories >= Memory.objects.count()
        cache = (
            VectorCache(cache_path, model_name=embedder.model_name, dimensions=embedder.dimensions)
            if cache_path is not None
            else None
        )
        try:
            if rebuild_index:
                _drop_index()
            try:
                embedded, cached = _load(
                    account=account,
                    namespace=namespace,
                    specs=_all_specs(seed=seed, counts=counts, now=now),
                    total=memories,
                    batch_size=batch_size,
                    cache=cache,
                    workers=workers,
                    progress=progress,
                )
            finally:
                # Even after a failed load: the index must never stay missing.
                index_started = time.perf_counter()
                _build_index(progress)
                index_seconds = time.perf_counter() - index_started
        finally:
            if cache is not None:
                cache.close()
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {Memory._meta.db_table}")
    return GenerateResult(
        users=sum(1 for count in counts if count),
        memories=memories,
        embedded=embedded,
        cached=cached,
        seconds=time.perf_counter() - started,
        index_rebuilt=rebuild_index,
        index_seconds=index_seconds if rebuild_index else 0.0,
    )


def _all_specs(*, seed: int, counts: Sequence[int], now: datetime) -> Iterator[MemorySpec]:
    for user_id, count in zip(user_ids(len(counts)), counts, strict=True):
        yield from user_memories(seed=seed, user_id=user_id, count=count, now=now)


def _load(
    *,
    account: Account,
    namespace: str,
    specs: Iterator[MemorySpec],
    total: int,
    batch_size: int,
    cache: VectorCache | None,
    workers: int,
    progress: Progress | None,
) -> tuple[int, int]:
    """Embed and COPY the specs batch by batch in one transaction; (texts embedded, vectors from the cache).

    With workers, up to two batches per worker are being embedded while
    earlier ones are copied, in order."""
    model_name = get_embedder().model_name
    if progress is not None:
        progress.begin("memories", total)
    embedded = cached = 0
    changed: set[tuple[int, str, str]] = set()
    pending: deque[_Batch] = deque()

    def finish(batch: _Batch) -> None:
        nonlocal embedded, cached
        vectors = embedding.vectors(batch)
        embedded += len(batch.missing)
        cached += batch.from_cache
        _copy(account=account, namespace=namespace, specs=batch.specs, vectors=vectors, model_name=model_name)
        changed.update((account.id, namespace, spec.user_id) for spec in batch.specs)
        if progress is not None:
            progress.advance(len(batch.specs))

    # The workers are forked before the transaction opens.
    with _Embedding(cache=cache, workers=workers) as embedding, transaction.atomic():
        while batch := list(itertools.islice(specs, batch_size)):
            pending.append(embedding.submit(batch))
            if len(pending) > 2 * workers:
                finish(pending.popleft())
        while pending:
            finish(pending.popleft())
        # A user read before the load may have an empty list or search cached.
        users_changed(changed)
    return embedded, cached
