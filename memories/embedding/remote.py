"""An OpenAI-compatible embedding provider: OpenAI, Ollama, vLLM, TEI, LiteLLM... (POST /embeddings)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from memories.embedding import EmbeddingError, EmbeddingUnavailable
from memories.operations import operation
from memoryproject.breakers import Breaker, BreakerOpen, breaker
from memoryproject.http import ProcessClient


class OpenAIEmbedder:
    """Embeds through `{base_url}/embeddings`; every failure is an EmbeddingError."""

    model_name: str
    dimensions: int

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str = "",
        dimensions: int = 384,
        timeout: float = 10.0,
        batch_size: int = 64,
        breaker_threshold: int = 5,
        breaker_cooldown: float = 30.0,
    ) -> None:
        self.model_name = model
        self.dimensions = dimensions
        self.url = base_url.rstrip("/") + "/embeddings"
        self.timeout = timeout
        self.batch_size = batch_size
        self._client = ProcessClient(timeout=timeout, bearer=api_key)
        self._breaker_settings = (breaker_threshold, breaker_cooldown)

    def _breaker(self) -> Breaker:
        # Per process and shared by every embedder instance: the provider is down, not an instance.
        fail_max, reset_timeout = self._breaker_settings
        return breaker("embedding", fail_max=fail_max, reset_timeout=reset_timeout, failures=(EmbeddingUnavailable,))

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        with operation("embed", texts=len(texts)):
            return self._embed(texts)

    def _embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not one string")
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            out[start : start + len(chunk)] = self._embed_chunk(chunk)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        if np.any(norms == 0):
            raise EmbeddingError(f"{self.url} returned an all-zero vector for model {self.model_name!r}")
        out /= norms
        return out

    def _embed_chunk(self, texts: list[str]) -> npt.NDArray[np.float32]:
        try:
            with self._breaker().guard():
                payload = {"model": self.model_name, "input": texts}
                response = self._client.post_json(self.url, payload, unavailable=EmbeddingUnavailable)
        except BreakerOpen as error:
            raise EmbeddingUnavailable(str(error)) from None
        if response.status_code != 200:
            # Other 4xx (400, 413, 422) may be about one input, which the caller can isolate.
            raise EmbeddingError(f"{self.url} answered HTTP {response.status_code}: {response.text[:300]}")
        try:
            body = response.json()
        except ValueError as exc:
            raise EmbeddingError(f"{self.url} answered with invalid JSON: {response.text[:300]}") from exc
        return self._parse(body, expected=len(texts))

    def _parse(self, body: Any, *, expected: int) -> npt.NDArray[np.float32]:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or len(data) != expected:
            got = len(data) if isinstance(data, list) else "no"
            raise EmbeddingError(f"{self.url} returned {got} embeddings for {expected} inputs")
        out = np.empty((expected, self.dimensions), dtype=np.float32)
        seen = set()
        for position, item in enumerate(data):
            if not isinstance(item, dict):
                raise EmbeddingError(f"{self.url} returned a malformed item at position {position}")
            # Servers may answer out of order; `index` says which input a vector belongs to.
            index = item.get("index", position)
            if not isinstance(index, int) or not 0 <= index < expected or index in seen:
                raise EmbeddingError(f"{self.url} returned an invalid or repeated index {index!r}")
            seen.add(index)
            vector = item.get("embedding")
            if not isinstance(vector, list) or len(vector) != self.dimensions:
                size = len(vector) if isinstance(vector, list) else type(vector).__name__
                raise EmbeddingError(
                    f"{self.url} returned a vector of {size} dimensions for model {self.model_name!r};"
                    f" {self.dimensions} are configured (EMBEDDING_DIMENSIONS)"
                )
            try:
                row = np.asarray(vector, dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise EmbeddingError(f"{self.url} returned a non-numeric vector at index {index}") from exc
            if not np.isfinite(row).all():
                raise EmbeddingError(f"{self.url} returned a vector with NaN or infinite values at index {index}")
            out[index] = row
        return out
