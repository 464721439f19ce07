"""A mixed HTTP load against a running service, recording every answer: what
the fault tests (tests/memoryproject/test_faults.py) hold the service to.

Reader threads read users whose memories are cached (get by id, list, a fixed
set of searches); writer threads each own one user and store to it (single,
async, batch, async batch), update one memory of it, and read it back. Every
request is kept as an Answer; every write the service acknowledged (2xx, with
its id) as a Stored, so that a test can compare them with PostgreSQL.
"""

from __future__ import annotations

import functools
import json
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from memories.synthetic import SLOTS

# Straight to 127.0.0.1, whatever HTTP_PROXY says.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Words, not numbers: five random ones make texts whose vectors are far apart
# (all-MiniLM-L6-v2, 600 of them: at most 0.74 alike), so that no write is
# merged into another as a near-duplicate (MEMORY_DUPLICATE_SIMILARITY, 0.95).
WORDS = sorted({word for values in SLOTS.values() for word in values if not word[0].isdigit()})

READS = ("get", "list", "search")
WRITES = ("store", "store_async", "batch", "batch_async", "update")
# Reads after which a user's answers come from the cache (the queries a reader repeats).
QUERIES = ("favourite food and drink", "where the family lives", "work and hobbies")


def text(rng: random.Random, label: str) -> str:
    """A memory's content: unique (its label and a random tag) and unlike any other."""
    return f"{label} {uuid.uuid4().hex[:8]}: " + ", ".join(rng.sample(WORDS, 5))


@dataclass(frozen=True)
class Answer:
    """One request and what came back; status 0: no HTTP answer at all (refused, reset, timed out)."""

    op: str
    user_id: str
    started: float
    seconds: float
    status: int
    body: Any
    retry_after: str | None
    error: str = ""

    @property
    def ended(self) -> float:
        return self.started + self.seconds

    def brief(self) -> str:
        return f"{self.op} {self.user_id} -> {self.status} in {self.seconds:.2f} s {self.error or str(self.body)[:300]}"


@dataclass(frozen=True)
class Stored:
    """A memory a write asked for and the service acknowledged, with the id it gave."""

    memory_id: str
    user_id: str
    content: str
    op: str


class Client:
    """JSON over HTTP with an API key; never raises for an HTTP status."""

    def __init__(self, url: str, key: str, *, timeout: float = 60.0) -> None:
        self.url = url
        self.key = key
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, str | None, str]:
        """(status, JSON body, Retry-After, error); status 0 when nothing answered."""
        headers = {"Authorization": f"Bearer {self.key}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with _LOCAL.open(request, timeout=self.timeout) as response:
                return response.status, _json(response.read()), response.headers.get("Retry-After"), ""
        except urllib.error.HTTPError as error:
            return error.code, _json(error.read()), error.headers.get("Retry-After"), ""
        except OSError as error:  # refused, reset, timed out: no answer
            return 0, None, None, f"{type(error).__name__}: {error}"

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        """The body of a 2xx answer; anything else fails the caller."""
        status, answer, _, error = self.call(method, path, body)
        assert 200 <= status < 300, f"{method} {path} -> {status} {error or answer}"
        return answer


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")[:500]


@dataclass
class Reader:
    """A user read before the load, whose reads the cache answers: its memories and its queries."""

    user_id: str
    memory_ids: list[str]


@dataclass
class Load:
    """Threads sending a mixed load until stop(); what they saw is in answers and stored."""

    client: Client
    readers: Sequence[Reader]
    writers: Sequence[str]
    # Each writer's memory that its thread keeps updating (one thread each: "latest" is well defined).
    mutable: dict[str, str]
    pause: float = 0.03
    seed: int = 7
    answers: list[Answer] = field(default_factory=list)
    stored: list[Stored] = field(default_factory=list)
    # The contents of every batch sent, answered or not: all or none of each may be stored.
    batches: list[list[str]] = field(default_factory=list)
    # The updates of each mutable memory, in order: (content, acknowledged).
    updates: dict[str, list[tuple[str, bool]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _failure: list[BaseException] = field(default_factory=list)

    def start(self, reader_threads: int = 2) -> None:
        for number in range(reader_threads):
            self._spawn(f"reader-{number}", self._read_loop, random.Random(self.seed + number))
        for number, user_id in enumerate(self.writers):
            self._spawn(
                f"writer-{number}",
                functools.partial(self._write_loop, user_id=user_id),
                random.Random(self.seed + 100 + number),
            )

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.client.timeout + 10)
        assert not any(thread.is_alive() for thread in self._threads), "a load thread hangs"
        if self._failure:
            raise self._failure[0]

    def possible_contents(self, memory_id: str) -> set[str] | None:
        """What a mutable memory may hold now: its last acknowledged update, or one
        sent after it whose answer was an error (a commit whose answer was lost
        may have happened); None when no update was acknowledged."""
        updates = self.updates.get(memory_id, [])
        acknowledged = [index for index, (_, ok) in enumerate(updates) if ok]
        if not acknowledged:
            return None
        return {content for content, _ in updates[acknowledged[-1] :]}

    def between(self, start: float, end: float, ops: Iterable[str] | None = None) -> list[Answer]:
        """Answers to requests sent in [start, end), of these ops."""
        wanted = set(ops) if ops is not None else None
        with self._lock:
            return [
                answer
                for answer in self.answers
                if start <= answer.started < end and (wanted is None or answer.op in wanted)
            ]

    # -- the loops

    def _spawn(self, name: str, loop: Callable[[random.Random], None], rng: random.Random) -> None:
        def run() -> None:
            try:
                while not self._stop.is_set():
                    loop(rng)
            except BaseException as error:  # a bug of the load itself: stop() raises it
                self._failure.append(error)

        thread = threading.Thread(target=run, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _read_loop(self, rng: random.Random) -> None:
        reader = rng.choice(self.readers)
        op = rng.choice(READS)
        if op == "get":
            self._send(op, reader.user_id, "GET", f"/memory/memories/{rng.choice(reader.memory_ids)}")
        elif op == "list":
            self._send(op, reader.user_id, "GET", "/memory/memories?" + urlencode({"user_id": reader.user_id}))
        else:
            query = urlencode({"user_id": reader.user_id, "query": rng.choice(QUERIES), "limit": 5})
            self._send(op, reader.user_id, "GET", f"/memory/relevant?{query}")
        time.sleep(self.pause)

    def _write_loop(self, rng: random.Random, *, user_id: str) -> None:
        for op in (*WRITES, *READS):
            if self._stop.is_set():
                return
            self._write(rng, user_id, op)
            time.sleep(self.pause)

    def _write(self, rng: random.Random, user_id: str, op: str) -> None:
        mutable = self.mutable[user_id]
        if op in ("store", "store_async"):
            content = text(rng, op)
            path = "/memory/memories" + ("?async=true" if op == "store_async" else "")
            answer = self._send(op, user_id, "POST", path, {"user_id": user_id, "content": content})
            if answer.status in (201, 202):
                self._acknowledge([Stored(answer.body["id"], user_id, content, op)])
        elif op in ("batch", "batch_async"):
            contents = [text(rng, op) for _ in range(3)]
            with self._lock:
                self.batches.append(contents)
            path = "/memory/memories/batch" + ("?async=true" if op == "batch_async" else "")
            body = {"memories": [{"user_id": user_id, "content": content} for content in contents]}
            answer = self._send(op, user_id, "POST", path, body)
            if answer.status in (201, 202):
                ids = answer.body["ids"] if op == "batch_async" else [r["memory"]["id"] for r in answer.body["results"]]
                self._acknowledge([Stored(i, user_id, c, op) for i, c in zip(ids, contents, strict=True)])
        elif op == "update":
            content = text(rng, "update")
            answer = self._send(op, user_id, "PATCH", f"/memory/memories/{mutable}", {"content": content})
            with self._lock:
                self.updates.setdefault(mutable, []).append((content, answer.status == 200))
        elif op == "get":
            self._send(op, user_id, "GET", f"/memory/memories/{mutable}")
        elif op == "list":
            self._send(op, user_id, "GET", "/memory/memories?" + urlencode({"user_id": user_id}))
        else:
            query = urlencode({"user_id": user_id, "query": rng.choice(QUERIES), "limit": 5})
            self._send(op, user_id, "GET", f"/memory/relevant?{query}")

    def _send(self, op: str, user_id: str, method: str, path: str, body: Any = None) -> Answer:
        started = time.monotonic()
        status, answer_body, retry_after, error = self.client.call(method, path, body)
        answer = Answer(op, user_id, started, time.monotonic() - started, status, answer_body, retry_after, error)
        with self._lock:
            self.answers.append(answer)
        return answer

    def _acknowledge(self, stored: list[Stored]) -> None:
        with self._lock:
            self.stored.extend(stored)
