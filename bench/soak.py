"""Soak: a steady mixed load on the production server for a long time (issue 6, item 9).

    .venv/bin/python bench/soak.py --duration 600 --rate 50 [--clients 4] [--interval 30]
                                   [--users 1000] [--memories 100000] [--mix get=30,list=20,...]

Starts the server as `make run` does, on the embedded stack and data set of
bench/http_load.py (--data-dir, .data/bench-http by default: the data set is
generated there once and kept), and drives an open-loop load: --rate requests
per second in all, evenly spaced, from --clients load-generator processes, each
with up to --concurrency requests in flight. A request is sent when its time
comes, whatever the earlier ones are doing, and its latency counts from that
time: a server that falls behind shows as latency, not as a lower offered rate.
("late" is how long after its time a request was sent: all of a client's
connections busy, or the client starved of CPU.)

The mix (--mix, relative weights; default get=35,list=20,search_new=8,
search_repeated=12,store=8,store_async=10,batch=2,transcript=5):
  get              GET /memory/memories/{id}: half the data set's hot memories,
                   half this client's own acknowledged writes
  list             GET /memory/memories?limit=20 of a hot user
  search_new       GET /memory/relevant, a query never asked before (embedded)
  search_repeated  GET /memory/relevant, one of 20 queries asked again and again
  store            POST /memory/memories (embedded in the request)
  store_async      POST /memory/memories?async=true (202; embedded by the job cluster)
  batch            POST /memory/memories/batch of --batch-size memories
  transcript       POST /api/memory/soak/store_raw, a chat transcript of
                   tests/data/transcripts (extracted by the job cluster)
Users are picked in proportion to 1/rank (heavy users are busy ones). Writes
are new texts of data set users, with ttl_seconds (the run plus an hour), so the
data set does not grow across runs; transcripts go to the `soak` namespace.

Reported every --interval seconds until the last answer (a server behind its
schedule answers after --duration: "in flight" counts the requests sent or due
and not answered yet) and at the end: throughput, errors by status
(any answer that is not 2xx, and any request without an answer, by exception),
p50/p95/p99 per operation (of the 2xx answers), and the server's memory
(bench/server_memory.py): RSS of gunicorn's master and workers, of the django-q2
cluster and of the supervisor (memoryproject.run), summed and per kind (and
PSS, the sum that counts shared pages once), Redis's used_memory and the
database's size.

After the load it waits (up to --drain-timeout) for the background work the load
caused (the async writes' vectors, the transcripts' extraction), then checks in
PostgreSQL that every acknowledged write is there exactly once: each write
carries a marker in its metadata (soak_run, and soak_write or soak_transcript);
an acknowledged id that is not in the database is a lost write, a marker on two
rows a duplicated one.

The verdict (the last line) is PASS when:
- there was no error;
- memory is flat: the server's RSS (every kind summed) at the end of the load
  is at most --flat-percent (10 %) above its value at the end of the first
  quarter of the run. The first quarter is the warm-up: processes import
  lazily, load the model on their first embedding and fill their caches (the
  in-process L1 is bounded by CACHE_L1_MAX_BYTES per process, 256 MB by default);
  a leak keeps growing after it;
- every acknowledged write is in PostgreSQL exactly once, no transcript failed,
  and the background work drained within --drain-timeout.
The report goes to --out (bench/results/soak.json). The exit status is 0 (the
verdict is a result, as for the suite), or 1 with --check when the verdict fails.
"""

from __future__ import annotations

import argparse
import itertools
import json
import queue
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from http_load import (
    DEFAULT_DATA_DIR,
    DEFAULT_PORT,
    REQUEST_ERRORS,
    SEED,
    WORKER_FLAG,
    Call,
    DataSet,
    HttpClient,
    LoadGenerator,
    Server,
    api_client,
    data_account,
    fresh,
    get,
    load_data,
    post,
    question,
    repeated_queries,
    sentence,
    started_server,
    wait_for_preload,
    warm_up,
    worker_client,
)
from http_load import sample as sample_data_set
from results import Result, SuiteOptions, latency, machine, percentiles, table
from server_memory import KINDS, MemorySample, ServerMemory

BENCH = Path(__file__).resolve().parent
GROUP = "soak"
TRANSCRIPTS = BENCH.parent / "tests" / "data" / "transcripts"
# The transcripts' vectorstore: their sessions and extracted memories stay out of the data set's namespace.
RAW_NAMESPACE = "soak"
OPERATIONS = {
    "get": "get by id",
    "list": "list 20 newest",
    "search_new": "search, new query",
    "search_repeated": "search, repeated query",
    "store": "store one",
    "store_async": "store one, async=true",
    "batch": "batch store",
    "transcript": "store_raw transcript",
}
# Reads first, as an agent's traffic is; every kind of write, the batches small (each embeds all its items).
DEFAULT_MIX = {
    "get": 35,
    "list": 20,
    "search_new": 8,
    "search_repeated": 12,
    "store": 8,
    "store_async": 10,
    "batch": 2,
    "transcript": 5,
}
# Workers send what they measured this often: the parent's progress and reports are this fresh.
FLUSH_SECONDS = 1.0
# A client reads back at most this many of its own latest writes.
OWN_WRITES_KEPT = 1000
MB = 2**20


def _log(message: str) -> None:
    print(f"[soak] {message}", file=sys.stderr, flush=True)


def parse_duration(text: str) -> float:
    """Seconds from '600', '600s', '10m', '1h30m'."""
    number = r"(\d+(?:\.\d+)?)"
    match = re.fullmatch(rf"(?:{number}h)?(?:{number}m)?(?:{number}s?)?", text.strip().lower())
    if not match or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (600, 600s, 10m, 1h30m)")
    hours, minutes, seconds = (float(part) if part else 0.0 for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise argparse.ArgumentTypeError("the duration must be positive")
    return total


def parse_mix(text: str) -> dict[str, float]:
    """'get=30,list=20' -> weights; operations not named get none."""
    mix = dict.fromkeys(OPERATIONS, 0.0)
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, weight = item.partition("=")
        if name not in OPERATIONS:
            raise argparse.ArgumentTypeError(f"unknown operation {name!r}; choose from {', '.join(OPERATIONS)}")
        try:
            mix[name] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a weight: {item!r}") from None
        if mix[name] < 0:
            raise argparse.ArgumentTypeError(f"negative weight: {item!r}")
    if not sum(mix.values()):
        raise argparse.ArgumentTypeError("the mix has no operation")
    return mix


# -- a load-generator process (bench/soak.py --worker) -----------------------------------


@dataclass(frozen=True)
class Planned:
    operation: str
    call: Call
    # The markers of the writes it carries, in the order of the ids in its answer.
    markers: tuple[str, ...] = ()


class Requests:
    """What one load generator sends: the mix's operations on the data set, each write marked."""

    def __init__(self, spec: dict[str, Any]) -> None:
        index, nonce = spec["index"], spec["nonce"]
        self.nonce = nonce
        self.rng = random.Random(f"{spec['seed']}:{nonce}:{index}")
        self.data = DataSet(**spec["data"])
        self.operations = [name for name, weight in spec["mix"].items() if weight > 0]
        self.weights = [spec["mix"][name] for name in self.operations]
        # New to the server: its query cache holds earlier runs' queries, and other clients' of this one.
        self.new_question = fresh(question, f" {nonce}-{index}")
        self.new_sentence = fresh(sentence)
        self.repeated = repeated_queries(self.data.hot_users)
        self.transcripts: list[str] = spec["transcripts"]
        self.batch_size: int = spec["batch_size"]
        self.ttl: int = spec["ttl_seconds"]
        self.markers = (f"{index}-{n}" for n in itertools.count())
        # Ids this client's writes were acknowledged with (answers arrive on other threads).
        self.written: list[str] = []
        self.lock = threading.Lock()
        self.builders: dict[str, Callable[[], Planned]] = {
            "get": self._get,
            "list": self._list,
            "search_new": self._search_new,
            "search_repeated": self._search_repeated,
            "store": self._store,
            "store_async": self._store_async,
            "batch": self._batch,
            "transcript": self._transcript,
        }

    def next(self) -> Planned:
        return self.builders[self.rng.choices(self.operations, weights=self.weights)[0]]()

    def _get(self) -> Planned:
        with self.lock:
            own = self.rng.choice(self.written) if self.written and self.rng.random() < 0.5 else None
        memory_id = own or (self.rng.choice(self.data.hot_ids) if self.data.hot_ids else None)
        if memory_id is None:  # nothing to read yet
            return self._list()
        return Planned("get", get(f"/memory/memories/{memory_id}"))

    def _list(self) -> Planned:
        return Planned("list", get("/memory/memories", user_id=self.rng.choice(self.data.hot_users), limit=20))

    def _search_new(self) -> Planned:
        query = self.new_question(self.rng)
        return Planned("search_new", get("/memory/relevant", user_id=self.data.pick(self.rng), query=query, limit=10))

    def _search_repeated(self) -> Planned:
        user, query = self.rng.choice(self.repeated)
        return Planned("search_repeated", get("/memory/relevant", user_id=user, query=query, limit=10))

    def _memory(self, user: str, marker: str) -> dict[str, Any]:
        return {
            "user_id": user,
            "content": self.new_sentence(self.rng),
            "ttl_seconds": self.ttl,
            "metadata": {"soak_run": self.nonce, "soak_write": marker},
        }

    def _store(self) -> Planned:
        marker = next(self.markers)
        return Planned("store", post("/memory/memories", self._memory(self.data.pick(self.rng), marker)), (marker,))

    def _store_async(self) -> Planned:
        marker = next(self.markers)
        body = self._memory(self.data.pick(self.rng), marker)
        return Planned("store_async", post("/memory/memories?async=true", body), (marker,))

    def _batch(self) -> Planned:
        user = self.data.pick(self.rng)
        markers = tuple(next(self.markers) for _ in range(self.batch_size))
        body = {"memories": [self._memory(user, marker) for marker in markers]}
        return Planned("batch", post("/memory/memories/batch", body), markers)

    def _transcript(self) -> Planned:
        marker = next(self.markers)
        body = {
            "session_data": self.rng.choice(self.transcripts),
            "metadata": {"user_id": self.data.pick(self.rng), "soak_run": self.nonce, "soak_transcript": marker},
        }
        return Planned("transcript", post(f"/api/memory/{RAW_NAMESPACE}/store_raw", body), (marker,))

    def acknowledged(self, planned: Planned, status: int, answer: dict[str, Any]) -> list[list[Any]]:
        """[kind, marker, id, created] of each write a 2xx answer acknowledged."""
        if planned.operation == "transcript":
            return [["transcript", planned.markers[0], answer["raw_memory_id"], True]]
        if planned.operation == "batch":
            ids = [(item["memory"]["id"], item["created"]) for item in answer["results"]]
        elif planned.operation == "store_async":
            ids = [(answer["id"], answer["created"])]
        else:
            # 200: it updated an existing memory (a near-duplicate of the user's), whose id it answers with.
            ids = [(answer["id"], status == 201)]
        with self.lock:
            self.written.extend(memory_id for memory_id, _ in ids)
            del self.written[:-OWN_WRITES_KEPT]
        return [
            ["memory", marker, memory_id, created]
            for marker, (memory_id, created) in zip(planned.markers, ids, strict=True)
        ]


class Worker:
    """Sends its share of the schedule on a pool of threads (a connection each); reports every second."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.requests = Requests(spec)
        self.concurrency: int = spec["concurrency"]
        # All clients together send `rate` a second, evenly spaced: client i sends
        # at i/rate, then every clients/rate seconds.
        self.period: float = spec["clients"] / spec["rate"]
        self.offset: float = spec["index"] / spec["rate"]
        self.duration: float = spec["duration"]
        self.start_at: float = spec["start_at"]
        self.local = threading.local()
        self.lock = threading.Lock()
        self.samples: list[list[Any]] = []
        self.acks: list[list[Any]] = []
        self.errors: list[str] = []
        self.sent = 0
        self.in_flight = 0

    def run(self) -> None:
        stopping = threading.Event()
        reporter = threading.Thread(target=self._report, args=(stopping,), daemon=True)
        time.sleep(max(0.0, self.start_at - time.time()))
        origin = time.perf_counter()
        reporter.start()
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="soak") as executor:
            for n in itertools.count():
                due = self.offset + n * self.period
                if due >= self.duration:
                    break
                planned = self.requests.next()
                time.sleep(max(0.0, origin + due - time.perf_counter()))
                with self.lock:
                    self.sent += 1
                    self.in_flight += 1
                # Queued when every connection is busy: open loop, the wait counts in its latency.
                executor.submit(self._send, planned, origin + due)
        stopping.set()
        reporter.join()
        self._flush(done=True)

    def _client(self) -> HttpClient:
        client: HttpClient | None = getattr(self.local, "client", None)
        if client is None:
            client = self.local.client = worker_client()
        return client

    def _send(self, planned: Planned, due: float) -> None:
        method, path, body, _ = planned.call
        started = time.perf_counter()
        acks: list[list[Any]] = []
        error = None
        outcome: int | str
        try:
            status, content = self._client().request(method, path, body)
        except REQUEST_ERRORS as failure:
            outcome, error = type(failure).__name__, f"{planned.operation}: {type(failure).__name__}: {failure}"
        except Exception as failure:
            # Not the server's fault, but an executor would swallow it: counted and shown, as an error.
            outcome, error = "client error", f"{planned.operation}: {failure!r}"
        else:
            outcome = status
            if not 200 <= status < 300:
                error = f"{planned.operation}: {status} {content[:300]!r}"
            elif planned.markers:
                try:
                    acks = self.requests.acknowledged(planned, status, json.loads(content))
                except (ValueError, KeyError, TypeError) as failure:
                    # A 2xx this client cannot read is no acknowledgement: an error.
                    outcome, error = "unreadable 2xx", f"{planned.operation}: {status} {failure!r} {content[:300]!r}"
        finished = time.perf_counter()
        record = [planned.operation, (finished - due) * 1000, outcome, (started - due) * 1000]
        with self.lock:
            self.samples.append(record)
            self.acks.extend(acks)
            if error is not None and len(self.errors) < 5:
                self.errors.append(error)
            self.in_flight -= 1

    def _report(self, stopping: threading.Event) -> None:
        while not stopping.wait(FLUSH_SECONDS):
            self._flush(done=False)

    def _flush(self, *, done: bool) -> None:
        with self.lock:
            message = {
                "samples": self.samples,
                "acks": self.acks,
                "errors": self.errors,
                "sent": self.sent,
                "in_flight": self.in_flight,
                "done": done,
            }
            self.samples, self.acks, self.errors = [], [], []
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def _worker_main() -> None:
    Worker(json.loads(sys.stdin.readline())).run()


# -- the parent: tallies, memory, reports --------------------------------------------------


def _ok(outcome: str) -> bool:
    return outcome.isdigit() and 200 <= int(outcome) < 300


@dataclass
class Tally:
    """The requests of one stretch of the run (an interval, or all of it), per operation."""

    # Milliseconds of the 2xx answers, from each request's due time.
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    # Answers by status ("200", "503") or by the exception of a request without one.
    outcomes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    late: list[float] = field(default_factory=list)

    def add(self, operation: str, milliseconds: float, outcome: int | str, late: float) -> None:
        key = str(outcome)
        self.outcomes[operation][key] += 1
        if _ok(key):
            self.latencies[operation].append(milliseconds)
        self.late.append(late)

    @property
    def requests(self) -> int:
        return sum(sum(counts.values()) for counts in self.outcomes.values())

    def errors(self) -> Counter[str]:
        found: Counter[str] = Counter()
        for counts in self.outcomes.values():
            found.update({outcome: count for outcome, count in counts.items() if not _ok(outcome)})
        return found

    def results(self, seconds: float) -> list[Result]:
        """A row per operation (results.Result, as the suite's)."""
        rows = []
        for operation, name in OPERATIONS.items():
            counts = self.outcomes.get(operation)
            if not counts:
                continue
            requests = sum(counts.values())
            extra: dict[str, Any] = {
                "requests": requests,
                "errors": sum(count for outcome, count in counts.items() if not _ok(outcome)),
                "statuses": dict(sorted(counts.items())),
            }
            throughput = requests / seconds if seconds > 0 else None
            samples = self.latencies.get(operation)
            if samples:
                rows.append(latency(GROUP, name, samples, throughput=throughput, **extra))
            else:
                rows.append(Result(GROUP, name, throughput=throughput, extra=extra))
        return rows


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / MB:,.0f} MB"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def memory_line(sample: MemorySample) -> str:
    kinds = ", ".join(f"{kind} {_mb(sample.rss[kind])} ({sample.processes[kind]})" for kind in KINDS)
    return (
        f"memory: server RSS {_mb(sample.rss['total'])} = {kinds}; PSS {_mb(sample.pss['total'])}; "
        f"Redis {_mb(sample.redis_used_memory)}; PostgreSQL {_mb(sample.database_bytes)}"
    )


def _errors_text(errors: Counter[str]) -> str:
    total = sum(errors.values())
    return f"{total}" + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(errors.items()))})" if total else "")


def interval_report(
    tally: Tally, started: float, ended: float, duration: float, memory: MemorySample, in_flight: int
) -> str:
    seconds = max(ended - started, 1e-9)
    late = percentiles(tally.late)[2] if tally.late else 0.0
    lines = [
        f"[{ended:5.0f} / {duration:.0f} s] {tally.requests:,} requests, {tally.requests / seconds:.1f}/s, "
        f"errors {_errors_text(tally.errors())}, sent late p99 {late:.1f} ms, in flight {in_flight:,}"
        # Requests waiting for a free connection: the server is behind its schedule.
        + (" (behind)" if late > 1000 else ""),
        f"  {memory_line(memory)}",
    ]
    for row in tally.results(seconds):
        lines.append(
            f"  {row.operation:<24} {row.extra['requests']:>6,}  p50 {_ms(row.p50_ms):>8}  "
            f"p95 {_ms(row.p95_ms):>8}  p99 {_ms(row.p99_ms):>8} ms"
            + (f"  errors {row.extra['errors']}" if row.extra["errors"] else "")
        )
    return "\n".join(lines)


def memory_verdict(samples: list[MemorySample], duration: float, limit_percent: float) -> dict[str, Any]:
    """Flat: the server's RSS at the end of the load at most `limit_percent` above that at the end of the
    first quarter (the sample taken then: the first at or after it; the first quarter is the warm-up)."""
    quarter = duration / 4
    baseline = min((s for s in samples if s.at >= quarter), key=lambda s: s.at, default=samples[-1])
    end = samples[-1]
    growth = (end.rss["total"] - baseline.rss["total"]) / baseline.rss["total"] * 100

    def change(before: int | None, after: int | None) -> float | None:
        return None if not before or after is None else round((after - before) / before * 100, 2)

    pids = {pid for sample in samples for pid in sample.worker_pids}
    return {
        "rule": f"server RSS (all kinds) at the end <= {limit_percent:g} % above that at the end of the first quarter",
        "baseline_at": round(baseline.at, 2),
        "baseline_rss": baseline.rss["total"],
        "end_at": round(end.at, 2),
        "end_rss": end.rss["total"],
        "growth_percent": round(growth, 2),
        "limit_percent": limit_percent,
        "flat": growth <= limit_percent,
        # Beside the rule, the same change of the rest, per kind:
        "pss_growth_percent": change(baseline.pss["total"], end.pss["total"]),
        "rss_growth_percent_by_kind": {kind: change(baseline.rss[kind], end.rss[kind]) for kind in KINDS},
        "redis_growth_percent": change(baseline.redis_used_memory, end.redis_used_memory),
        "database_growth_percent": change(baseline.database_bytes, end.database_bytes),
        # Workers that replaced one (crashed, killed by gunicorn's timeout, recycled).
        "gunicorn_workers_replaced": len(pids) - len(samples[0].worker_pids),
    }


# -- acknowledged writes against PostgreSQL ---------------------------------------------------


def drain(connection: psycopg.Connection[Any], run_marker: str, timeout: float) -> dict[str, Any]:
    """Wait for the background work of the run's writes: vectors of async writes, queued transcripts."""
    started = time.monotonic()
    while True:
        pending = _count(
            connection,
            "SELECT count(*) FROM memories_memory WHERE metadata @> %s::jsonb AND embedding IS NULL",
            run_marker,
        )
        waiting = _count(
            connection,
            "SELECT count(*) FROM memories_rawtranscript"
            " WHERE metadata @> %s::jsonb AND status IN ('queued', 'processing')",
            run_marker,
        )
        waited = time.monotonic() - started
        if (not pending and not waiting) or waited > timeout:
            return {
                "drained": not pending and not waiting,
                "seconds": round(waited, 1),
                "memories_without_vector": pending,
                "transcripts_not_processed": waiting,
            }
        time.sleep(1.0)


def _count(connection: psycopg.Connection[Any], sql: LiteralString, run_marker: str) -> int:
    row = connection.execute(sql, (run_marker,)).fetchone()
    return int(row[0]) if row else 0


def _compare(acks: list[list[Any]], rows: list[tuple[str, str]], present: set[str]) -> dict[str, Any]:
    """Acknowledged writes (marker, id, created) against the rows carrying the run's marker (id, marker)."""
    acknowledged = {memory_id for _, memory_id, _ in acks}
    by_marker: dict[str, list[str]] = defaultdict(list)
    for row_id, marker in rows:
        by_marker[marker].append(row_id)
    duplicates = {marker: ids for marker, ids in by_marker.items() if len(ids) > 1}
    missing = sorted(acknowledged - present)
    acknowledged_markers = {marker for marker, _, _ in acks}
    return {
        "acknowledged": len(acks),
        # Merged into an existing row (answered with its id): the row need not carry this write's marker.
        "merged": sum(1 for _, _, created in acks if not created),
        "missing": len(missing),
        "missing_ids": missing[:20],
        "duplicates": len(duplicates),
        "duplicate_examples": dict(itertools.islice(duplicates.items(), 5)),
        # Stored, but the client got no 2xx (an error it already counted): not lost, not acknowledged.
        "stored_unacknowledged": len(set(by_marker) - acknowledged_markers),
    }


def check_writes(database_url: str, nonce: str, acks: list[list[Any]], timeout: float) -> dict[str, Any]:
    run_marker = json.dumps({"soak_run": nonce})
    memories = [ack[1:] for ack in acks if ack[0] == "memory"]
    transcripts = [ack[1:] for ack in acks if ack[0] == "transcript"]
    with psycopg.connect(database_url, autocommit=True) as connection:
        drained = drain(connection, run_marker, timeout)
        memory_rows = connection.execute(
            "SELECT id::text, metadata->>'soak_write' FROM memories_memory WHERE metadata @> %s::jsonb",
            (run_marker,),
        ).fetchall()
        memory_ids = [memory_id for _, memory_id, _ in memories]
        present = connection.execute(
            "SELECT id::text FROM memories_memory WHERE id = ANY(%s::uuid[])", (memory_ids,)
        ).fetchall()
        transcript_rows = connection.execute(
            "SELECT id::text, metadata->>'soak_transcript', status FROM memories_rawtranscript"
            " WHERE metadata @> %s::jsonb",
            (run_marker,),
        ).fetchall()
    memory_check = _compare(memories, [(row[0], row[1]) for row in memory_rows], {row[0] for row in present})
    transcript_check = _compare(
        transcripts, [(row[0], row[1]) for row in transcript_rows], {row[0] for row in transcript_rows}
    )
    transcript_check["by_status"] = dict(Counter(row[2] for row in transcript_rows))
    failed = transcript_check["by_status"].get("error", 0)
    ok = (
        not memory_check["missing"]
        and not memory_check["duplicates"]
        and not transcript_check["missing"]
        and not transcript_check["duplicates"]
        and not failed
    )
    return {"ok": ok, "drain": drained, "memories": memory_check, "transcripts": transcript_check}


# -- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoakOptions:
    duration: float = 600.0
    rate: float = 50.0
    clients: int = 4
    concurrency: int = 8
    interval: float = 30.0
    mix: dict[str, float] = field(default_factory=lambda: {k: float(v) for k, v in DEFAULT_MIX.items()})
    batch_size: int = 10
    # The data set (bench/http_load.py's: the same defaults share its data directory's).
    memories: int = SuiteOptions.memories
    users: int = SuiteOptions.users
    seed: int = SEED
    port: int = DEFAULT_PORT
    data_dir: Path = DEFAULT_DATA_DIR
    workers: int | None = None
    client: str = "stdlib"
    flat_percent: float = 10.0
    drain_timeout: float = 120.0
    out: Path = BENCH / "results" / "soak.json"


@dataclass
class Load:
    """What the load did, as the workers reported it."""

    total: Tally
    intervals: list[dict[str, Any]]
    samples: list[MemorySample]
    acks: list[list[Any]]
    errors: list[str]
    sent: int
    seconds: float
    # When the load began (time.time()): memory samples' `at` counts from it.
    start_at: float


def _reader(index: int, process: subprocess.Popen[str], events: queue.Queue[tuple[int, dict[str, Any]]]) -> None:
    try:
        while True:
            message = json.loads(LoadGenerator.readline(process))
            events.put((index, message))
            if message["done"]:
                return
    except RuntimeError as error:  # the worker died: its traceback is on stderr
        events.put((index, {"failed": str(error)}))


def drive(server: Server, options: SoakOptions, data: DataSet, nonce: str, memory: ServerMemory) -> Load:
    transcripts = [json.loads(path.read_text())["session_data"] for path in sorted(TRANSCRIPTS.glob("*.json"))]
    generator = LoadGenerator(server.url, server.key, options.clients, options.client, script=Path(__file__).resolve())
    try:
        # Every worker has read its spec and made its first request ready by then.
        start_at = time.time() + 1.0 + 0.1 * options.clients
        for index, process in enumerate(generator.processes):
            spec = {
                "index": index,
                "clients": options.clients,
                "rate": options.rate,
                "start_at": start_at,
                "duration": options.duration,
                "concurrency": options.concurrency,
                "mix": options.mix,
                "data": asdict(data),
                "nonce": nonce,
                "seed": options.seed,
                "batch_size": options.batch_size,
                # The run's writes outlive it and its check, then expire (the data set keeps its size).
                "ttl_seconds": int(options.duration + options.drain_timeout + 3600),
                "transcripts": transcripts,
            }
            assert process.stdin is not None
            process.stdin.write(json.dumps(spec) + "\n")
            process.stdin.flush()
        events: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
        for index, process in enumerate(generator.processes):
            threading.Thread(target=_reader, args=(index, process, events), daemon=True).start()
        return _collect(events, options, memory, start_at)
    finally:
        generator.close()


def _collect(
    events: queue.Queue[tuple[int, dict[str, Any]]], options: SoakOptions, memory: ServerMemory, start_at: float
) -> Load:
    """Merge the workers' reports; sample memory, print an interval's report and the progress line on time."""
    total, interval = Tally(), Tally()
    intervals: list[dict[str, Any]] = []
    samples = [memory.sample(time.time() - start_at)]
    acks: list[list[Any]] = []
    errors: list[str] = []
    sent = dict.fromkeys(range(options.clients), 0)
    in_flight = dict.fromkeys(range(options.clients), 0)
    done: set[int] = set()
    # Memory every few seconds until the load ends (a server behind its schedule answers
    # after --duration), and at the end of the first quarter: the flat rule's baseline.
    every = min(5.0, options.interval)
    sample_at = min(every, options.duration / 4)
    quarter_sampled = False
    # Reports at the interval boundaries; the last stretch is reported when the load ends. A boundary
    # at or after --duration waits a little: the last requests' answers, not a report of a few of them.
    report_at = options.interval

    def report_due() -> float:
        return report_at + (2 * FLUSH_SECONDS if report_at >= options.duration else 0.0)

    interval_started = 0.0
    progress_at = 1.0
    tty = sys.stderr.isatty()
    ended = 0.0
    while len(done) < options.clients:
        now = time.time() - start_at
        try:
            index, message = events.get(timeout=max(0.01, min(sample_at, report_due(), progress_at) - now))
        except queue.Empty:
            pass
        else:
            if "failed" in message:
                raise RuntimeError(f"load generator {index}: {message['failed']}")
            for operation, milliseconds, outcome, late in message["samples"]:
                total.add(operation, milliseconds, outcome, late)
                interval.add(operation, milliseconds, outcome, late)
            acks.extend(message["acks"])
            errors.extend(message["errors"][: max(0, 20 - len(errors))])
            sent[index], in_flight[index] = message["sent"], message["in_flight"]
            if message["done"]:
                done.add(index)
                ended = time.time() - start_at
        now = time.time() - start_at
        if now >= sample_at:
            samples.append(memory.sample(now))
            quarter_sampled = quarter_sampled or now >= options.duration / 4
            sample_at = (now // every + 1) * every
            if not quarter_sampled:
                sample_at = min(sample_at, options.duration / 4)
        if now >= report_due():
            if tty:
                print("\r\033[K", end="", file=sys.stderr)
            intervals.append(_interval(interval, interval_started, now, options, samples[-1], sum(in_flight.values())))
            interval, interval_started = Tally(), now
            report_at += options.interval
        if now >= progress_at:
            if tty:
                print(
                    f"\r\033[K[soak] {now:4.0f}/{options.duration:.0f} s  sent {sum(sent.values()):,}  "
                    f"answered {total.requests:,}  errors {sum(total.errors().values())}  "
                    f"in flight {sum(in_flight.values())}  server RSS {_mb(samples[-1].rss['total'])}",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
            progress_at = now + 1.0
    if tty:
        print("\r\033[K", end="", file=sys.stderr)
    # The flat rule's end: memory as the load stops, before the background work drains.
    samples.append(memory.sample(ended))
    if interval.requests:
        intervals.append(_interval(interval, interval_started, ended, options, samples[-1], 0))
    return Load(total, intervals, samples, acks, errors, sum(sent.values()), ended, start_at)


def _interval(
    tally: Tally, started: float, ended: float, options: SoakOptions, sample: MemorySample, in_flight: int
) -> dict[str, Any]:
    """Print an interval's report; its record for the JSON."""
    print(interval_report(tally, started, ended, options.duration, sample, in_flight), flush=True)
    seconds = max(ended - started, 1e-9)
    return {
        "start": round(started, 1),
        "end": round(ended, 1),
        "requests": tally.requests,
        "in_flight": in_flight,
        "throughput": round(tally.requests / seconds, 2),
        "errors": dict(tally.errors()),
        "operations": {
            row.operation: {
                "requests": row.extra["requests"],
                "errors": row.extra["errors"],
                "p50_ms": row.p50_ms,
                "p95_ms": row.p95_ms,
                "p99_ms": row.p99_ms,
            }
            for row in tally.results(seconds)
        },
        "memory": sample.as_dict(),
    }


def verdict(load: Load, memory: dict[str, Any], writes: dict[str, Any] | None) -> dict[str, Any]:
    errors = load.total.errors()
    parts = [
        f"{sum(errors.values())} errors in {load.total.requests:,} requests"
        + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(errors.items()))})" if errors else "")
    ]
    parts.append(
        f"memory {'flat' if memory['flat'] else 'NOT flat'} (server RSS {memory['growth_percent']:+.1f} % from "
        f"{memory['baseline_at']:.0f} s to {memory['end_at']:.0f} s, limit {memory['limit_percent']:g} %)"
    )
    if writes is None:
        parts.append("writes not checked (no database URL)")
        writes_ok = False
    else:
        memories, transcripts, drain_ = writes["memories"], writes["transcripts"], writes["drain"]
        parts.append(
            f"{memories['acknowledged']:,} acknowledged memory writes: {memories['missing']} missing, "
            f"{memories['duplicates']} duplicated; {transcripts['acknowledged']:,} transcripts: "
            f"{transcripts['missing']} missing, {transcripts['duplicates']} duplicated, "
            f"{transcripts['by_status'].get('error', 0)} failed"
        )
        parts.append(
            f"background work drained in {drain_['seconds']:.0f} s"
            if drain_["drained"]
            else f"background work NOT drained after {drain_['seconds']:.0f} s "
            f"({drain_['memories_without_vector']} without vector, {drain_['transcripts_not_processed']} transcripts)"
        )
        writes_ok = writes["ok"] and drain_["drained"]
    passed = not errors and memory["flat"] and writes_ok
    return {
        "pass": passed,
        "no_errors": not errors,
        "memory_flat": memory["flat"],
        "writes_ok": writes_ok,
        "line": f"verdict: {'PASS' if passed else 'FAIL'}: " + "; ".join(parts),
    }


def run(options: SoakOptions) -> dict[str, Any]:
    suite = SuiteOptions(memories=options.memories, users=options.users)
    nonce = f"{int(time.time()):x}"
    begun = datetime.now(UTC)
    with started_server(options.port, options.data_dir, options.workers, data_account(suite, options.seed)) as server:
        assert server.pid is not None
        with api_client(server) as client:
            loaded = load_data(server, client, suite, options.seed)
            wait_for_preload(client, trigger=loaded)
            data = sample_data_set(client, options.users, 0, random.Random(options.seed))
        _log(f"warming up (the model in every process); then {options.duration:.0f} s at {options.rate:g} req/s")
        warmer = LoadGenerator(server.url, server.key, options.clients, options.client)
        try:
            warm_up(warmer, server, options.clients, data, nonce)
        finally:
            warmer.close()
        memory = ServerMemory(server.pid, server.database_url)
        try:
            load = drive(server, options, data, nonce, memory)
            _log(f"load done; waiting for its background work (at most {options.drain_timeout:.0f} s) and checking")
            writes = (
                check_writes(server.database_url, nonce, load.acks, options.drain_timeout)
                if server.database_url
                else None
            )
            after = memory.sample(time.time() - load.start_at)
        finally:
            memory.close()
    flat = memory_verdict(load.samples, options.duration, options.flat_percent)
    judged = verdict(load, flat, writes)
    late = percentiles(load.total.late) if load.total.late else (0.0, 0.0, 0.0)
    return {
        "machine": machine(),
        "options": {**asdict(options), "data_dir": str(options.data_dir), "out": str(options.out)},
        "started": begun.isoformat(timespec="seconds"),
        "nonce": nonce,
        "load_seconds": round(load.seconds, 2),
        "sent": load.sent,
        "offered_rate": round(load.sent / options.duration, 2),
        "requests": load.total.requests,
        "throughput": round(load.total.requests / load.seconds, 2) if load.seconds else None,
        "errors": {
            "total": sum(load.total.errors().values()),
            "by_status": dict(load.total.errors()),
            "examples": load.errors,
        },
        "sent_late_ms": {"p50": late[0], "p95": late[1], "p99": late[2], "max": max(load.total.late, default=0.0)},
        "operations": [row.as_dict() for row in load.total.results(load.seconds)],
        "intervals": load.intervals,
        "memory": {
            "samples": [s.as_dict() for s in load.samples],
            "after_drain": after.as_dict(),
            "flat": flat,
        },
        "writes": writes,
        "verdict": judged,
    }


def summary(report: dict[str, Any]) -> str:
    """The end of the run in text: the table, errors, memory over time, the writes' check, the verdict."""
    rows = [Result(**row) for row in report["operations"]]
    lines = [
        "",
        f"{report['requests']:,} requests in {report['load_seconds']:.0f} s: {report['throughput']:.1f}/s "
        f"(offered {report['offered_rate']:.1f}/s); sent late p99 {report['sent_late_ms']['p99']:.1f} ms",
        table(rows),
        f"errors: {report['errors']['total']}"
        + "".join(f"\n  {status}: {count}" for status, count in sorted(report["errors"]["by_status"].items()))
        + "".join(f"\n  e.g. {example}" for example in report["errors"]["examples"][:5]),
        "",
        "memory over time (server RSS by kind; PSS; Redis used_memory; PostgreSQL database):",
    ]
    flat, samples = report["memory"]["flat"], report["memory"]["samples"]
    # The start, the flat rule's baseline, each report's, and the end.
    baseline = [sample for sample in samples if sample["at"] == flat["baseline_at"]]
    shown = [samples[0], *baseline, *(interval["memory"] for interval in report["intervals"]), samples[-1]]
    header = ("at s", "RSS total", *KINDS, "PSS total", "Redis", "PostgreSQL")
    cells = [header] + [
        (
            f"{sample['at']:.0f}",
            _mb(sample["rss"]["total"]),
            *(_mb(sample["rss"][kind]) for kind in KINDS),
            _mb(sample["pss"]["total"]),
            _mb(sample["redis_used_memory"]),
            _mb(sample["database_bytes"]),
        )
        # One a second at most: the end's sample may fall on a report's.
        for sample in sorted({f"{sample['at']:.0f}": sample for sample in shown}.values(), key=lambda s: s["at"])
    ]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    lines += ["  " + "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in cells]
    lines.append(
        f"flat rule: {flat['rule']}: {flat['growth_percent']:+.2f} %; beside it, PSS {flat['pss_growth_percent']} %, "
        f"Redis {flat['redis_growth_percent']} %, PostgreSQL {flat['database_growth_percent']} %; "
        f"gunicorn workers replaced: {flat['gunicorn_workers_replaced']}"
    )
    writes = report["writes"]
    if writes is not None:
        memories, transcripts = writes["memories"], writes["transcripts"]
        lines.append(
            f"writes: {memories['acknowledged']:,} memories acknowledged ({memories['merged']} merged into an existing "
            f"one): {memories['missing']} missing, {memories['duplicates']} duplicated, "
            f"{memories['stored_unacknowledged']} stored without a 2xx; {transcripts['acknowledged']:,} transcripts: "
            f"{transcripts['missing']} missing, {transcripts['duplicates']} duplicated, by status "
            f"{transcripts['by_status']}; drain {writes['drain']}"
        )
    lines.append(report["verdict"]["line"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    defaults = SoakOptions()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=parse_duration, default=defaults.duration, help="600, 600s, 10m, 1h")
    parser.add_argument("--rate", type=float, default=defaults.rate, help="requests per second, all clients")
    parser.add_argument("--clients", type=int, default=defaults.clients, help="load-generator processes")
    parser.add_argument(
        "--concurrency", type=int, default=defaults.concurrency, help="requests in flight per client at most"
    )
    parser.add_argument("--interval", type=float, default=defaults.interval, help="seconds between reports")
    parser.add_argument(
        "--mix",
        type=parse_mix,
        default=defaults.mix,
        help=f"weights of {', '.join(OPERATIONS)} (unnamed: 0); default "
        + ",".join(f"{k}={v}" for k, v in DEFAULT_MIX.items()),
    )
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="memories per batch write")
    parser.add_argument("--memories", type=int, default=defaults.memories, help="of the data set")
    parser.add_argument("--users", type=int, default=defaults.users, help="of the data set")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="the data set's (a new one for another)")
    parser.add_argument("--port", type=int, default=defaults.port, help="of the server started here")
    parser.add_argument("--data-dir", type=Path, default=defaults.data_dir, help="its embedded servers' data")
    parser.add_argument("--workers", type=int, help="its gunicorn workers (WEB_CONCURRENCY; default as make run)")
    parser.add_argument("--client", choices=("stdlib", "httpx"), default=defaults.client, help="the clients' HTTP")
    parser.add_argument("--flat-percent", type=float, default=defaults.flat_percent, help="the flat rule's limit")
    parser.add_argument(
        "--drain-timeout", type=float, default=defaults.drain_timeout, help="seconds to wait for background work"
    )
    parser.add_argument("--out", type=Path, default=defaults.out, help="the JSON report")
    parser.add_argument("--check", action="store_true", help="exit 1 when the verdict is FAIL")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.clients < 1 or args.concurrency < 1 or args.interval <= 0 or args.batch_size < 1:
        parser.error("--rate, --clients, --concurrency, --interval and --batch-size must be positive")
    options = SoakOptions(
        duration=args.duration,
        rate=args.rate,
        clients=args.clients,
        concurrency=args.concurrency,
        interval=args.interval,
        mix=args.mix,
        batch_size=args.batch_size,
        memories=args.memories,
        users=args.users,
        seed=args.seed,
        port=args.port,
        data_dir=args.data_dir,
        workers=args.workers,
        client=args.client,
        flat_percent=args.flat_percent,
        drain_timeout=args.drain_timeout,
        out=args.out,
    )
    report = run(options)
    print(summary(report), flush=True)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    _log(f"wrote {options.out}")
    return 1 if args.check and not report["verdict"]["pass"] else 0


if __name__ == "__main__":
    if sys.argv[1:] == [WORKER_FLAG]:
        _worker_main()
    else:
        raise SystemExit(main())
