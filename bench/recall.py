"""Search quality: recall@10 of the vector search against exact search, and the exact/HNSW switch point.

    .venv/bin/python bench/recall.py [--memories 100000] [--users 1000] [--large] [--queries 50] [--keep]

Generates --memories memories over --users users (memories.generate: a
Zipf-like spread, real vectors; --large adds a second data set of 1,000,000
over 10,000 users) into a throwaway account, deleted at the end (--keep keeps
it, and a later --keep run of the same size reuses it). Queries are questions
from the generator's own templates, embedded by the real model.

What is compared: the similarity candidates of a search (the `by_vector` part
of memories.selectors.search_sql, SEARCH_CANDIDATES rows: exact for users up
to EXACT_SEARCH_MAX_ROWS embedded memories, else HNSW with iterative scans),
against the exact 10 nearest memories by cosine distance of the same rows.
The final ranking blends other signals; this is the part the index can get
wrong. recall@10 = the share of the exact 10 nearest that are among the
candidates, a candidate as near as the exact 10th (within 1e-6) counting as
one of them (two users' equal texts tie exactly).

- recall@10 per user: each query against sampled users, the large ones
  (HNSW path) and a spread of smaller ones (exact path), each path reported.
- recall@10 global: the same candidates query across all of the account's
  memories (no user filter; HNSW with the service's settings) against exact,
  and again with a broader search (ef_search 200, 400), with its p50.
- the switch point: p50 of the search query (candidates only: no keyword
  part, no size check) for users of about 100 to 20,000 memories, forced
  through each path, and the size from which HNSW wins (faster, with recall@10
  >= 0.98, there and at every larger size measured), beside
  EXACT_SEARCH_MAX_ROWS. Where the planner takes no index for a user (small
  users of a small table) there is no HNSW to compare: shown, not counted.

Uses DATABASE_URL / REDIS_URL, or the embedded stack.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone
from results import Result, SuiteOptions, latency, percentiles, table
from support import delete_account, timings  # first: support sets Django up

from memories.embedding import Vectors, get_embedder
from memories.generate import default_cache_path, generate_memories
from memories.management.commands.generate_memories import ProgressBars
from memories.models import Account, Memory
from memories.selectors import MemoryFilters, SearchQuerySQL, _configure_hnsw, search_sql
from memories.synthetic import question
from memories.vectors import VectorParam

GROUP = "recall"
NAMESPACE = "default"
# As bench/http_load.py's data set: the same texts, which a shared vector cache then holds.
SEED = 1
K = 10
TARGET = 0.98
# Distances are float4 arithmetic; nearer than this to the exact 10th is as near.
EPSILON = 1e-6
LARGE = (1_000_000, 10_000)
SWITCH_SIZES = (100, 500, 1_000, 2_000, 5_000, 10_000, 20_000)
# A size is measured on the user nearest to it, if within this factor.
SIZE_TOLERANCE = 1.5
EXACT_USERS_SAMPLED = 8
# Global search is also measured with these larger search breadths.
GLOBAL_EF_SEARCH = (200, 400)


@dataclass(frozen=True)
class Candidates:
    # (id, cosine distance) of each candidate, nearest first.
    rows: list[tuple[str, float]]
    exact: bool


def recall(candidates: Sequence[float], exact: Sequence[float]) -> float:
    """recall@K of candidate distances against the exact nearest distances (both any order)."""
    nearest = sorted(exact)[:K]
    if not nearest:
        return 1.0
    bound = nearest[-1] + EPSILON
    return min(len(nearest), sum(1 for distance in candidates if distance <= bound)) / len(nearest)


# The search sends its best 2 x limit candidates by score; ranked by similarity
# alone, those are the nearest of its vector candidates, which recall measures.
_SIMILARITY_ONLY = {
    "similarity": 1.0,
    "keyword": 0.0,
    "recency": 0.0,
    "importance": 0.0,
    "frequency": 0.0,
    "pinned": 0.0,
}


@contextlib.contextmanager
def _path(exact: bool | None) -> Iterator[None]:
    """Force the service's choice (every user searched exactly, or every user
    through HNSW; None: its own), and rank the candidates by similarity alone."""
    memory = {**settings.MEMORY, "WEIGHTS": _SIMILARITY_ONLY}
    if exact is not None:
        memory["EXACT_SEARCH_MAX_ROWS"] = 10**9 if exact else 0
    with override_settings(MEMORY=memory):
        yield


def user_candidates(account: Account, user_id: str, vector: Vectors, *, exact: bool | None = None) -> Candidates:
    """The service's similarity candidates for a user (its path, or a forced one)."""
    with _path(exact):
        search = search_sql(
            account=account,
            filters=MemoryFilters(user_id=user_id, namespace=NAMESPACE),
            query="",
            vector=vector,
            limit=K,
            now=timezone.now(),
        )
    return Candidates(rows=_run(search.sql, search.params, hnsw=not search.exact), exact=search.exact)


def _run(sql: str, params: Sequence[Any], *, hnsw: bool) -> list[tuple[str, float]]:
    # As memories.selectors._memory_search_db runs it: one transaction, HNSW settings local to it.
    with transaction.atomic():
        if hnsw:
            _configure_hnsw()
        found = Memory.objects.raw(sql, list(params))
        rows = [(str(row.id), 1 - row.similarity) for row in found]  # type: ignore[attr-defined]
    return sorted(rows, key=lambda row: row[1])


def _global_sql(account: Account, vector: Vectors, *, exact: bool) -> tuple[str, list[Any]]:
    live = "embedding IS NOT NULL AND (expires_at IS NULL OR expires_at > now())"
    scope = f"SELECT id, embedding FROM memories_memory WHERE account_id = %s AND namespace = %s AND {live}"
    order = "ORDER BY embedding <=> %s::halfvec LIMIT %s"
    literal = VectorParam(vector)
    if exact:
        # MATERIALIZED: the planner cannot take the index for the outer ORDER BY.
        sql = f"WITH scoped AS MATERIALIZED ({scope}) SELECT id, 1 - (embedding <=> %s::halfvec) AS similarity"
        return f"{sql} FROM scoped {order}", [account.id, NAMESPACE, literal, literal, K]
    sql = f"SELECT id, 1 - (embedding <=> %s::halfvec) AS similarity FROM ({scope} {order}) AS nearest"
    return sql, [literal, account.id, NAMESPACE, literal, _candidates()]


def global_candidates(account: Account, vector: Vectors, *, exact: bool) -> list[tuple[str, float]]:
    """Nearest of all the account's live memories: through HNSW as the service configures it, or exactly."""
    return _run(*_global_sql(account, vector, exact=exact), hnsw=not exact)


def _candidates() -> int:
    return max(int(settings.MEMORY["SEARCH_CANDIDATES"]), K)


def _uses_hnsw(sql: str, params: Sequence[Any]) -> bool:
    with transaction.atomic(), connection.cursor() as cursor:
        _configure_hnsw()
        cursor.execute(f"EXPLAIN {sql}", list(params))
        return "memory_embedding_hnsw" in "\n".join(row[0] for row in cursor.fetchall())


def user_sizes(account: Account) -> dict[str, int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT user_id, count(*) FROM memories_memory WHERE account_id = %s AND namespace = %s"
            " AND embedding IS NOT NULL GROUP BY user_id",
            [account.id, NAMESPACE],
        )
        return dict(cursor.fetchall())


def queries(count: int) -> tuple[list[str], Vectors]:
    rng = random.Random(SEED)
    texts = [question(rng) for _ in range(count)]
    return texts, get_embedder().embed(texts)


# -- the data set ----------------------------------------------------------------


@contextlib.contextmanager
def data_set(memories: int, users: int, *, keep: bool) -> Iterator[tuple[Account, list[Result]]]:
    """The generated account (reused when kept from an earlier run), and the generation's result if it ran."""
    name = f"bench-recall-{users}u-{memories}m-s{SEED}" if keep else f"bench-recall-{time.time_ns()}"
    account, _ = Account.objects.get_or_create(name=name)
    generated: list[Result] = []
    try:
        stored = Memory.objects.filter(account=account, namespace=NAMESPACE).count()
        if stored not in (0, memories):
            raise SystemExit(f"account {name} holds {stored} memories, not {memories}: delete it first")
        if stored == 0:
            bars = ProgressBars()
            try:
                result = generate_memories(
                    account=account,
                    users=users,
                    memories=memories,
                    namespace=NAMESPACE,
                    seed=SEED,
                    cache_path=default_cache_path(),
                    workers=os.cpu_count() or 1,
                    progress=bars,
                )
            finally:
                bars.close()
            generated.append(
                Result(
                    group=GROUP,
                    operation=f"generate {memories:,} memories of {users:,} users (embed, COPY, HNSW build)",
                    throughput=memories / result.seconds,
                    value=result.seconds,
                    unit="s",
                    baseline=f"{result.embedded:,} texts embedded, {result.cached:,} vectors from the cache",
                    extra={
                        "embedded": result.embedded,
                        "cached": result.cached,
                        "index_rebuilt": result.index_rebuilt,
                        "index_seconds": result.index_seconds,
                    },
                )
            )
        yield account, generated
    finally:
        if not keep:
            delete_account(account)


# -- the measurements -------------------------------------------------------------


def _sample_users(sizes: dict[str, int]) -> list[str]:
    """Every user above EXACT_SEARCH_MAX_ROWS, and a spread of the smaller ones."""
    limit = int(settings.MEMORY["EXACT_SEARCH_MAX_ROWS"])
    ordered = sorted(sizes, key=lambda user: -sizes[user])
    large = [user for user in ordered if sizes[user] > limit]
    small = [user for user in ordered if sizes[user] <= limit]
    step = max(1, len(small) // EXACT_USERS_SAMPLED)
    return large + small[::step][:EXACT_USERS_SAMPLED]


def per_user_recall(account: Account, sizes: dict[str, int], vectors: Vectors, label: str) -> list[Result]:
    by_path: dict[bool, list[float]] = {True: [], False: []}
    users_by_path: dict[bool, list[str]] = {True: [], False: []}
    for user in _sample_users(sizes):
        exact_rows = [user_candidates(account, user, vector, exact=True).rows for vector in vectors]
        used = [user_candidates(account, user, vector) for vector in vectors]
        path = used[0].exact
        users_by_path[path].append(f"{user} ({sizes[user]:,})")
        by_path[path] += [
            recall([d for _, d in got.rows], [d for _, d in want]) for got, want in zip(used, exact_rows, strict=True)
        ]
    limit = int(settings.MEMORY["EXACT_SEARCH_MAX_ROWS"])
    results = []
    for exact, name in ((False, f"HNSW path, users > {limit:,} rows"), (True, "exact path")):
        values = by_path[exact]
        if not values:
            continue
        value = statistics.fmean(values)
        results.append(
            Result(
                group=GROUP,
                operation=f"recall@10 per user, {name} ({label})",
                value=value,
                target=f">= {TARGET}",
                met=value >= TARGET,
                baseline=f"exact top 10; {len(users_by_path[exact])} users x {len(vectors)} queries",
                extra={"users": users_by_path[exact], "worst_query": min(values)},
            )
        )
    return results


def global_recall(account: Account, vectors: Vectors, label: str) -> list[Result]:
    """At the configured HNSW_EF_SEARCH, then at the larger GLOBAL_EF_SEARCH ones: what a global search would need."""
    truth = [[d for _, d in global_candidates(account, vector, exact=True)] for vector in vectors]
    configured = int(settings.MEMORY["HNSW_EF_SEARCH"])
    results = []
    for ef_search in (configured, *(ef for ef in GLOBAL_EF_SEARCH if ef > configured)):
        with override_settings(MEMORY={**settings.MEMORY, "HNSW_EF_SEARCH": ef_search}):
            samples, found = _timed(len(vectors), lambda i: global_candidates(account, vectors[i], exact=False))
        values = [recall(f, t) for f, t in zip(found, truth, strict=True)]
        value = statistics.fmean(values)
        setting = "" if ef_search == configured else f", ef_search {ef_search} (setting: {configured})"
        if not _uses_hnsw(*_global_sql(account, vectors[0], exact=False)):
            setting += ", planner chose no index"
        p50, p95, p99 = percentiles(samples)
        results.append(
            Result(
                group=GROUP,
                operation=f"recall@10 global, all the account's memories{setting} ({label})",
                p50_ms=p50,
                p95_ms=p95,
                p99_ms=p99,
                value=value,
                target=f">= {TARGET}",
                met=value >= TARGET,
                baseline=f"exact top 10; {len(vectors)} queries, {_candidates()} HNSW candidates",
                extra={"worst_query": min(values), "ef_search": ef_search},
            )
        )
    return results


def _timed(count: int, search: Callable[[int], list[tuple[str, float]]]) -> tuple[list[float], list[list[float]]]:
    """Milliseconds of each of `count` searches (given its index), and each one's candidate distances.
    The first search runs once more before, untimed: the pages it reads are then in memory."""
    search(0)
    found: list[list[float]] = []

    def call(index: int) -> None:
        found.append([d for _, d in search(index)])

    return timings(count, call), found


def _timed_searches(searches: Sequence[SearchQuerySQL], *, hnsw: bool) -> tuple[list[float], list[list[float]]]:
    """Milliseconds of each search (its query only, in its transaction), and its candidates' distances."""
    return _timed(len(searches), lambda i: _run(searches[i].sql, searches[i].params, hnsw=hnsw))


def _nearest_users(sizes: dict[str, int]) -> list[tuple[int, str]]:
    """(target size, the user nearest to it) for each SWITCH_SIZES size some user is near enough."""
    chosen: list[tuple[int, str]] = []
    for target in SWITCH_SIZES:
        user = min(sizes, key=lambda u: abs(np.log(sizes[u] / target)))
        if 1 / SIZE_TOLERANCE <= sizes[user] / target <= SIZE_TOLERANCE and user not in {u for _, u in chosen}:
            chosen.append((target, user))
    return chosen


def switch_point(account: Account, sizes: dict[str, int], vectors: Vectors, label: str) -> list[Result]:
    """Each size's exact and HNSW p50, and where HNSW starts to win: faster, with
    recall@10 >= TARGET, at that size and every larger one measured."""
    results: list[Result] = []
    # Per size: whether HNSW wins; None where the planner used no index for it (no HNSW to compare).
    wins: list[tuple[int, bool | None]] = []
    for _, user in _nearest_users(sizes):
        rows = sizes[user]
        searches = {}
        for exact in (True, False):
            with _path(exact):
                filters = MemoryFilters(user_id=user, namespace=NAMESPACE)
                searches[exact] = [
                    search_sql(account=account, filters=filters, query="", vector=vector, limit=K, now=timezone.now())
                    for vector in vectors
                ]
        truth = [[d for _, d in _run(search.sql, search.params, hnsw=False)] for search in searches[True]]
        indexed = _uses_hnsw(searches[False][0].sql, searches[False][0].params)
        p50: dict[bool, float] = {}
        recalls: dict[bool, float] = {}
        for exact in (True, False):
            samples, found = _timed_searches(searches[exact], hnsw=not exact)
            recalls[exact] = statistics.fmean(recall(f, t) for f, t in zip(found, truth, strict=True))
            p50[exact] = statistics.median(samples)
            path = "exact" if exact else "HNSW" if indexed else "HNSW settings (planner chose no index)"
            results.append(
                latency(
                    GROUP,
                    f"per-user search, {path}, user of {rows:,} rows ({label})",
                    samples,
                    baseline=f"recall@10 {recalls[exact]:.3f}",
                    recall=recalls[exact],
                    rows=rows,
                )
            )
        wins.append((rows, p50[False] < p50[True] and recalls[False] >= TARGET if indexed else None))
    if not wins:
        return results
    limit = int(settings.MEMORY["EXACT_SEARCH_MAX_ROWS"])
    compared = [(rows, win) for rows, win in wins if win is not None]
    hnsw_from = next((rows for i, (rows, _) in enumerate(compared) if all(w for _, w in compared[i:])), None)
    exact_until = max(
        (rows for rows, win in compared if not win and (hnsw_from is None or rows < hnsw_from)), default=None
    )
    met = (exact_until is None or limit >= exact_until) and (hnsw_from is None or limit < hnsw_from)
    measured = ", ".join(f"{rows:,}: {'no index' if win is None else 'HNSW' if win else 'exact'}" for rows, win in wins)
    results.append(
        Result(
            group=GROUP,
            operation=f"exact/HNSW switch point: HNSW wins from ({label})",
            value=None if hnsw_from is None else float(hnsw_from),
            unit="rows" if hnsw_from is not None else "never up to the largest user",
            target=f"EXACT_SEARCH_MAX_ROWS = {limit:,} in between",
            met=met,
            baseline=f"per size: {measured}",
            extra={"exact_until": exact_until, "hnsw_from": hnsw_from, "setting": limit},
        )
    )
    return results


def measure(memories: int, users: int, *, queries_per_user: int, keep: bool) -> list[Result]:
    label = f"{memories:,} memories"
    with data_set(memories, users, keep=keep) as (account, results):
        sizes = user_sizes(account)
        _, vectors = queries(queries_per_user)
        results += per_user_recall(account, sizes, vectors, label)
        results += global_recall(account, vectors, label)
        results += switch_point(account, sizes, vectors, label)
    return results


def run(options: SuiteOptions, *, queries_per_user: int = 50, keep: bool = False) -> list[Result]:
    results = measure(options.memories, options.users, queries_per_user=queries_per_user, keep=keep)
    if options.large and options.memories < LARGE[0]:
        results += measure(*LARGE, queries_per_user=queries_per_user, keep=keep)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = SuiteOptions()
    parser.add_argument("--memories", type=int, default=defaults.memories)
    parser.add_argument("--users", type=int, default=defaults.users)
    parser.add_argument("--large", action="store_true", help=f"also {LARGE[0]:,} memories over {LARGE[1]:,} users")
    parser.add_argument("--queries", type=int, default=50, help="queries per user (and globally)")
    parser.add_argument("--keep", action="store_true", help="keep the generated account, and reuse a kept one")
    args = parser.parse_args()
    options = SuiteOptions(memories=args.memories, users=args.users, large=args.large)
    print(table(run(options, queries_per_user=args.queries, keep=args.keep)))


if __name__ == "__main__":
    main()
