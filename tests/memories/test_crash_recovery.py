"""Real crashes: a worker process is killed with SIGKILL in the middle of its
work, and a restarted worker finishes everything exactly once.

Each test runs the real management command as a child process against this
session's test database (transactional tests: the child sees committed rows
only). The model provider is a local HTTP server speaking the OpenAI API that
holds one request open until the test has killed the worker: when the server
has that request, the worker has provably claimed its rows and is inside the
model call, so the SIGKILL lands mid-processing, not before or after it.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from django.db import connection, transaction

from memories.ingest import transcript_store
from memories.models import (
    HistoryAction,
    Memory,
    MemoryHistory,
    MemoryKind,
    RawTranscript,
    Session,
    TranscriptStatus,
)
from memories.services import MemoryInput, memory_batch_create_pending
from tests.factories import AccountWithKey, assert_stored_vector
from tests.local_server import JSONHandler, local_server

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent.parent
DIMENSIONS = 384
EMBEDDING_MODEL = "crash-test-embedder"
# How long a worker may take to start (Django, the model) and reach the model call.
START_TIMEOUT = 20.0


# -- a model server that holds one request -----------------------------------------------------------


@dataclass
class Upstream:
    """The OpenAI-compatible server's state: what it answered, and the request it holds.

    Request number `hold` (0-based) is held open until `release` is set and
    then refused with a 503, so that it can never count as a success.
    """

    answer: Callable[[dict[str, Any]], dict[str, Any]]
    hold: int | None = None
    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)
    answered: list[dict[str, Any]] = field(default_factory=list)
    held: dict[str, Any] | None = None
    holding: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            number = len(self.received)
            self.received.append(body)
            hold = number == self.hold
            if hold:
                self.held = body
        if hold:
            self.holding.set()
            self.release.wait(timeout=120)
            return 503, {"error": {"message": "held for a crash test"}}
        reply = self.answer(body)
        with self.lock:
            self.answered.append(body)
        return 200, reply


@dataclass
class Serving:
    """Starts Upstreams on loopback for one test and releases their held requests at its end."""

    started: list[Upstream] = field(default_factory=list)
    stack: ExitStack = field(default_factory=ExitStack)

    def start(self, upstream: Upstream) -> Upstream:
        class Handler(JSONHandler):
            def do_POST(self) -> None:
                # A worker killed while its request is held: answer_json finds it gone and lets it be.
                self.answer_json(*upstream.handle(self.read_json()))

        upstream.url = self.stack.enter_context(local_server(Handler))
        self.started.append(upstream)
        return upstream

    def close(self) -> None:
        for upstream in self.started:
            upstream.release.set()
        self.stack.close()


@pytest.fixture
def serving() -> Iterator[Serving]:
    servers = Serving()
    try:
        yield servers
    finally:
        servers.close()


# -- worker processes --------------------------------------------------------------------------------


@dataclass
class Worker:
    process: subprocess.Popen[str]
    log: Path

    def output(self) -> str:
        return self.log.read_text()


@dataclass
class Workers:
    """Starts `manage.py` commands as child processes; whatever is still running at the end is killed."""

    env: dict[str, str]
    directory: Path
    running: list[Worker] = field(default_factory=list)

    def start(self, *args: str, env: dict[str, str]) -> Worker:
        log = self.directory / f"worker-{len(self.running)}.log"
        with log.open("w") as handle:
            process = subprocess.Popen(
                [sys.executable, "manage.py", *args],
                cwd=ROOT,
                env={**self.env, **env},
                stdout=handle,
                stderr=subprocess.STDOUT,
                text=True,
            )
        worker = Worker(process=process, log=log)
        self.running.append(worker)
        return worker

    def kill_all(self) -> None:
        for worker in self.running:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait(timeout=10)


@pytest.fixture
def workers(subprocess_env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    started = Workers(env=subprocess_env, directory=tmp_path)
    try:
        yield started
    finally:
        started.kill_all()


def _wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    worker: Worker | None = None,
    details: Callable[[], str] | None = None,
) -> None:
    """Poll `condition` until it holds; fail saying `what` did not happen, with the worker's output and `details`."""
    deadline = time.monotonic() + timeout
    while not condition():
        exited = worker is not None and worker.process.poll() is not None
        if exited or time.monotonic() > deadline:
            why = f"the worker exited with {worker.process.returncode} first" if worker and exited else "timed out"
            message = f"{what}: {why} (waited up to {timeout:g} s)"
            if details is not None:
                message += f"\n{details()}"
            if worker is not None:
                message += f"\nthe worker's output:\n{worker.output()}"
            pytest.fail(message)
        time.sleep(0.05)


def _sigkill(worker: Worker) -> None:
    assert worker.process.poll() is None, f"the worker stopped before the kill:\n{worker.output()}"
    worker.process.send_signal(signal.SIGKILL)
    assert worker.process.wait(timeout=10) == -signal.SIGKILL


def _stop(worker: Worker) -> str:
    """SIGTERM a looping worker (it finishes its transcript) and return its output."""
    worker.process.send_signal(signal.SIGTERM)
    try:
        worker.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not stop within 20 s of SIGTERM; its output:\n{worker.output()}")
    output = worker.output()
    assert worker.process.returncode == 0, output
    return output


def _open_transactions_of_others() -> int:
    """Other sessions on the test database inside a transaction (a killed worker's, until PostgreSQL notices)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND xact_start IS NOT NULL"
        )
        (count,) = cursor.fetchone()
    return int(count)


# -- the transcript processor ------------------------------------------------------------------------

TRANSCRIPTS = 4
MARKER = re.compile(r"conversation (T\d+)")
# Unrelated sentences: neither merges with the other as a near-duplicate.
FACTS = (
    ("User keeps a tortoise named Sprocket-{n}", "fact", "family"),
    ("User works night shifts at harbour {n}", "fact", "work"),
)


def _chat_answer(body: dict[str, Any]) -> dict[str, Any]:
    """An extraction for the transcript in the request, named by its marker: two memories and a summary."""
    marker = MARKER.search(body["messages"][-1]["content"])
    assert marker is not None, body
    n = marker.group(1)[1:]
    extraction = {
        "memories": [
            {"content": text.format(n=n), "kind": kind, "category": category, "importance": 0.7}
            for text, kind, category in FACTS
        ],
        "summary": f"Conversation {n}: the user talked about a tortoise and night shifts.",
    }
    return {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "model": body["model"],
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": json.dumps(extraction)}, "finish_reason": "stop"}
        ],
    }


def _markers(bodies: list[dict[str, Any]]) -> list[str]:
    found = [MARKER.search(body["messages"][-1]["content"]) for body in bodies]
    return [match.group(1) for match in found if match is not None]


def _llm_env(url: str, *, stale_claim_seconds: float) -> dict[str, str]:
    return {
        "EXTRACTION_PROVIDER": "openai",
        "EXTRACTION_BASE_URL": url,
        "EXTRACTION_MODEL": "gpt-crash-test",
        "EXTRACTION_API_KEY": "sk-test",
        "EXTRACTION_TIMEOUT": "60",
        "INGEST_STALE_CLAIM_SECONDS": str(stale_claim_seconds),
        "EMBEDDING_PROVIDER": "local",
    }


def test_a_transcript_worker_killed_mid_extraction_loses_nothing_and_its_restart_processes_each_once(
    account: AccountWithKey, workers: Workers, serving: Serving
) -> None:
    transcripts: dict[str, RawTranscript] = {}
    for n in range(TRANSCRIPTS):
        transcripts[f"T{n}"] = transcript_store(
            account=account.account,
            namespace="crash",
            user_id=f"u{n}",
            session_data=f"User: Hello, this is conversation T{n}. I keep a tortoise and work nights.\n"
            "Assistant: Noted, thank you.",
            session_id=f"s{n}",
            metadata={"user_id": f"u{n}"},
        )
    # The first transcript is extracted and stored; the worker is killed inside the second's LLM call.
    first = serving.start(Upstream(answer=_chat_answer, hold=1))
    worker = workers.start("process_raw", "--interval", "0.2", env=_llm_env(first.url, stale_claim_seconds=300))

    _wait_until(first.holding.is_set, timeout=START_TIMEOUT, what="the worker's second LLM request", worker=worker)
    assert first.held is not None
    (held_marker,) = _markers([first.held])
    (done_marker,) = _markers(first.answered)
    held = RawTranscript.objects.get(pk=transcripts[held_marker].pk)
    # Mid-processing: claimed (by a live worker), its extraction in flight, nothing of it written.
    assert (held.status, held.attempts) == (TranscriptStatus.PROCESSING, 1)
    assert held.claim_id is not None

    _sigkill(worker)

    after_kill = {t.pk: t for t in RawTranscript.objects.all()}
    assert len(after_kill) == TRANSCRIPTS, "a transcript was lost"
    held = after_kill[held.pk]
    assert held.status == TranscriptStatus.PROCESSING
    assert held.claim_id is not None
    assert held.processed_at is None
    assert not Memory.objects.filter(user_id=held.user_id).exists(), "the killed run wrote some of its memories"
    assert not Memory.objects.filter(source_transcript=held).exists()
    assert Session.objects.get(pk=held.session_id).summary == ""
    assert after_kill[transcripts[done_marker].pk].status == TranscriptStatus.PROCESSED
    untouched = set(transcripts) - {held_marker, done_marker}
    assert {after_kill[transcripts[m].pk].status for m in untouched} == {TranscriptStatus.QUEUED}
    memories_before_restart = sorted(Memory.objects.values_list("id", "content"))

    # Restart: the dead worker's claim times out after 1 s and the new worker requeues and processes it.
    second = serving.start(Upstream(answer=_chat_answer))
    restarted = workers.start("process_raw", "--interval", "0.2", env=_llm_env(second.url, stale_claim_seconds=1))

    def all_processed() -> bool:
        return not RawTranscript.objects.exclude(status=TranscriptStatus.PROCESSED).exists()

    def statuses() -> str:
        return "transcripts (user, status, claim, attempts): " + str(
            sorted(RawTranscript.objects.values_list("user_id", "status", "claim_id", "attempts"))
        )

    _wait_until(
        all_processed, timeout=START_TIMEOUT, what="every transcript processed", worker=restarted, details=statuses
    )
    output = _stop(restarted)

    assert "1 requeued from stopped workers" in output
    # Exactly once: each unfinished transcript was extracted once more, the finished one never again.
    assert sorted(_markers(second.answered)) == sorted(set(transcripts) - {done_marker})
    assert len(second.received) == len(second.answered) == TRANSCRIPTS - 1
    for marker, transcript in transcripts.items():
        transcript.refresh_from_db()
        assert transcript.status == TranscriptStatus.PROCESSED
        assert transcript.claim_id is None
        assert transcript.attempts == (2 if marker == held_marker else 1), marker
        number = marker[1:]
        discrete = Memory.objects.filter(source_transcript=transcript).exclude(kind=MemoryKind.SUMMARY)
        assert sorted(discrete.values_list("content", flat=True)) == sorted(text.format(n=number) for text, *_ in FACTS)
        assert transcript.memories_created == len(FACTS), marker
        summaries = Memory.objects.filter(session_id=transcript.session_id, kind=MemoryKind.SUMMARY)
        assert summaries.count() == 1, marker
        assert Session.objects.get(pk=transcript.session_id).summary == summaries.get().content
        # Nothing duplicated per user either (a memory not linked to its transcript would escape the count above).
        assert Memory.objects.filter(user_id=transcript.user_id).count() == len(FACTS) + 1, marker
    assert Memory.objects.count() == TRANSCRIPTS * (len(FACTS) + 1)
    # What the first worker stored before the kill was kept as it was.
    assert set(memories_before_restart) <= set(Memory.objects.values_list("id", "content"))


# -- the background embedder -------------------------------------------------------------------------

PENDING = 10
BATCH = 4


def _vector(text: str) -> npt.NDArray[np.float64]:
    """A deterministic unit vector per text: what the fake provider answers, and what must be stored."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    vector = np.random.default_rng(seed).standard_normal(DIMENSIONS)
    unit: npt.NDArray[np.float64] = vector / np.linalg.norm(vector)
    return unit


def _embeddings_answer(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "list",
        "model": body["model"],
        "data": [
            {"object": "embedding", "index": index, "embedding": _vector(text).tolist()}
            for index, text in enumerate(body["input"])
        ],
    }


def _embedding_env(url: str) -> dict[str, str]:
    return {
        "EMBEDDING_PROVIDER": "openai",
        "EMBEDDING_BASE_URL": url,
        "EMBEDDING_MODEL": EMBEDDING_MODEL,
        "EMBEDDING_API_KEY": "sk-test",
        "EMBEDDING_TIMEOUT": "60",
    }


def _locked_by_someone(ids: list[Any]) -> int:
    """How many of these rows another session holds locked (the claim of a live embedder)."""
    with transaction.atomic():
        free = Memory.objects.filter(pk__in=ids).select_for_update(skip_locked=True).values_list("pk", flat=True)
        return len(ids) - len(list(free))


def test_an_embedder_killed_mid_batch_loses_no_row_and_its_restart_embeds_each_once(
    account: AccountWithKey, workers: Workers, serving: Serving
) -> None:
    results = memory_batch_create_pending(
        account=account.account,
        items=[
            MemoryInput(user_id="u1", namespace="crash", content=f"Pending crash-test memory number {i}")
            for i in range(PENDING)
        ],
        actor="test",
    )
    by_text = {result.memory.content: result.memory.pk for result in results}
    assert len(by_text) == PENDING
    assert Memory.objects.filter(embedding__isnull=True).count() == PENDING
    # The first batch is embedded and committed; the worker is killed inside the second's model call.
    first = serving.start(Upstream(answer=_embeddings_answer, hold=1))
    worker = workers.start("embed_pending", "--batch-size", str(BATCH), env=_embedding_env(first.url))

    _wait_until(first.holding.is_set, timeout=START_TIMEOUT, what="the embedder's second batch request", worker=worker)
    assert first.held is not None
    held_texts: list[str] = first.held["input"]
    (done,) = first.answered
    done_texts: list[str] = done["input"]
    assert len(held_texts) == len(done_texts) == BATCH
    held_ids = [by_text[text] for text in held_texts]
    # Mid-processing: the worker holds the batch's rows locked inside its transaction.
    assert _locked_by_someone(held_ids) == BATCH

    _sigkill(worker)
    # PostgreSQL sees the connection close and rolls the claim back: no session keeps a transaction open.
    _wait_until(lambda: _open_transactions_of_others() == 0, timeout=10, what="the killed worker's transaction ended")

    assert Memory.objects.count() == PENDING, "a pending memory was lost"
    assert _locked_by_someone(held_ids) == 0
    pending_after_kill = set(Memory.objects.filter(embedding__isnull=True).values_list("content", flat=True))
    assert pending_after_kill == set(by_text) - set(done_texts)
    assert set(held_texts) <= pending_after_kill
    assert set(Memory.objects.filter(embedding__isnull=False).values_list("embedding_model", flat=True)) == {
        EMBEDDING_MODEL
    }

    # Restart: a fresh run embeds what is left, each row once.
    second = serving.start(Upstream(answer=_embeddings_answer))
    restarted = workers.start("embed_pending", "--batch-size", str(BATCH), env=_embedding_env(second.url))
    try:
        restarted.process.wait(timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the restarted embedder did not finish within {START_TIMEOUT:g} s:\n{restarted.output()}")
    output = restarted.output()
    assert restarted.process.returncode == 0, output
    assert f"Embedded {len(pending_after_kill)} pending memories with {EMBEDDING_MODEL}" in output

    sent = [text for body in second.answered for text in body["input"]]
    assert len(second.received) == len(second.answered)
    assert all(len(body["input"]) <= BATCH for body in second.answered)
    assert Counter(sent) == Counter(pending_after_kill), "each pending text in exactly one batch after the restart"
    assert not Memory.objects.filter(embedding__isnull=True).exists()
    assert Memory.objects.count() == PENDING
    for memory in Memory.objects.all():
        assert memory.embedding_model == EMBEDDING_MODEL
        # Its own text's vector: no batch was stored against the wrong rows.
        assert_stored_vector(memory.embedding, _vector(memory.content))
    # The history says each memory was created once, and nothing it records happened twice.
    history = Counter(MemoryHistory.objects.values_list("memory_id", "action"))
    assert {memory_id for memory_id, _ in history} == set(by_text.values())
    assert all(history[(pk, HistoryAction.CREATE)] == 1 for pk in by_text.values())
    assert max(history.values()) == 1
