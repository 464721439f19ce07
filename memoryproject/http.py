"""Outbound HTTP to model providers (embeddings, LLM): one pooled client per process."""

from __future__ import annotations

import os
import threading

import httpx

# Answers about the provider or the request as a whole, not about any input in
# it: bad credentials, unknown model or path, timeouts, rate limits, server
# errors. Other 4xx (400, 413, 422) may be about one input. Only these count
# towards a provider's circuit breaker (memoryproject.breakers).
PROVIDER_STATUSES = frozenset({401, 403, 404, 408, 429}) | frozenset(range(500, 600))


class ProcessClient:
    """An httpx.Client built on first use in each process.

    A forked worker (gunicorn, django-q2) must not share the parent's sockets,
    nor a connection pool whose lock a parent thread held at fork time: a
    process that finds a client made by another pid builds its own.
    """

    def __init__(self, *, timeout: float, bearer: str = "") -> None:
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        self._lock = threading.Lock()
        self._pid = -1
        self._client: httpx.Client | None = None

    def get(self) -> httpx.Client:
        pid = os.getpid()
        client = self._client
        if client is not None and self._pid == pid:
            return client
        with self._lock:
            if self._client is None or self._pid != pid:
                self._client = httpx.Client(timeout=self.timeout, headers=self._headers)
                self._pid = pid
            return self._client

    def post_json(self, url: str, body: object, *, unavailable: type[Exception]) -> httpx.Response:
        """POST `body` as JSON to `url`: the answer, or `unavailable` raised when the
        provider failed as a whole (no connection, a timeout, a PROVIDER_STATUSES
        answer): what a provider's breaker counts. Other answers are the caller's to read."""
        try:
            response = self.get().post(url, json=body)
        except httpx.TimeoutException as exc:
            raise unavailable(f"{url} timed out after {self.timeout:g} s ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise unavailable(f"{url} could not be reached: {type(exc).__name__}: {exc}") from exc
        if response.status_code in PROVIDER_STATUSES:
            raise unavailable(f"{url} answered HTTP {response.status_code}: {response.text[:300]}")
        return response
