"""The embedders: the local all-MiniLM-L6-v2 (ONNX Runtime), the query-vector cache, and the
OpenAI-compatible provider against a real HTTP server on localhost."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from django.conf import settings
from django.test import override_settings
from django_redis import get_redis_connection

from memories.embedding import (
    Embedder,
    EmbeddingError,
    embed_query,
    get_embedder,
    query_cache_key,
    reset_embedder,
)
from memories.embedding.minilm import MAX_SEQ_LENGTH, MODEL_NAME, MiniLM
from memories.embedding.remote import OpenAIEmbedder
from tests.conftest import SpyEmbedder
from tests.memories.openai_server import FakeOpenAI, fake_openai_embeddings
from tests.servers import redis_down_caches, run_python

Vector = npt.NDArray[np.float32]

WINDOW = "I prefer window seats on flights"
WINDOW_PARAPHRASE = "The user likes sitting by the airplane window"
DOG = "My dog is named Rex"


@pytest.fixture(scope="module")
def model() -> MiniLM:
    return MiniLM()


def _cosine(a: Vector, b: Vector) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- the local model ---------------------------------------------------------------------------------


def test_paraphrase_is_closer_than_an_unrelated_sentence(model: MiniLM) -> None:
    window, paraphrase, dog = model.embed([WINDOW, WINDOW_PARAPHRASE, DOG])

    assert _cosine(window, paraphrase) > _cosine(window, dog) + 0.4


def test_pair_cosines_match_the_reference_model(model: MiniLM) -> None:
    # Measured with sentence-transformers in research/embeddings.md: 0.62 and -0.02.
    window, paraphrase, dog = model.embed([WINDOW, WINDOW_PARAPHRASE, DOG])

    assert _cosine(window, paraphrase) == pytest.approx(0.62, abs=0.02)
    assert _cosine(window, dog) == pytest.approx(-0.02, abs=0.02)


def test_vector_matches_sentence_transformers(model: MiniLM) -> None:
    # The first dimensions of sentence-transformers' all-MiniLM-L6-v2 vector for
    # "hello world", as pinned by fastembed's tests (CANONICAL_VECTOR_VALUES).
    # Any slip in the architecture (GELU form, LayerNorm eps, pooling,
    # truncation, scale) moves these by far more than 1e-5.
    reference = np.array([-0.034478, 0.03102, 0.00673, 0.02611, -0.039362])

    vector = model.embed(["hello world"])[0]

    np.testing.assert_allclose(vector[:5], reference, atol=1e-5)


def test_output_is_float32_unit_rows_in_input_order(model: MiniLM) -> None:
    texts = [DOG, WINDOW, "", "Ünïcödé and emoji 🚀 are fine", WINDOW_PARAPHRASE]

    vectors = model.embed(texts)

    assert vectors.dtype == np.float32
    assert vectors.shape == (5, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Row i is text i: the order is restored after sorting by length.
    np.testing.assert_allclose(vectors[0], model.embed([DOG])[0], atol=1e-5)
    np.testing.assert_allclose(vectors[4], model.embed([WINDOW_PARAPHRASE])[0], atol=1e-5)


def test_batch_equals_one_by_one_whatever_the_padding_and_chunking() -> None:
    # Small batches and > 4,096 tokens in all: several chunks, texts of very
    # different lengths in one chunk, and the token budget split.
    model = MiniLM(batch_size=5)
    texts = [
        *(f"memory number {i}: " + "the user talked about travel plans " * (i * 3) for i in range(12)),
        *("a very long transcript line that goes on " * 80 + str(i) for i in range(17)),
        "x",
        "",
    ]

    batch = model.embed(texts)
    one_by_one = np.stack([model.embed([text])[0] for text in texts])

    np.testing.assert_allclose(batch, one_by_one, atol=1e-5)


def test_deterministic(model: MiniLM) -> None:
    texts = [WINDOW, DOG, "a somewhat longer sentence about what the user said on Tuesday"]

    assert np.array_equal(model.embed(texts), model.embed(texts))


def test_empty_input(model: MiniLM) -> None:
    vectors = model.embed([])

    assert vectors.shape == (0, 384)
    assert vectors.dtype == np.float32


def test_a_single_string_is_refused(model: MiniLM) -> None:
    with pytest.raises(TypeError):
        model.embed("not a list")


def test_long_text_is_truncated_to_the_models_sequence_length(model: MiniLM) -> None:
    long_text = "the user described the whole trip in great detail " * 2000

    (ids,) = model.tokenize([long_text])
    vectors = model.embed([long_text, long_text + " and this tail is beyond the truncation point"])

    assert len(ids) == MAX_SEQ_LENGTH == 256
    assert ids[0] == 101  # [CLS]
    assert ids[-1] == 102  # [SEP]
    # Words after the 254th token cannot change the vector.
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors[0]), 1.0, atol=1e-5)


def _embed_in_child(queue: Any) -> None:
    queue.put(get_embedder().embed([WINDOW])[0].tobytes())


def test_a_forked_worker_embeds_after_the_parent_did() -> None:
    # gunicorn --preload and django-q2 fork after the parent loaded (and maybe
    # used) the model: the child must neither hang nor compute anything else.
    parent = get_embedder().embed([WINDOW])[0]
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_embed_in_child, args=(queue,))
    child.start()
    try:
        result = queue.get(timeout=60)
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()

    np.testing.assert_allclose(np.frombuffer(result, dtype=np.float32), parent, atol=1e-6)
    assert child.exitcode == 0


_FORK_AND_EXIT = """
import os, sys
import django
django.setup()
from memories.embedding import get_embedder
parent = get_embedder().embed(["I prefer window seats on flights"])[0]
pid = os.fork()
if pid == 0:
    child = get_embedder().embed(["I prefer window seats on flights"])[0]
    # The exit a gunicorn worker takes: SystemExit, then the interpreter's and
    # the C libraries' own clean-up (multiprocessing's children skip both).
    sys.exit(0 if abs(child - parent).max() < 1e-6 else 3)
_, status = os.waitpid(pid, 0)
print("child exit", os.waitstatus_to_exitcode(status))
"""


def test_a_forked_worker_exits_normally_after_embedding() -> None:
    # ONNX Runtime 1.29 to 1.31 start a thread at import whose clean-up never
    # returns in a forked child; an inherited session's destructor joins
    # threads the child does not have. Either hangs the worker at exit.
    result = run_python(
        "-c", _FORK_AND_EXIT, env={**os.environ, "DJANGO_SETTINGS_MODULE": "memoryproject.settings"}, timeout=30
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "child exit 0"


def test_threads_do_not_change_the_vectors(model: MiniLM) -> None:
    texts = [WINDOW, DOG, "a somewhat longer sentence about what the user said on Tuesday"] * 20

    one_thread = MiniLM(threads=1).embed(texts)

    assert model.threads == 2
    assert np.array_equal(model.embed(texts), one_thread)


# -- get_embedder ------------------------------------------------------------------------------------


def test_get_embedder_is_one_instance_even_when_threads_race() -> None:
    reset_embedder()
    seen: list[Embedder] = []
    barrier = threading.Barrier(8)

    def build() -> None:
        barrier.wait()
        seen.append(get_embedder())

    threads = [threading.Thread(target=build) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(seen) == 8
    assert all(embedder is seen[0] for embedder in seen)
    assert seen[0].model_name == MODEL_NAME
    assert seen[0].dimensions == 384


def test_reset_embedder_builds_a_new_one() -> None:
    first = get_embedder()
    reset_embedder()

    assert get_embedder() is not first


# -- embed_query -------------------------------------------------------------------------------------


def test_embed_query_is_cached_in_redis_as_raw_float32(spy_embedder: SpyEmbedder) -> None:
    first = embed_query(WINDOW)
    second = embed_query(WINDOW)

    assert spy_embedder.texts == [WINDOW]  # the second call did not run the model
    np.testing.assert_array_equal(first, second)
    stored = get_redis_connection("default").get(query_cache_key(model_name=MODEL_NAME, text=WINDOW))
    assert isinstance(stored, bytes)
    assert len(stored) == 384 * 4
    np.testing.assert_array_equal(np.frombuffer(stored, dtype="<f4"), first)
    assert second.dtype == np.float32
    assert second.shape == (384,)
    second[0] = 1.0  # a cached vector is the caller's own copy


def test_embed_query_matches_the_model(spy_embedder: SpyEmbedder, model: MiniLM) -> None:
    np.testing.assert_allclose(embed_query(DOG), model.embed([DOG])[0], atol=1e-6)


def test_embed_query_computes_when_redis_is_down(spy_embedder: SpyEmbedder, model: MiniLM) -> None:
    with override_settings(CACHES=redis_down_caches()):
        first = embed_query(WINDOW)
        second = embed_query(WINDOW)

    np.testing.assert_allclose(first, model.embed([WINDOW])[0], atol=1e-6)
    np.testing.assert_array_equal(first, second)
    assert spy_embedder.texts == [WINDOW, WINDOW]


def test_query_cache_key_depends_on_model_and_text() -> None:
    key = query_cache_key(model_name="m", text="hello")

    assert key == query_cache_key(model_name="m", text="hello")
    assert key != query_cache_key(model_name="m2", text="hello")
    assert key != query_cache_key(model_name="m", text="hello ")
    assert query_cache_key(model_name="ab", text="c") != query_cache_key(model_name="a", text="bc")
    assert len(query_cache_key(model_name="m", text="x" * 100_000)) < 100


# -- the OpenAI-compatible provider, against a real server -------------------------------------------


@pytest.fixture
def server(model: MiniLM) -> Iterator[FakeOpenAI]:
    with fake_openai_embeddings(model) as state:
        yield state


def _remote(server: FakeOpenAI, **overrides: Any) -> OpenAIEmbedder:
    options: dict[str, Any] = {
        "base_url": server.url,
        "model": "text-embedding-test",
        "api_key": "sk-test",
        "dimensions": 384,
        "timeout": 5.0,
        "batch_size": 2,
    }
    options.update(overrides)
    return OpenAIEmbedder(**options)


def test_remote_embeds_in_batches_in_input_order(server: FakeOpenAI, model: MiniLM) -> None:
    texts = [WINDOW, DOG, WINDOW_PARAPHRASE, "hello world", "x"]

    vectors = _remote(server).embed(texts)

    np.testing.assert_allclose(vectors, model.embed(texts), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert vectors.dtype == np.float32
    assert [r["body"]["input"] for r in server.requests] == [texts[0:2], texts[2:4], texts[4:5]]
    assert {r["body"]["model"] for r in server.requests} == {"text-embedding-test"}
    assert {r["auth"] for r in server.requests} == {"Bearer sk-test"}
    # The server really answered out of order.
    assert [item["index"] for item in server.raw_responses[0]["data"]] == [1, 0]


def test_remote_sends_no_authorization_without_a_key(server: FakeOpenAI) -> None:
    _remote(server, api_key="").embed([WINDOW])

    assert server.requests[0]["auth"] is None


def test_remote_empty_input_makes_no_request(server: FakeOpenAI) -> None:
    vectors = _remote(server).embed([])

    assert vectors.shape == (0, 384)
    assert server.requests == []


def test_remote_http_error_is_an_embedding_error(server: FakeOpenAI) -> None:
    server.mode = "error"

    with pytest.raises(EmbeddingError, match="HTTP 500"):
        _remote(server).embed([WINDOW])


def test_remote_timeout_is_an_embedding_error(server: FakeOpenAI) -> None:
    server.mode = "slow"

    started = time.perf_counter()
    with pytest.raises(EmbeddingError, match="timed out"):
        _remote(server, timeout=0.2).embed([WINDOW])
    assert time.perf_counter() - started < 0.9


def test_remote_wrong_dimension_is_an_embedding_error(server: FakeOpenAI) -> None:
    server.mode = "wrong_dimension"

    with pytest.raises(EmbeddingError, match="256 dimensions"):
        _remote(server).embed([WINDOW])


def test_remote_missing_vectors_are_an_embedding_error(server: FakeOpenAI) -> None:
    server.mode = "missing"

    with pytest.raises(EmbeddingError, match="1 embeddings for 2 inputs"):
        _remote(server).embed([WINDOW, DOG])


def test_remote_unreachable_is_an_embedding_error(server: FakeOpenAI) -> None:
    with pytest.raises(EmbeddingError, match="could not be reached"):
        _remote(server, base_url="http://127.0.0.1:9/v1").embed([WINDOW])


def test_settings_select_the_remote_provider(server: FakeOpenAI) -> None:
    remote = {
        **settings.EMBEDDING,
        "PROVIDER": "openai",
        "MODEL": "text-embedding-test",
        "BASE_URL": server.url,
        "API_KEY": "",
    }
    # Changing EMBEDDING resets the process's embedder, on the way in and out.
    with override_settings(EMBEDDING=remote):
        embedder = get_embedder()
        vector = embed_query(WINDOW)
        again = embed_query(WINDOW)

    assert get_embedder().model_name == MODEL_NAME
    assert isinstance(embedder, OpenAIEmbedder)
    assert embedder.model_name == "text-embedding-test"
    assert len(server.requests) == 1  # the second query came from the cache
    np.testing.assert_array_equal(vector, again)
    assert get_redis_connection("default").get(query_cache_key(model_name="text-embedding-test", text=WINDOW))
