"""Throughput of the local embedder (all-MiniLM-L6-v2 run by ONNX Runtime).

    .venv/bin/python bench/embedding.py [--batch-size 64] [--skip-textbook]

Prints one-text latency, a batch of 64 short texts and 1,000 mixed-length
texts for memories.embedding.minilm on one thread and on two (the default,
EMBEDDING_THREADS), beside two baselines: the numbers of
research/embeddings.md (a numpy forward pass of the same model, measured on
another 2-core machine, AVX2), and a textbook numpy forward pass run here on
the same inputs (input order, each batch padded to its longest text, separate
Q/K/V, whole-array operations, erf by Abramowitz-Stegun 7.1.26). Written
independently, the textbook pass also checks the ONNX graph: the largest
difference between their vectors is printed. Needs no database or Redis.
Before ONNX Runtime, this project's own optimised numpy pass took 11.5 ms
for a 23-token query and 380 ms for 100 memories, on one thread.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memories.embedding.minilm import MiniLM, default_model_dir

Array = npt.NDArray[np.float32]

# research/embeddings.md: numpy MiniLM on a 2-core x86-64 AVX2 machine.
RESEARCH_SINGLE = "5-6 ms"
RESEARCH_BATCH = "136-156/s"

SHORT_TEXTS = [
    "User prefers window seats on flights",
    "Allergic to peanuts",
    "Works as a data engineer in Berlin",
    "Has a dog named Rex",
    "Likes jazz, especially Coltrane",
    "Birthday is on March 3rd",
    "Prefers tea over coffee in the morning",
    "Is learning Spanish for a trip to Mexico",
]

CORPUS = (
    "the user said they would like to book a table for two next friday at the italian place near the office "
    "and asked whether the project deadline can move because the client changed the requirements again "
    "meeting notes budget travel family weekend running marathon training doctor appointment reminder"
)


def mixed_texts(count: int, *, seed: int = 7) -> list[str]:
    """Memory-like lengths: mostly short facts, some paragraphs, a few long enough to be truncated."""
    rng = random.Random(seed)
    vocabulary = CORPUS.split()
    texts = []
    for _ in range(count):
        roll = rng.random()
        n_words = rng.randint(3, 20) if roll < 0.7 else rng.randint(20, 120) if roll < 0.95 else rng.randint(200, 400)
        texts.append(" ".join(rng.choice(vocabulary) for _ in range(n_words)))
    return texts


class Textbook:
    """all-MiniLM-L6-v2 written the obvious way, as a same-machine baseline and an independent check."""

    def __init__(self, *, tokenize: Callable[[Sequence[str]], list[list[int]]], batch_size: int) -> None:
        from safetensors.numpy import load_file

        model_dir = default_model_dir()
        self.w = load_file(str(model_dir / "model.safetensors"))
        self.config = json.loads((model_dir / "config.json").read_text())
        self.tokenize = tokenize
        self.batch_size = batch_size

    @staticmethod
    def erf(x: Array) -> Array:
        # Abramowitz and Stegun 7.1.26, |error| < 1.5e-7.
        t = 1 / (1 + 0.3275911 * np.abs(x))
        poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
        out: Array = np.sign(x) * (1 - poly * np.exp(-x * x))
        return out

    def linear(self, x: Array, name: str) -> Array:
        weight = self.w[name + ".weight"]
        # 2-D, so that numpy hands the product to BLAS.
        out: Array = (x.reshape(-1, x.shape[-1]) @ weight.T + self.w[name + ".bias"]).reshape(*x.shape[:-1], -1)
        return out

    def layer_norm(self, x: Array, name: str) -> Array:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        out: Array = (x - mean) / np.sqrt(var + 1e-12) * self.w[name + ".weight"] + self.w[name + ".bias"]
        return out

    def embed(self, texts: Sequence[str]) -> Array:
        ids = self.tokenize(texts)
        return np.concatenate([self.forward(ids[i : i + self.batch_size]) for i in range(0, len(ids), self.batch_size)])

    def forward(self, batch: list[list[int]]) -> Array:
        n, length = len(batch), max(map(len, batch))
        heads = self.config["num_attention_heads"]
        d = 384 // heads
        input_ids = np.zeros((n, length), dtype=np.int64)
        mask = np.zeros((n, length), dtype=np.float32)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        e = "embeddings."
        x = (
            self.w[e + "word_embeddings.weight"][input_ids]
            + self.w[e + "position_embeddings.weight"][:length]
            + self.w[e + "token_type_embeddings.weight"][0]
        )
        x = self.layer_norm(x, e + "LayerNorm")
        bias = (1 - mask)[:, None, None, :] * np.finfo(np.float32).min
        for i in range(self.config["num_hidden_layers"]):
            p = f"encoder.layer.{i}."

            def split(t: Array) -> Array:
                return t.reshape(n, length, heads, d).transpose(0, 2, 1, 3)

            q = split(self.linear(x, p + "attention.self.query"))
            k = split(self.linear(x, p + "attention.self.key"))
            v = split(self.linear(x, p + "attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(n, length, 384)
            x = self.layer_norm(
                self.linear(context, p + "attention.output.dense") + x, p + "attention.output.LayerNorm"
            )
            h = self.linear(x, p + "intermediate.dense")
            h = 0.5 * h * (1 + self.erf(h / math.sqrt(2)))
            x = self.layer_norm(self.linear(h, p + "output.dense") + x, p + "output.LayerNorm")
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        assert x.dtype == np.float32  # a float64 constant would silently promote everything
        out: Array = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return out


def measure(embed: Callable[[Sequence[str]], Array], *, mixed: list[str], mixed_runs: int) -> dict[str, float]:
    embed(["warm up"])
    latencies = []
    for i in range(50):
        t0 = time.perf_counter()
        embed([SHORT_TEXTS[i % len(SHORT_TEXTS)]])
        latencies.append(time.perf_counter() - t0)
    batch = [SHORT_TEXTS[i % len(SHORT_TEXTS)] + f" ({i})" for i in range(64)]
    batch_runs = []
    for _ in range(10):
        t0 = time.perf_counter()
        embed(batch)
        batch_runs.append(time.perf_counter() - t0)
    runs = []
    for _ in range(mixed_runs):
        t0 = time.perf_counter()
        embed(mixed)
        runs.append(time.perf_counter() - t0)
    return {
        "single_ms": statistics.median(latencies) * 1000,
        "batch_rate": len(batch) / statistics.median(batch_runs),
        "mixed_s": statistics.median(runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (settings BATCH_SIZE)")
    parser.add_argument("--skip-textbook", action="store_true", help="skip the textbook baseline (2 min)")
    args = parser.parse_args()

    started = time.perf_counter()
    model = MiniLM(batch_size=args.batch_size, threads=2)
    model.embed(["warm up"])
    load_ms = (time.perf_counter() - started) * 1000
    mixed = mixed_texts(1000)
    tokens = sum(len(ids) for ids in model.tokenize(mixed))
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs"
    print(
        f"machine: {machine}, python {platform.python_version()}, numpy {np.__version__}, "
        f"onnxruntime {onnxruntime.__version__}"
    )
    print(f"load + first call: {load_ms:.0f} ms; mixed set: {len(mixed)} texts, {tokens} tokens after truncation")

    ours = measure(model.embed, mixed=mixed, mixed_runs=3)
    one_thread = measure(MiniLM(batch_size=args.batch_size, threads=1).embed, mixed=mixed, mixed_runs=3)
    textbook: dict[str, float] | None = None
    if not args.skip_textbook:
        baseline = Textbook(tokenize=model.tokenize, batch_size=args.batch_size)
        textbook = measure(baseline.embed, mixed=mixed, mixed_runs=1)
        sample = [*SHORT_TEXTS, *mixed[:40]]
        diff = float(np.abs(model.embed(sample) - baseline.embed(sample)).max())
        print(f"largest difference from the textbook pass over {len(sample)} texts: {diff:.1e}")

    def cell(key: str, fmt: str, result: dict[str, float] | None) -> str:
        if result is None:
            return "-"
        value = result[key] if key != "mixed_rate" else len(mixed) / result["mixed_s"]
        return fmt.format(value)

    rows = [
        ("1 text (median of 50)", "single_ms", "{:.2f} ms", RESEARCH_SINGLE),
        ("batch of 64 short texts", "batch_rate", "{:.0f}/s", RESEARCH_BATCH),
        ("1000 mixed-length texts", "mixed_rate", "{:.0f}/s", "-"),
    ]
    print(f"{'':<26}{'1 thread':>12}{'2 threads':>12}{'textbook here':>16}{'research doc':>16}")
    for label, key, fmt, research in rows:
        print(
            f"{label:<26}{cell(key, fmt, one_thread):>12}{cell(key, fmt, ours):>12}"
            f"{cell(key, fmt, textbook):>16}{research:>16}"
        )
    print(f"mixed, 2 threads: {tokens / ours['mixed_s']:.0f} tokens/s")


if __name__ == "__main__":
    main()
