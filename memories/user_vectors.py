"""Large users' vectors held in the process, so that a search compares them in numpy.

An exact search of a user reads every one of their rows from PostgreSQL, about
0.7 us a row before the distance is even computed: 16-26 ms a search for the
bench's heaviest users (9,000-18,000 rows), more than the rest of the request.
The same comparison over a float32 matrix in memory (`matrix @ query`, then a
partial sort) takes 2.6 ms for 17,768 rows and 0.13 ms for 1,415
(.data/bench-http). The matrix then names the nearest SEARCH_CANDIDATES rows
and PostgreSQL ranks them as before, from their rows fetched by primary key.

When a matrix is current. It is kept under the user's generation token
(memories.cache), which every write to the user's memories replaces (a new
memory, an embedding filled in, an edit, a deletion, retention). A search
whose request read another token than the matrix's does not use it. Expiry
is the one change without a write: each row's expiry is kept beside its
vector, and rows past it are left out of every comparison.

When it is loaded. Loading costs about four exact searches (97 ms for 17,768
rows, 8 ms for 1,415: COPY in binary, then numpy), so a user's vectors are
loaded at the second search under one token, not the first: a user whose
every search follows a write (a chat that stores each turn) is searched in
PostgreSQL as before and never pays for a load that the next write would
throw away. Only users with at least USER_VECTORS_MIN_ROWS embedded memories
are held; smaller ones are searched exactly in PostgreSQL in a few ms.

How much. Each process holds at most USER_VECTORS_MAX_BYTES (1.6 KB a
memory), the least recently searched users going first; a user larger than
the whole budget is searched in PostgreSQL.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from django.conf import settings
from django.db import connection
from prometheus_client import Counter

from memories.models import EMBEDDING_DIMENSIONS, Memory

Owner = tuple[int, str, str]  # (account id, namespace, user id)

SEARCHES = Counter(
    "memory_user_vectors_searches_total",
    "Searches by where their nearest vectors came from: `held` (a matrix in the process),"
    " `loaded` (a matrix loaded for this search), `database` (PostgreSQL compared them)",
    ["source"],
)

# A row of PostgreSQL's binary COPY of (id, embedding, expiry as epoch seconds):
# the field count, then each field's length and bytes; a halfvec is its
# dimensions and a reserved int16, then big-endian float16.
_COPY_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("id_length", ">i4"),
        ("id", "V16"),
        ("vector_length", ">i4"),
        ("vector_header", "V4"),
        ("vector", ">f2", (EMBEDDING_DIMENSIONS,)),
        ("expires_length", ">i4"),
        ("expires", ">f8"),
    ]
)
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_COPY_HEADER = len(_COPY_SIGNATURE) + 8  # the signature, flags and header extension length
_COPY_TRAILER = b"\xff\xff"


@dataclass(frozen=True)
class UserVectors:
    """One user's embedded, unexpired memories as loaded under `token`."""

    token: str
    ids: npt.NDArray[np.void]  # (n,) 16-byte UUIDs
    matrix: npt.NDArray[np.float32]  # (n, dimensions), each row scaled to length 1
    expires: npt.NDArray[np.float64]  # (n,) epoch seconds, inf for never

    @property
    def nbytes(self) -> int:
        return int(self.ids.nbytes + self.matrix.nbytes + self.expires.nbytes)

    def nearest(self, vector: npt.ArrayLike, *, count: int, now: datetime) -> list[uuid.UUID]:
        """The ids of the `count` rows nearest to `vector` by cosine, unexpired at `now`, in no order."""
        # Rounded to 16 bits as the query PostgreSQL compares is (memories.vectors).
        query = np.asarray(vector, dtype=np.float16).astype(np.float32)
        norm = float(np.linalg.norm(query))
        similarity = self.matrix @ (query / norm if norm else query)
        live = self.expires > now.timestamp()
        if not live.all():
            similarity[~live] = -np.inf
        count = min(count, int(live.sum()))
        if count <= 0:
            return []
        # Every live row, or a partial sort: -inf (expired) comes last.
        chosen = np.flatnonzero(live) if count >= len(live) else np.argpartition(-similarity, count - 1)[:count]
        return [uuid.UUID(bytes=self.ids[index].tobytes()) for index in chosen]


def parse_copy(data: bytes, *, token: str) -> UserVectors:
    """UserVectors from the bytes of load_user_vectors' binary COPY."""
    if not data.startswith(_COPY_SIGNATURE) or not data.endswith(_COPY_TRAILER):
        raise ValueError("not a binary COPY of PostgreSQL")
    extension = int.from_bytes(data[_COPY_HEADER - 4 : _COPY_HEADER], "big")
    body = data[_COPY_HEADER + extension : -len(_COPY_TRAILER)]
    if len(body) % _COPY_ROW.itemsize:
        raise ValueError(f"COPY rows of {_COPY_ROW.itemsize} bytes expected, {len(body)} bytes left over")
    rows = np.frombuffer(body, dtype=_COPY_ROW)
    expected = (3, 16, 4 + 2 * EMBEDDING_DIMENSIONS, 8)
    for name, value in zip(("fields", "id_length", "vector_length", "expires_length"), expected, strict=True):
        if len(rows) and not (rows[name] == value).all():
            raise ValueError(f"unexpected {name} in a COPY row: {value} expected")
    matrix = rows["vector"].astype(np.float32)
    norms = np.linalg.norm(matrix, axis=1)
    norms[norms == 0] = 1.0
    matrix /= norms[:, np.newaxis]
    return UserVectors(token=token, ids=rows["id"].copy(), matrix=matrix, expires=rows["expires"].astype(np.float64))


def load_user_vectors(*, where: str, params: list[Any], token: str) -> UserVectors:
    """The vectors of the memories that `where` (a WHERE clause over the memory
    table, Django's %s placeholders) selects, in one binary COPY: a row costs
    810 bytes on the wire and nothing per row in Python. Selected rows without
    an embedding are left out."""
    table = connection.ops.quote_name(Memory._meta.db_table)
    statement = (
        "COPY (SELECT id, embedding, COALESCE(EXTRACT(EPOCH FROM expires_at)::float8, 'Infinity')"
        f" FROM {table} WHERE {where} AND embedding IS NOT NULL) TO STDOUT (FORMAT binary)"
    )
    chunks: list[bytes] = []
    with connection.cursor() as cursor, cursor.cursor.copy(statement, params) as copy:
        chunks.extend(bytes(chunk) for chunk in copy)
    return parse_copy(b"".join(chunks), token=token)


@dataclass
class _Slot:
    token: str
    vectors: UserVectors | None = None


class HeldVectors:
    """The users' vectors this process holds, least recently searched first;
    a slot without vectors remembers the token of a user's last search."""

    # Slots that only remember a token: a few dozen bytes each.
    MAX_SLOTS = 10_000

    def __init__(self, *, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._slots: OrderedDict[Owner, _Slot] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def held(self, owner: Owner) -> UserVectors | None:
        slot = self._slots.get(owner)
        return None if slot is None else slot.vectors

    def nearest(
        self,
        owner: Owner,
        *,
        token: str,
        vector: npt.ArrayLike,
        count: int,
        now: datetime,
        load: Callable[[], UserVectors],
    ) -> list[uuid.UUID] | None:
        """The nearest `count` ids of the user's vectors as of `token`, or None
        when PostgreSQL should compare them (the first search under a token, or
        a user too large for the budget)."""
        with self._lock:
            slot = self._slots.get(owner)
            if slot is None or slot.token != token:
                self._put(owner, _Slot(token))
                SEARCHES.labels("database").inc()
                return None
            self._slots.move_to_end(owner)
            vectors = slot.vectors
        source = "held"
        if vectors is None:
            vectors = load()
            source = "loaded"
            with self._lock:
                current = self._slots.get(owner)
                if current is not None and current.token == token and vectors.nbytes <= self.max_bytes:
                    self._put(owner, _Slot(token, vectors))
        SEARCHES.labels(source).inc()
        return vectors.nearest(vector, count=count, now=now)

    def clear(self) -> None:
        with self._lock:
            self._slots.clear()
            self._bytes = 0

    def _put(self, owner: Owner, slot: _Slot) -> None:
        old = self._slots.pop(owner, None)
        if old is not None and old.vectors is not None:
            self._bytes -= old.vectors.nbytes
        size = 0 if slot.vectors is None else slot.vectors.nbytes
        while self._slots and (self._bytes + size > self.max_bytes or len(self._slots) >= self.MAX_SLOTS):
            _, evicted = self._slots.popitem(last=False)
            if evicted.vectors is not None:
                self._bytes -= evicted.vectors.nbytes
        self._slots[owner] = slot
        self._bytes += size


_held: HeldVectors | None = None
_held_lock = threading.Lock()


def held_vectors() -> HeldVectors:
    """This process's HeldVectors, sized by USER_VECTORS_MAX_BYTES (emptied
    when the setting changes, as tests change it)."""
    global _held
    with _held_lock:
        if _held is None or _held.max_bytes != settings.MEMORY["USER_VECTORS_MAX_BYTES"]:
            _held = HeldVectors(max_bytes=int(settings.MEMORY["USER_VECTORS_MAX_BYTES"]))
        return _held
