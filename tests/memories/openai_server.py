"""An OpenAI-compatible embeddings server on loopback, backed by the real model:
what tests of the remote provider, and of the service without it, talk to."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from memories.embedding import Embedder
from tests.local_server import JSONHandler, local_server


@dataclass
class FakeOpenAI:
    """What the local server answers, and what it was sent. `mode`: ok, error
    (HTTP 500: the provider is down), slow (1 s), wrong_dimension, missing."""

    url: str
    mode: str = "ok"
    requests: list[dict[str, Any]] = field(default_factory=list)
    raw_responses: list[dict[str, Any]] = field(default_factory=list)


@contextmanager
def fake_openai_embeddings(model: Embedder) -> Iterator[FakeOpenAI]:
    """Serve POST /v1/embeddings with `model`'s vectors until the block ends."""
    state = FakeOpenAI(url="")

    class Handler(JSONHandler):
        def do_POST(self) -> None:
            body = self.read_json()
            state.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            if self.path != "/v1/embeddings":
                self.answer_json(404, {"error": {"message": "not found"}})
                return
            if state.mode == "error":
                self.answer_json(500, {"error": {"message": "the model crashed"}})
                return
            if state.mode == "slow":
                time.sleep(1.0)
            vectors = model.embed(body["input"])
            if state.mode == "wrong_dimension":
                vectors = vectors[:, :256]
            if state.mode == "missing":
                vectors = vectors[:-1]
            # Not unit length, and in reverse order: the client must use `index` and normalise.
            data = [
                {"object": "embedding", "index": i, "embedding": (vector * 3.0).tolist()}
                for i, vector in enumerate(vectors)
            ][::-1]
            response = {"object": "list", "model": body["model"], "data": data}
            state.raw_responses.append(response)
            self.answer_json(200, response)

    with local_server(Handler) as url:
        state.url = url
        yield state
