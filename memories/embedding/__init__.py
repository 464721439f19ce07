"""Text embeddings: the provider interface, the process-wide embedder and the query-vector cache.

Every vector is float32, L2-normalised, and stored with the `model_name` of
the embedder that made it: vectors of two models live in different spaces and
must never be compared (`manage.py reembed --model-mismatch` moves old rows).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from memories.cache import CacheUnavailable, cache_key, tiered_cache

Vectors = npt.NDArray[np.float32]

__all__ = [
    "Embedder",
    "EmbeddingError",
    "EmbeddingUnavailable",
    "Vectors",
    "embed_query",
    "get_embedder",
    "query_cache_key",
    "reset_embedder",
]


class Embedder(Protocol):
    """A text embedding provider."""

    # Recorded on every stored vector: which space the vector belongs to.
    model_name: str
    dimensions: int

    def embed(self, texts: Sequence[str]) -> Vectors:
        """float32 array of shape (len(texts), dimensions), one L2-normalised row per text, in order."""
        ...


class EmbeddingError(Exception):
    """The provider failed: unreachable, timed out, HTTP error, or an answer of the wrong shape."""


class EmbeddingUnavailable(EmbeddingError):
    """The provider as a whole failed (unreachable, timed out, overloaded, refused the
    credentials or the model), whatever the texts: retrying texts one by one cannot help."""


_lock = threading.Lock()
_embedder: Embedder | None = None


def _reinit_lock_in_child() -> None:
    # A thread of the parent may have held the lock at fork time; the child
    # would then wait for it forever. The embedder itself is kept: its weights
    # are shared copy-on-write, and each provider rebuilds what is per process.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reinit_lock_in_child)


def _build_embedder() -> Embedder:
    config = settings.EMBEDDING
    provider = config["PROVIDER"]
    if provider == "local":
        from memories.embedding.minilm import MiniLM

        return MiniLM(batch_size=int(config["BATCH_SIZE"]), threads=int(config["THREADS"]))
    if provider == "openai":
        from memories.embedding.remote import OpenAIEmbedder

        return OpenAIEmbedder(
            base_url=str(config["BASE_URL"]),
            model=str(config["MODEL"]),
            api_key=str(config["API_KEY"] or ""),
            dimensions=int(config["DIMENSIONS"]),
            timeout=float(config["TIMEOUT"]),
            batch_size=int(config["BATCH_SIZE"]),
            breaker_threshold=int(config["BREAKER_THRESHOLD"]),
            breaker_cooldown=float(config["BREAKER_COOLDOWN"]),
        )
    raise ImproperlyConfigured(f"Unknown EMBEDDING PROVIDER {provider!r}: expected 'local' or 'openai'")


def get_embedder() -> Embedder:
    """The process's embedder, built from settings.EMBEDDING on first use (loading MiniLM takes ~0.5 s)."""
    embedder = _embedder
    if embedder is not None:
        return embedder
    return _get_embedder_locked()


def _get_embedder_locked() -> Embedder:
    global _embedder
    with _lock:
        if _embedder is None:
            _embedder = _build_embedder()
        return _embedder


def reset_embedder() -> None:
    """Forget the embedder: the next get_embedder() builds one from the current settings."""
    global _embedder
    with _lock:
        _embedder = None


@receiver(setting_changed)
def _reset_on_settings_change(*, setting: str, **kwargs: Any) -> None:
    if setting == "EMBEDDING":
        reset_embedder()


def query_cache_key(*, model_name: str, text: str) -> str:
    """The cache key of a query's vector: one per (model, exact text), of bounded length."""
    return cache_key("embedding", model_name, text)


def embed_query(text: str) -> npt.NDArray[np.float32]:
    """One query's vector, shape (dimensions,), cached in Redis; without Redis it is simply computed."""
    embedder = get_embedder()

    def compute() -> npt.NDArray[np.float32]:
        vector: npt.NDArray[np.float32] = embedder.embed([text])[0]
        return vector

    try:
        # Raw little-endian float32 in both tiers: 1.5 KB a vector, decoded without parsing.
        return tiered_cache().get_or_set(
            "embedding",
            query_cache_key(model_name=embedder.model_name, text=text),
            compute,
            encode=lambda vector: vector.astype("<f4").tobytes(),
            decode=lambda raw: np.frombuffer(raw, dtype="<f4").astype(np.float32),
            ttl=lambda vector: float(settings.EMBEDDING["QUERY_CACHE_TTL"]),
            valid=lambda vector: vector.shape == (embedder.dimensions,),
        )
    except CacheUnavailable:
        return compute()
