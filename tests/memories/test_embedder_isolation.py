"""A text the model always rejects does not block the background embedder's
queue, and an outage of the whole provider is never blamed on the texts."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

import memories.embedding as embedding
from memories.embedder import drain, embed_pending, embed_pending_batch, embedding_failed, embedding_queue
from memories.embedder_isolation import PROBE_TEXT, embed_isolating
from memories.embedding import EmbeddingError, Vectors, get_embedder
from memories.models import Account, Memory
from memories.services import MemoryInput, memory_batch_create_pending
from tests.factories import AccountWithKey, make_pending
from tests.local_server import JSONHandler, local_server

POISON = "POISON-PILL"
DIMENSIONS = 384


def _vector(text: str) -> list[float]:
    """A deterministic unit vector per text: enough for storing, comparing is not under test here."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(DIMENSIONS)
    return [float(value) for value in vector / np.linalg.norm(vector)]


@dataclass
class FakeProvider:
    """An OpenAI-compatible /v1/embeddings that answers 400 for any request holding a poisoned text.

    mode "down": 503 for everything; "reject_all": 400 for everything;
    down_after: answer 503 from that many requests on (an outage midway).
    """

    url: str = ""
    mode: str = "poison"
    down_after: int | None = None
    requests: list[list[str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def provider(settings: Any) -> Iterator[FakeProvider]:
    state = FakeProvider()

    class Handler(JSONHandler):
        def do_POST(self) -> None:
            texts: list[str] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["input"]
            with state.lock:
                state.requests.append(texts)
                seen = len(state.requests)
            if state.mode == "down" or (state.down_after is not None and seen > state.down_after):
                self.answer_json(503, {"error": {"message": "overloaded"}})
            elif state.mode == "reject_all" or any(POISON in text for text in texts):
                self.answer_json(400, {"error": {"message": "input rejected by the model"}})
            else:
                data = [{"object": "embedding", "index": i, "embedding": _vector(t)} for i, t in enumerate(texts)]
                self.answer_json(200, {"object": "list", "data": data})

    with local_server(Handler) as url:
        state.url = url
        # Changing the setting rebuilds the process's embedder (and again when the test ends).
        settings.EMBEDDING = {
            **settings.EMBEDDING,
            "PROVIDER": "openai",
            "BASE_URL": url,
            "MODEL": "fake-embed",
            "API_KEY": "sk-test",
            "TIMEOUT": 5.0,
        }
        yield state


def _pending(account: Account, contents: Sequence[str], *, user_id: str = "u1") -> list[Memory]:
    return make_pending(account, contents, user_id=user_id)


def _good(count: int, start: int = 0) -> list[str]:
    return [f"Good fact number {i} about gardening" for i in range(start, start + count)]


def _attempt_fields(memory: Memory) -> tuple[int, str, Any, Any]:
    memory.refresh_from_db()
    return (
        memory.embedding_attempts,
        memory.embedding_error,
        memory.embedding_next_attempt_at,
        memory.embedding_failed_at,
    )


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- through the database, against an HTTP provider -------------------------------------------------


@pytest.mark.django_db
def test_a_poison_row_among_twenty_good_ones_is_isolated_in_a_few_calls(
    account: AccountWithKey, provider: FakeProvider
) -> None:
    rows = _pending(account.account, [*_good(10), f"{POISON} tulips and roses", *_good(10, start=10)])
    poison = rows[10]
    failures_before = _sample("memory_embedder_row_failures_total")

    embedded = embed_pending()

    assert embedded == 20
    assert not embedding_queue().filter(embedding_next_attempt_at__isnull=True).exists()
    assert Memory.objects.filter(embedding__isnull=False).count() == 20
    attempts, error, next_attempt_at, failed_at = _attempt_fields(poison)
    assert poison.embedding is None
    assert attempts == 1
    assert "HTTP 400" in error
    assert next_attempt_at is not None
    assert next_attempt_at > timezone.now()
    assert failed_at is None
    # The batch, the probe, then halves down to the poisoned text: not one call per row.
    assert 3 <= len(provider.requests) <= 12
    assert provider.requests[0] == [row.content for row in rows]
    assert provider.requests[1] == [PROBE_TEXT]
    assert _sample("memory_embedder_row_failures_total") == failures_before + 1


@pytest.mark.django_db
def test_a_failing_row_backs_off_exponentially(account: AccountWithKey, provider: FakeProvider, settings: Any) -> None:
    settings.ASYNC_WRITES = {**settings.ASYNC_WRITES, "RETRY_BASE_SECONDS": 60.0, "RETRY_MAX_SECONDS": 3600.0}
    (poison,) = _pending(account.account, [f"{POISON} one"])

    delays = []
    for _ in range(3):
        before = timezone.now()
        embed_pending()
        _, _, next_attempt_at, _ = _attempt_fields(poison)
        delays.append(round((next_attempt_at - before).total_seconds()))
        # Not due yet: no claim, no model call.
        calls = len(provider.requests)
        assert embed_pending() == 0
        assert len(provider.requests) == calls
        Memory.objects.filter(pk=poison.pk).update(embedding_next_attempt_at=timezone.now())

    assert delays == [60, 120, 240]


@pytest.mark.django_db
def test_after_the_attempt_limit_a_poison_row_is_no_longer_claimed_but_stays_readable_and_searchable(
    account: AccountWithKey, provider: FakeProvider, api: APIClient, settings: Any
) -> None:
    settings.ASYNC_WRITES = {**settings.ASYNC_WRITES, "MAX_ATTEMPTS": 3, "RETRY_BASE_SECONDS": 0.0}
    poison, good = _pending(account.account, [f"{POISON} the user keeps bonsai trees", *_good(1)])
    gave_up_before = _sample("memory_embedder_gave_up_total")

    # With no backoff the row is retried at once, until the limit.
    assert embed_pending() == 1

    attempts, error, next_attempt_at, failed_at = _attempt_fields(poison)
    assert (attempts, next_attempt_at) == (3, None)
    assert failed_at is not None
    assert "HTTP 400" in error
    assert _sample("memory_embedder_gave_up_total") == gave_up_before + 1
    assert list(embedding_failed().values_list("pk", flat=True)) == [poison.pk]
    calls = len(provider.requests)
    assert embed_pending() == 0
    assert len(provider.requests) == calls, "a row given up on must not be claimed again"
    # Never deleted: read by id, listed, and found by its words.
    assert api.get(f"/memory/memories/{poison.pk}").status_code == 200
    listed = api.get("/memory/memories", {"user_id": "u1"}).json()["results"]
    assert str(poison.pk) in {item["id"] for item in listed}
    hits = api.get("/memory/relevant", {"user_id": "u1", "query": "bonsai trees"}).json()["results"]
    assert str(poison.pk) in {hit["id"] for hit in hits}
    good.refresh_from_db()
    assert good.embedding is not None


@pytest.mark.django_db
def test_a_provider_that_is_down_charges_no_row(account: AccountWithKey, provider: FakeProvider) -> None:
    provider.mode = "down"
    rows = _pending(account.account, [*_good(5), f"{POISON} again"])
    outages_before = _sample("memory_embedder_provider_failures_total")

    with pytest.raises(EmbeddingError, match="HTTP 503"):
        embed_pending()

    # A 503 says the provider is down: no probe, no isolation.
    assert len(provider.requests) == 1
    assert all(_attempt_fields(row) == (0, "", None, None) for row in rows)
    assert embedding_queue().count() == 6
    assert _sample("memory_embedder_provider_failures_total") == outages_before + 1


@pytest.mark.django_db
def test_a_provider_that_rejects_every_text_is_down_not_every_row_poisoned(
    account: AccountWithKey, provider: FakeProvider
) -> None:
    provider.mode = "reject_all"
    rows = _pending(account.account, _good(6))

    with pytest.raises(EmbeddingError, match="HTTP 400"):
        embed_pending()

    # The batch failed, and so did the probe: the provider, not the texts.
    assert provider.requests[1:] == [[PROBE_TEXT]]
    assert all(_attempt_fields(row) == (0, "", None, None) for row in rows)
    assert embedding_queue().count() == 6


@pytest.mark.django_db
def test_an_outage_in_the_middle_of_isolation_keeps_what_was_embedded_and_charges_no_row(
    account: AccountWithKey, provider: FakeProvider
) -> None:
    # The batch fails on the poison, the probe and the first half succeed, then the provider goes down.
    provider.down_after = 3
    rows = _pending(account.account, [*_good(4), f"{POISON} late", *_good(3, start=4)])

    with pytest.raises(EmbeddingError, match="HTTP 503"):
        embed_pending_batch(limit=50)

    assert Memory.objects.filter(embedding__isnull=False).count() == 4
    assert all(_attempt_fields(row) == (0, "", None, None) for row in rows)
    assert embedding_queue().count() == 4


@pytest.mark.django_db
def test_new_content_of_a_row_given_up_on_is_embedded(
    account: AccountWithKey, provider: FakeProvider, settings: Any
) -> None:
    settings.ASYNC_WRITES = {**settings.ASYNC_WRITES, "MAX_ATTEMPTS": 1}
    item = MemoryInput(user_id="u1", content=f"{POISON} v1", category="hobby", key="garden")
    (first,) = memory_batch_create_pending(account=account.account, items=[item], actor="test")
    embed_pending()
    assert embedding_failed().count() == 1

    fixed = MemoryInput(user_id="u1", content="The user grows tomatoes", category="hobby", key="garden")
    (second,) = memory_batch_create_pending(account=account.account, items=[fixed], actor="test")

    assert second.memory.pk == first.memory.pk
    assert _attempt_fields(second.memory) == (0, "", None, None)
    assert embed_pending() == 1
    second.memory.refresh_from_db()
    assert second.memory.embedding is not None


@pytest.mark.django_db
def test_the_drain_embeds_past_a_poison_row_and_reports_its_calls(
    account: AccountWithKey, provider: FakeProvider, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("memories.embedder._enqueue", lambda: None)
    settings.ASYNC_WRITES = {**settings.ASYNC_WRITES, "BATCH_SIZE": 5}
    _pending(account.account, [f"{POISON} first", *_good(9)])

    result = drain(sleep=lambda seconds: None)

    assert (result.embedded, result.failed, result.batches) == (9, 1, 2)
    assert result.calls == len(provider.requests)


# -- a local model that raises on one text ----------------------------------------------------------


@dataclass
class RaisingModel:
    """The real embedder, except that it raises on a batch holding a poisoned text."""

    inner: Any
    calls: int = 0

    @property
    def model_name(self) -> str:
        return str(self.inner.model_name)

    @property
    def dimensions(self) -> int:
        return int(self.inner.dimensions)

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.calls += 1
        if any(POISON in text for text in texts):
            raise ValueError("the tokenizer choked")
        result: Vectors = self.inner.embed(texts)
        return result


@pytest.mark.django_db
def test_a_local_model_raising_on_one_text_is_isolated_the_same_way(
    account: AccountWithKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = RaisingModel(get_embedder())
    monkeypatch.setattr(embedding, "_embedder", model)
    rows = _pending(account.account, [*_good(3), f"{POISON} in the middle", *_good(3, start=3)])

    assert embed_pending() == 6

    assert _attempt_fields(rows[3])[:2] == (1, "ValueError: the tokenizer choked")
    assert model.calls <= 8


@pytest.mark.django_db
def test_the_normal_path_is_one_model_call_per_batch(account: AccountWithKey, provider: FakeProvider) -> None:
    _pending(account.account, _good(30))

    assert embed_pending(batch_size=10) == 30
    assert [len(texts) for texts in provider.requests] == [10, 10, 10]


# -- the admin --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_admin_shows_rows_given_up_on_and_can_queue_them_again(
    admin_client: Client, account: AccountWithKey, django_capture_on_commit_callbacks: Any
) -> None:
    (failed,) = _pending(account.account, ["The user's password hint is a fern"])
    (waiting,) = _pending(account.account, ["Still waiting for its vector"], user_id="u2")
    Memory.objects.filter(pk=failed.pk).update(
        embedding_attempts=5, embedding_error="EmbeddingError: HTTP 400", embedding_failed_at=timezone.now()
    )
    changelist = reverse("admin:memories_memory_changelist")

    page = admin_client.get(reverse("admin:memories_memory_change", args=[failed.pk])).content.decode()
    failed_list = admin_client.get(changelist, {"embedding": "failed"}).content.decode()
    pending_list = admin_client.get(changelist, {"embedding": "pending"}).content.decode()

    assert "failed to embed after 5 attempts: EmbeddingError: HTTP 400" in page
    assert "password hint" in failed_list
    assert "Still waiting" not in failed_list
    assert "Still waiting" in pending_list
    assert "password hint" not in pending_list

    with django_capture_on_commit_callbacks(execute=False):
        admin_client.post(changelist, {"action": "retry_embedding", "_selected_action": [str(failed.pk)]})
    assert _attempt_fields(failed) == (0, "", None, None)
    assert embedding_queue().filter(pk=failed.pk).exists()
    assert waiting.pk in set(embedding_queue().values_list("pk", flat=True))


# -- the isolation alone ----------------------------------------------------------------------------


class ListModel:
    """Embeds in memory; raises on poisoned texts, or on everything when `down`."""

    def __init__(self, *, down: bool = False, fail: type[Exception] = ValueError) -> None:
        self.down = down
        self.fail = fail
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> Vectors:
        self.calls.append(texts)
        if self.down or any(POISON in text for text in texts):
            raise self.fail("rejected")
        return np.array([_vector(text) for text in texts], dtype=np.float32)


def test_isolation_finds_one_bad_text_among_fifty_in_about_a_dozen_calls() -> None:
    texts = _good(50)
    texts[37] = f"{POISON} 37"
    model = ListModel()

    result = embed_isolating(model, texts)

    assert set(result.errors) == {37}
    assert set(result.vectors) == set(range(50)) - {37}
    assert result.outage is None
    assert result.calls == len(model.calls) <= 14


def test_isolation_blames_every_bad_text_and_only_them() -> None:
    texts = _good(20)
    for position in (0, 1, 13):
        texts[position] = f"{POISON} {position}"
    model = ListModel()

    result = embed_isolating(model, texts)

    assert set(result.errors) == {0, 1, 13}
    assert len(result.vectors) == 17
    assert result.calls <= 2 * 20 + 1


def test_isolation_blames_nothing_when_every_call_fails() -> None:
    model = ListModel(down=True)

    result = embed_isolating(model, _good(50))

    assert isinstance(result.outage, ValueError)
    assert (result.errors, result.vectors) == ({}, {})
    assert model.calls[1:] == [[PROBE_TEXT]]


def test_isolation_blames_a_lone_text_only_if_the_probe_succeeds() -> None:
    alone = [f"{POISON} alone"]

    blamed = embed_isolating(ListModel(), alone)
    down = embed_isolating(ListModel(down=True), alone)

    assert (set(blamed.errors), blamed.outage, blamed.calls) == ({0}, None, 2)
    assert (down.errors, down.calls) == ({}, 2)
    assert down.outage is not None


def test_isolation_stops_at_an_error_that_says_the_provider_is_down() -> None:
    from memories.embedding import EmbeddingUnavailable

    model = ListModel(down=True, fail=EmbeddingUnavailable)

    result = embed_isolating(model, _good(50))

    assert isinstance(result.outage, EmbeddingUnavailable)
    assert len(model.calls) == 1


def test_isolation_rechecks_the_provider_before_blaming_every_text() -> None:
    # Up for the probe, then down for good: every text fails alone, none succeeds.
    class FlakyModel(ListModel):
        def __call__(self, texts: list[str]) -> Vectors:
            self.down = len(self.calls) != 1
            return super().__call__(texts)

    model = FlakyModel()

    result = embed_isolating(model, _good(4))

    assert result.errors == {}
    assert result.outage is not None
    assert model.calls[-1] == [PROBE_TEXT]


def test_no_model_call_for_no_text() -> None:
    model = ListModel()

    assert embed_isolating(model, []).calls == 0
    assert model.calls == []
