"""The service without its embedding provider: writes are stored pending and
embedded when it is back, searches match keywords and say so, and an open
breaker spares every request the provider's timeout. Against a real
OpenAI-compatible server on loopback that can fail on demand."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings
from rest_framework.test import APIClient

from memories.embedder import embed_pending_batch
from memories.embedding.minilm import MiniLM
from memories.models import Memory
from memoryproject.breakers import reset_breakers
from tests.memories.openai_server import FakeOpenAI, fake_openai_embeddings

MODEL = "text-embedding-test"


@pytest.fixture(scope="module")
def model() -> MiniLM:
    return MiniLM()


@pytest.fixture
def provider(model: MiniLM) -> Iterator[FakeOpenAI]:
    """The service's embeddings come from a local OpenAI-compatible server for this test."""
    with fake_openai_embeddings(model) as server:
        remote = {
            **settings.EMBEDDING,
            "PROVIDER": "openai",
            "MODEL": MODEL,
            "BASE_URL": server.url,
            "API_KEY": "",
            "BREAKER_THRESHOLD": 2,
            "BREAKER_COOLDOWN": 60.0,
        }
        with override_settings(EMBEDDING=remote):
            yield server


def _store(api: APIClient, content: str, **fields: Any) -> Any:
    response = api.post("/memory/memories", {"user_id": "u1", "content": content, **fields}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def _search(api: APIClient, query: str) -> Any:
    response = api.get("/memory/relevant", {"user_id": "u1", "query": query})
    assert response.status_code == 200, response.content
    return response.json()


def test_a_write_while_the_provider_is_down_is_stored_pending_and_embedded_when_it_is_back(
    api: APIClient, provider: FakeOpenAI
) -> None:
    provider.mode = "error"

    created = _store(api, "I always book a window seat when I fly")

    assert created["embedding"] is None
    memory = Memory.objects.get(id=created["id"])
    assert memory.embedding is None
    assert memory.embedding_model == ""
    assert memory.content == "I always book a window seat when I fly"

    provider.mode = "ok"
    reset_breakers()  # the provider is back: no cooldown to wait out
    assert embed_pending_batch(limit=10).embedded == 1

    memory.refresh_from_db()
    assert memory.embedding is not None
    assert memory.embedding_model == MODEL
    assert api.get(f"/memory/memories/{created['id']}").json()["embedding"] == {"model": MODEL, "dimensions": 384}


def test_a_batch_while_the_provider_is_down_is_stored_whole_and_pending(api: APIClient, provider: FakeOpenAI) -> None:
    provider.mode = "error"
    items = [{"user_id": "u1", "content": text} for text in ("User likes tea", "User owns a bike", "User is vegan")]

    response = api.post("/memory/memories/batch", {"memories": items}, format="json")

    assert response.status_code == 201, response.content
    assert Memory.objects.filter(embedding__isnull=True).count() == 3


def test_a_content_change_while_the_provider_is_down_waits_for_its_vector(api: APIClient, provider: FakeOpenAI) -> None:
    created = _store(api, "User likes green tea")
    assert created["embedding"] == {"model": MODEL, "dimensions": 384}
    provider.mode = "error"

    response = api.patch(f"/memory/memories/{created['id']}", {"content": "User likes black coffee"}, format="json")

    assert response.status_code == 200, response.content
    memory = Memory.objects.get(id=created["id"])
    # The old vector described the old text: it is gone, not kept for the new one.
    assert memory.content == "User likes black coffee"
    assert memory.embedding is None


def test_the_open_breaker_stops_calling_the_provider_and_writes_still_succeed(
    api: APIClient, provider: FakeOpenAI
) -> None:
    provider.mode = "error"
    _store(api, "User likes tea")
    _store(api, "User owns a bike")  # the second failure in a row opens the breaker
    calls = len(provider.requests)

    for text in ("User is vegan", "User plays chess", "User lives in Porto"):
        _store(api, text)

    assert len(provider.requests) == calls
    assert Memory.objects.filter(embedding__isnull=True).count() == 5


def test_a_search_while_the_provider_is_down_matches_keywords_and_says_so(api: APIClient, provider: FakeOpenAI) -> None:
    window = _store(api, "I always book a window seat when I fly")
    _store(api, "My dog is called Rex")
    provider.mode = "error"

    found = _search(api, "window seat please")

    assert found["mode"] == "keyword"
    assert [hit["id"] for hit in found["results"]] == [window["id"]]
    assert found["results"][0]["score_parts"]["similarity"] == 0


def test_keyword_results_are_not_cached_once_the_provider_is_back(api: APIClient, provider: FakeOpenAI) -> None:
    _store(api, "I always book a window seat when I fly")
    _store(api, "User prefers aisle seats on trains")
    provider.mode = "error"
    assert _search(api, "where do I like to sit when flying")["mode"] == "keyword"

    provider.mode = "ok"
    reset_breakers()  # the provider is back: no cooldown to wait out
    found = _search(api, "where do I like to sit when flying")

    assert found["mode"] == "hybrid"
    assert found["results"][0]["content"] == "I always book a window seat when I fly"


def test_a_search_by_a_cached_query_vector_stays_hybrid_while_the_provider_is_down(
    api: APIClient, provider: FakeOpenAI
) -> None:
    _store(api, "I always book a window seat when I fly")
    assert _search(api, "seat by the window")["mode"] == "hybrid"  # its vector is now cached
    _store(api, "User likes tea")  # a write: the cached results are stale, the query vector is not
    provider.mode = "error"

    assert _search(api, "seat by the window")["mode"] == "hybrid"
