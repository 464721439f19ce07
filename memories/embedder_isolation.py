"""Embedding a batch that may hold a text the model always rejects, without
letting that text block the others, and without blaming texts for an outage.

One model call per batch is the normal path. When it fails, either the
provider failed (down, overloaded, refusing the key or the model: every call
fails, whatever the texts) or one or more texts did (the provider answers 400
for them, the local model raises on them). To tell them apart:

- an error that says so (EmbeddingUnavailable: unreachable, timed out, HTTP
  401/403/404/408/429/5xx) is the provider's: stop at once, one call spent;
- otherwise one call with a fixed short text (the probe) asks whether the
  provider works at all: if it fails too, the provider is down, two calls spent;
- if it works, the batch is split in halves, and each failing half again, until
  the failing texts stand alone: one bad text among 50 costs about a dozen calls,
  k bad ones about 2k·log2(50/k), all n bad ones 2n + 1 at most;
- a text is blamed only after the provider was seen working in this batch; when
  several texts failed alone and no call succeeded after the probe, the probe is
  asked once more before blaming them (the provider may have gone down meanwhile).

When the provider fails midway, the vectors obtained so far are kept and no
text is blamed: the caller leaves the rest pending, counting nothing against them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from memories.embedding import EmbeddingUnavailable

# Short, plain and in every model's vocabulary: a provider that cannot embed it is down.
PROBE_TEXT = "embedding provider check"
# Stored on the row: enough to see what the provider said, bounded whatever it said.
MAX_ERROR_CHARS = 1000

EmbedFunction = Callable[[list[str]], npt.NDArray[np.float32]]


@dataclass
class Isolation:
    """What embedding one batch came to."""

    # Input position -> its vector.
    vectors: dict[int, npt.NDArray[np.float32]] = field(default_factory=dict)
    # Input position -> why its text failed on its own (empty after an outage).
    errors: dict[int, str] = field(default_factory=dict)
    # The provider's error when it failed as a whole; the positions in neither dict are untouched.
    outage: Exception | None = None
    calls: int = 0
    failed_calls: int = 0
    # Texts per successful call (the probe's excluded): the batch-size histogram.
    sizes: list[int] = field(default_factory=list)


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS]


def _halves(positions: list[int]) -> tuple[list[int], list[int]]:
    middle = len(positions) // 2
    return positions[:middle], positions[middle:]


def embed_isolating(embed: EmbedFunction, texts: Sequence[str]) -> Isolation:
    """Embed `texts` with `embed` (one call if it succeeds), isolating the texts it fails on."""
    result = Isolation()
    if not texts:
        return result

    def attempt(positions: list[int]) -> Exception | None:
        result.calls += 1
        try:
            vectors = embed([texts[i] for i in positions])
        except Exception as error:
            result.failed_calls += 1
            return error
        for position, vector in zip(positions, vectors, strict=True):
            result.vectors[position] = vector
        result.sizes.append(len(positions))
        return None

    def provider_works() -> bool:
        result.calls += 1
        try:
            embed([PROBE_TEXT])
        except Exception:
            result.failed_calls += 1
            return False
        return True

    everything = list(range(len(texts)))
    first = attempt(everything)
    if first is None:
        return result
    if isinstance(first, EmbeddingUnavailable) or not provider_works():
        result.outage = first
        return result

    blamed: dict[int, Exception] = {}
    if len(everything) == 1:
        blamed[0] = first
    # Depth first, left half first: the texts are oldest first, so are their vectors.
    stack = list(reversed(_halves(everything))) if len(everything) > 1 else []
    succeeded = False
    while stack:
        group = stack.pop()
        error = attempt(group)
        if error is None:
            succeeded = True
            continue
        if isinstance(error, EmbeddingUnavailable):
            result.outage = error
            return result
        if len(group) == 1:
            blamed[group[0]] = error
        else:
            stack.extend(reversed(_halves(group)))
    if len(blamed) > 1 and not succeeded and not provider_works():
        result.outage = next(iter(blamed.values()))
        return result
    result.errors = {position: describe(error) for position, error in blamed.items()}
    return result
