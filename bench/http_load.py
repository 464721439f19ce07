"""End-to-end HTTP benchmarks against the production server (issue 7).

    .venv/bin/python bench/http_load.py [--clients 8] [--repeat 300] [--seconds 6]
                                        [--users 1000] [--memories 100000] [--client stdlib|httpx]
    .venv/bin/python bench/http_load.py --url http://127.0.0.1:8000 --key KEY [--database-url URL]

Starts the server exactly as `make run` does (`python -m memoryproject.run`:
gunicorn and the django-q2 cluster, on their own embedded PostgreSQL and Valkey
in --data-dir, so the default .data/ stack is left alone), loads the data set
once (kept in the data directory for the next run), and drives it over HTTP
from separate load-generator processes (bench/http_load.py --worker), each a
sequence of requests on its own HTTP client. With --url and --key it measures
an already running server instead.

Each operation is measured twice: one client (sequential requests: latency) and
--clients clients at once, each making up to --repeat requests for at most
--seconds (saturation: requests per second). Printed per operation: p50, p95
and p99 of the latency the client sees, requests per second, and database
statements per request. Latency targets (issue 7) are judged at one client,
throughput targets at saturation; "batch store of 100 <= 250 ms" as its p50.
A first `GET /health` row is the floor every request pays.

Honest-measurement notes:
- gunicorn's sync worker closes the connection after every response (it
  ignores `keepalive`), so each request pays a TCP connect to 127.0.0.1; each
  client keeps one connection object, which reconnects. The clients use
  http.client by default: httpx costs ~0.5 ms more per request (p50, measured
  here on GET /health: 1.45 against 0.98 ms), time and CPU the server would be
  charged with; --client httpx measures with it.
- Statements per request come from pg_stat_statements: the engine is Django's
  plain PostgreSQL backend (not django_prometheus's wrapper), so /metrics has no
  django_db_execute_total. On the benchmark's own data directory the library is
  enabled in postgresql.conf; against --url it needs --database-url and a server
  that loads it, else the column is empty. Counted apart, in `extra`:
  transaction control (BEGIN, COMMIT, SAVEPOINT), PostgreSQL's own foreign-key
  checks, and the job cluster's queue work (its broker polls the database
  twice a second), all but the requests' own enqueues. Background work that
  requests cause while they are measured (the embedding of async stores, an
  access-count flush) is in the count: see `slowest`.
- "Cache hit" ids were read beforehand by every client (both tiers warm);
  "cache miss" ids were never read in this run and are old, unimportant,
  unpinned, rarely read memories of the heaviest users, which preloading (at
  most 100 a user) leaves out: the read goes to PostgreSQL. /metrics' cache
  counters for each measured window are kept in `extra`, as proof.
- Users are picked in proportion to 1/rank (the generator's users are ranked
  by their memories): heavy users are the busy ones.
- Writes are new memories: never the same text twice (~30 million
  combinations, drawn afresh each run), so not duplicates that the service
  would merge into an existing one (a 200, another path: `statuses` in
  `extra` shows any). They carry ttl_seconds (an hour), so repeated runs do
  not grow the data set.
- Server-side time per request (django-prometheus' per-view histogram, the
  view alone) is kept in `extra` beside the client's: the difference is
  gunicorn, the middleware, the socket and the client.
- Everything shares this machine's cores: the load generators' CPU is taken
  from the server's.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from results import Result, SuiteOptions, latency, table

BASE_DIR = Path(__file__).resolve().parent.parent
GROUP = "http"
DEFAULT_PORT = int(os.environ.get("BENCH_HTTP_PORT", "8701"))
# Beside the embedded servers' data of this checkout (MEMORYPROJECT_DATA_DIR, .data by default).
_DATA = Path(os.environ.get("MEMORYPROJECT_DATA_DIR", BASE_DIR / ".data"))
DEFAULT_DATA_DIR = _DATA / "bench-http"
# The account the benchmark's data set lives in (on the benchmark's own server).
ACCOUNT = "httpbench"
# The data set's (the generator's --seed); bench/recall.py uses the same, so
# the two generate the same texts and share one cache of their vectors.
SEED = 1
# The vectors generate_memories keeps (memories.generate.default_cache_path of
# the default data directory): the data set's texts are embedded once, not
# once for this benchmark's own data directory and again for recall's.
VECTOR_CACHE = _DATA / "generated-vectors.sqlite3"
NAMESPACE = "default"
START_TIMEOUT = 300.0
STOP_TIMEOUT = 40.0
# Bench writes expire, so that the data set stays the size it was generated at.
WRITE_TTL_SECONDS = 3600
# The async-store poller's period: the resolution of "vector-searchable after".
POLL_SECONDS = 0.05
WORKER_FLAG = "--worker"
_URL_VARIABLE = "HTTPBENCH_URL"
_KEY_VARIABLE = "HTTPBENCH_KEY"
_CLIENT_VARIABLE = "HTTPBENCH_CLIENT"
# Straight to the server: an HTTP(S)_PROXY from the environment must not be asked.
_HTTP_OPTIONS: dict[str, Any] = {"timeout": 120.0, "trust_env": False}

# -- requests and the load-generator processes ----------------------------------

# One request: method, path with query string, JSON body or None, and whether
# to keep the `id` of its answer with the time it arrived (async stores).
Call = tuple[str, str, str | None, bool]


def get(path: str, **params: object) -> Call:
    return ("GET", f"{path}?{urlencode(params)}" if params else path, None, False)


def post(path: str, body: object, *, capture: bool = False) -> Call:
    return ("POST", path, json.dumps(body), capture)


class _Stdlib:
    """http.client: a third of httpx's cost per request on this machine (~0.5 ms less at p50),
    time and CPU that would otherwise count against the server. Reconnects by itself."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        address = urlsplit(url)
        self.connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=120)
        self.headers = headers

    def request(self, method: str, path: str, body: str | None) -> tuple[int, bytes]:
        try:
            self.connection.request(method, path, body=body.encode() if body else None, headers=self.headers)
            response = self.connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.connection.close()
            raise


class _Httpx:
    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.client = httpx.Client(base_url=url, headers=headers, **_HTTP_OPTIONS)

    def request(self, method: str, path: str, body: str | None) -> tuple[int, bytes]:
        response = self.client.request(method, path, content=body)
        return response.status_code, response.content


HttpClient = _Stdlib | _Httpx
CLIENTS: dict[str, Callable[[str, dict[str, str]], HttpClient]] = {"stdlib": _Stdlib, "httpx": _Httpx}
# What a request that got no answer raises, with either client.
REQUEST_ERRORS = (OSError, http.client.HTTPException, httpx.HTTPError)


def worker_client() -> HttpClient:
    """A new client of a load-generator process, for the server and key LoadGenerator gave it."""
    headers = {"Authorization": f"Bearer {os.environ[_KEY_VARIABLE]}", "Content-Type": "application/json"}
    return CLIENTS[os.environ[_CLIENT_VARIABLE]](os.environ[_URL_VARIABLE], headers)


def _worker_main() -> None:
    """A load-generator process: runs the batches of calls the parent sends on stdin, answers on stdout."""
    client = worker_client()
    for line in sys.stdin:
        job = json.loads(line)
        sys.stdout.write(json.dumps(_execute(client, job)) + "\n")
        sys.stdout.flush()


def _execute(client: HttpClient, job: dict[str, Any]) -> dict[str, Any]:
    start_at: float = job["start_at"]
    stop_at: float | None = job["stop_at"]
    # Every client starts at the same instant, for a fair requests-per-second.
    time.sleep(max(0.0, start_at - time.time()))
    samples: list[float] = []
    statuses: Counter[int] = Counter()
    captured: list[tuple[str, float]] = []
    errors: list[str] = []
    for method, path, body, capture in job["calls"]:
        if stop_at is not None and time.time() >= stop_at:
            break
        started = time.perf_counter()
        try:
            status, content = client.request(method, path, body)
        except REQUEST_ERRORS as error:
            errors.append(f"{type(error).__name__}: {error}")
            continue
        samples.append((time.perf_counter() - started) * 1000)
        statuses[status] += 1
        if capture and 200 <= status < 300:
            captured.append((json.loads(content)["id"], time.time()))
        if status >= 500 and len(errors) < 5:
            errors.append(f"{status}: {content[:200]!r}")
    return {
        "samples": samples,
        "statuses": dict(statuses),
        "captured": captured,
        "errors": errors[:5],
        "ended": time.time(),
    }


@dataclass
class Outcome:
    """What the clients of one measurement did, merged."""

    samples: list[float]
    statuses: Counter[int]
    captured: list[tuple[str, float]]
    errors: list[str]
    seconds: float

    @property
    def requests(self) -> int:
        return len(self.samples)


class LoadGenerator:
    """`clients` processes of bench/http_load.py --worker: no Django, only an HTTP client (CLIENTS).

    Another script's workers with `script` (bench/soak.py): started with WORKER_FLAG, they speak
    their own protocol on stdin and stdout and build their clients with worker_client().
    """

    def __init__(self, url: str, key: str, clients: int, client: str, script: Path | None = None) -> None:
        environ = {**os.environ, _URL_VARIABLE: url, _KEY_VARIABLE: key, _CLIENT_VARIABLE: client}
        self.processes = [
            subprocess.Popen(
                [sys.executable, str(script or Path(__file__).resolve()), WORKER_FLAG],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=environ,
                text=True,
            )
            for _ in range(clients)
        ]

    def run(self, plans: Sequence[Sequence[Call]], seconds: float | None = None) -> Outcome:
        """plans[i] on client i, all starting together; each stops after `seconds` if given."""
        if len(plans) > len(self.processes):
            raise ValueError(f"{len(plans)} plans for {len(self.processes)} clients")
        # Long enough for every process to have read its (possibly large) plan.
        start_at = time.time() + 0.2 + 0.02 * len(plans)
        stop_at = start_at + seconds if seconds is not None else None
        busy = self.processes[: len(plans)]
        for process, plan in zip(busy, plans, strict=True):
            assert process.stdin is not None
            process.stdin.write(json.dumps({"calls": plan, "start_at": start_at, "stop_at": stop_at}) + "\n")
            process.stdin.flush()
        answers = [json.loads(self.readline(process)) for process in busy]
        merged = Outcome(samples=[], statuses=Counter(), captured=[], errors=[], seconds=0.0)
        for answer in answers:
            merged.samples.extend(answer["samples"])
            merged.statuses.update({int(code): count for code, count in answer["statuses"].items()})
            merged.captured.extend((memory_id, at) for memory_id, at in answer["captured"])
            merged.errors.extend(answer["errors"])
        merged.seconds = max(answer["ended"] for answer in answers) - start_at
        return merged

    @staticmethod
    def readline(process: subprocess.Popen[str]) -> str:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator {process.pid} exited with {process.wait()}")
        return line

    def close(self) -> None:
        for process in self.processes:
            assert process.stdin is not None
            with contextlib.suppress(OSError):
                process.stdin.close()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- the server -------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    url: str
    # The key of the account the data set lives in.
    key: str
    # For pg_stat_statements (None: statements per request are not counted).
    database_url: str | None
    # The environment in which `manage.py` reaches the server's database and
    # cache (None against --url: no command is run there).
    manage_env: dict[str, str] | None
    # The server's own process (memoryproject.run: the parent of gunicorn and
    # the job cluster), None against --url.
    pid: int | None = None
    # The database is the bench's own embedded one (its data directory), not DATABASE_URL's.
    own_database: bool = False


def api_client(server: Server) -> httpx.Client:
    """This process's own client of the server (not a load generator's), with the data set's key."""
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, **_HTTP_OPTIONS)


# Run inside the suite, Django's logging would print every request httpx makes here.
logging.getLogger("httpx").setLevel(logging.WARNING)


def _log(message: str) -> None:
    print(f"[http] {message}", file=sys.stderr, flush=True)


def _embedded_database_url(data_dir: Path) -> str:
    """The URL memoryproject.embedded gives its PostgreSQL, from its postmaster.pid (port, socket directory)."""
    lines = (data_dir / "postgres" / "postmaster.pid").read_text().splitlines()
    return f"postgresql://postgres@/memoryproject?host={lines[4]}&port={lines[3]}"


_STATEMENTS_LINE = "shared_preload_libraries = 'pg_stat_statements'  # bench/http_load.py"


def _enable_statement_stats(data_dir: Path, environ: dict[str, str]) -> None:
    """Have the benchmark's own PostgreSQL load pg_stat_statements (takes effect when it next starts)."""
    pgdata = data_dir / "postgres"
    if not (pgdata / "PG_VERSION").exists():
        # The first start creates the cluster: do that now (a command attaches
        # the embedded stack, then stops it as it exits) to configure it first.
        subprocess.run([sys.executable, "manage.py", "check"], cwd=BASE_DIR, env=environ, check=True)
    config = pgdata / "postgresql.conf"
    if _STATEMENTS_LINE not in config.read_text():
        with config.open("a") as file:
            file.write(f"\n{_STATEMENTS_LINE}\n")


def _manage(environ: dict[str, str], *args: str) -> str:
    """`manage.py ARGS` against the server's database and cache; its stdout."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=environ, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {args[0]} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout.strip()


def _wait_ready(url: str, process: subprocess.Popen[bytes] | None, log: Path | None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    with httpx.Client(**_HTTP_OPTIONS) as client:
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode} while starting; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{url}/ready", timeout=5).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url}/ready did not answer 200 within {START_TIMEOUT:.0f} s; see {log}")
            time.sleep(0.25)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """As Ctrl-C would: SIGTERM to run.py alone, which stops gunicorn and the cluster in order
    (and, as the last process attached, the embedded servers); the group is killed only after STOP_TIMEOUT."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _log("the server did not stop in time; killing its process group")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def started_server(port: int, data_dir: Path, workers: int | None, account: str) -> Iterator[Server]:
    """`make run` on `port` with its data in `data_dir`, and a key of `account`; stopped on exit."""
    data_dir = data_dir.resolve()
    environ = {**os.environ, "PORT": str(port), "MEMORYPROJECT_DATA_DIR": str(data_dir)}
    if workers is not None:
        environ["WEB_CONCURRENCY"] = str(workers)
    data_dir.mkdir(parents=True, exist_ok=True)
    own_database = not environ.get("DATABASE_URL")
    if own_database:
        _enable_statement_stats(data_dir, environ)
    log = data_dir / "server.log"
    url = f"http://127.0.0.1:{port}"
    _log(f"starting the server on {url} (data in {data_dir}, output in {log})")
    with log.open("ab") as output:
        # Its own session, as a terminal's `make run` is apart from this one:
        # signals for this process do not reach it, and its group can be killed.
        process = subprocess.Popen(
            [sys.executable, "-m", "memoryproject.run"],
            cwd=BASE_DIR,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(url, process, log)
        database_url = _embedded_database_url(data_dir) if own_database else environ["DATABASE_URL"]
        # The account is created with its first key.
        key = _manage(environ, "create_api_key", f"httpbench-{time.time_ns()}", "--account", account)
        yield Server(
            url=url, key=key, database_url=database_url, manage_env=environ, pid=process.pid, own_database=own_database
        )
    finally:
        _stop(process)
        _log(f"stopped the server (exit code {process.returncode})")


# -- what the server reports: statements, /metrics --------------------------------


# Per statement (pg_stat_statements' normalised text): calls and milliseconds executing.
Snapshot = dict[str, tuple[float, float]]
# django-q2's ORM broker and monitor: polling, task results, schedules. Not the
# requests' work, but for their enqueues (async stores).
_JOB_QUEUE = re.compile(r'"django_q_')
_ENQUEUE = re.compile(r'^\s*INSERT INTO "django_q_ormq"')
_CONTROL = re.compile(r"^\s*(begin|commit|rollback|savepoint|release|start transaction)\b", re.IGNORECASE)
# PostgreSQL's own foreign-key checks (SELECT 1 FROM ONLY ... FOR KEY SHARE): Django
# declares its foreign keys DEFERRABLE INITIALLY DEFERRED, so they run at COMMIT,
# where pg_stat_statements sees them as statements; no client sent them.
_FOREIGN_KEY_CHECK = re.compile(r"^\s*SELECT \S+ FROM ONLY \"")


@dataclass(frozen=True)
class StatementUse:
    """What the requests of one measurement made PostgreSQL do."""

    # What the server sent, less the rest.
    statements: float
    # BEGIN, COMMIT, SAVEPOINT...: round trips too, counted apart.
    control: float
    foreign_key_checks: float
    job_queue: float
    # Time PostgreSQL spent executing all of them.
    milliseconds: float
    # The statements that took the most time: (milliseconds, calls, text).
    top: list[tuple[float, float, str]]


class StatementCounter:
    """Statements PostgreSQL ran in the server's database, from pg_stat_statements.

    The difference of two snapshots is what happened between them, sorted by
    kind (StatementUse). This counter's own queries are left out.
    """

    _SQL = """
        SELECT s.query, sum(s.calls)::float8, sum(s.total_exec_time)::float8
        FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
        WHERE d.datname = current_database() AND s.query NOT LIKE '%pg_stat_statements%'
        GROUP BY s.query
    """

    def __init__(self, database_url: str) -> None:
        import psycopg

        self.connection = psycopg.connect(database_url, autocommit=True)
        # Not allowed for every role; the library may be there all the same: the snapshot says.
        with contextlib.suppress(psycopg.Error):
            self.connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        self.snapshot()

    @classmethod
    def connect(cls, database_url: str | None) -> StatementCounter | None:
        if database_url is None:
            return None
        import psycopg

        try:
            return cls(database_url)
        except psycopg.Error as error:
            _log(f"statements per request are not counted: {str(error).strip()}")
            return None

    def snapshot(self) -> Snapshot:
        return {query: (calls, ms) for query, calls, ms in self.connection.execute(self._SQL).fetchall()}

    @staticmethod
    def caused(before: Snapshot, after: Snapshot) -> StatementUse:
        """What ran between two snapshots, by kind."""
        grown = {
            query: (calls - before.get(query, (0.0, 0.0))[0], ms - before.get(query, (0.0, 0.0))[1])
            for query, (calls, ms) in after.items()
        }

        def count(kind: Callable[[str], bool]) -> float:
            return sum(calls for query, (calls, _) in grown.items() if kind(query))

        control = count(lambda query: bool(_CONTROL.match(query)))
        checks = count(lambda query: bool(_FOREIGN_KEY_CHECK.match(query)))
        queue = count(lambda query: bool(_JOB_QUEUE.search(query)) and not _ENQUEUE.match(query))
        return StatementUse(
            statements=sum(calls for calls, _ in grown.values()) - control - checks - queue,
            control=control,
            foreign_key_checks=checks,
            job_queue=queue,
            milliseconds=sum(ms for _, ms in grown.values()),
            top=sorted(((ms, calls, query) for query, (calls, ms) in grown.items() if calls > 0), reverse=True)[:5],
        )

    def close(self) -> None:
        self.connection.close()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def scrape(client: httpx.Client) -> dict[str, float]:
    """The server's /metrics: every sample, keyed by name and labels as written."""
    samples: dict[str, float] = {}
    for line in client.get("/metrics").text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def _delta(before: dict[str, float], after: dict[str, float], name: str, **labels: str) -> float:
    """The growth of `name`'s samples whose labels include `labels` (summed over the rest)."""
    wanted = [f'{label}="{value}"' for label, value in labels.items()]
    total = 0.0
    for key, value in after.items():
        if key.split("{", 1)[0] == name and all(item in key for item in wanted):
            total += value - before.get(key, 0.0)
    return total


def _cache_counts(before: dict[str, float], after: dict[str, float], kind: str) -> dict[str, int]:
    return {
        f"{outcome}_{tier}": round(_delta(before, after, f"memory_cache_{outcome}_total", type=kind, tier=tier))
        for outcome in ("hits", "misses")
        for tier in ("l1", "l2")
    }


# -- the data set -----------------------------------------------------------------

# Words for the contents and queries made here (the data set itself comes
# from the generator where it can run). Six slots, ~30 million combinations:
# writes must be new memories, not near-duplicates that the service merges
# (cosine >= 0.95 updates the existing one: another code path).
_NAMES = (
    "Anna", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemal", "Lena",
    "Marco", "Nadia", "Oscar", "Priya", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wei", "Yusuf", "Zoe",
    "Amir", "Chen", "Emma", "Felix", "Ida", "Luca",
)  # fmt: skip
_RELATIVES = (
    "sister", "manager", "neighbour", "best friend", "son", "dentist", "landlord", "cousin", "coach",
    "grandmother", "new colleague", "partner",
)  # fmt: skip
_VERBS = (
    "loves", "cannot stand", "is learning", "recommended", "keeps talking about", "forgot about",
    "wants to try", "booked", "cancelled", "is allergic to", "collects", "complained about",
)  # fmt: skip
_THINGS = (
    "Italian cooking", "night trains", "jazz records", "the marathon in spring", "vegan recipes",
    "a trip to the coast", "chess openings", "oat milk lattes", "piano lessons", "window seats on flights",
    "the dentist appointment", "mountain hiking", "the quarterly report", "salsa dancing", "board games",
    "birdwatching", "the school play", "sourdough bread", "electric bikes", "Japanese whisky",
)  # fmt: skip
_PLACES = (
    "Lisbon", "Berlin", "Oslo", "Kyoto", "Lima", "Nairobi", "Porto", "Seoul", "Dublin", "Vienna", "Austin",
    "Hanoi", "Krakow", "Toronto", "Athens", "Seville", "Riga", "Cairo", "Zurich", "Bogota", "Milan", "Osaka",
    "Tallinn", "Denver", "Sydney", "Naples", "Boston", "Lyon", "Mumbai", "Prague",
)  # fmt: skip
_WHEN = (
    "last week", "every Sunday", "since the summer", "on Friday", "before the holidays", "this morning",
    "after work", "twice a month", "in March", "on the weekend",
)  # fmt: skip


def sentence(rng: random.Random) -> str:
    return (
        f"{rng.choice(_NAMES)}'s {rng.choice(_RELATIVES)} {rng.choice(_VERBS)} {rng.choice(_THINGS)}"
        f" in {rng.choice(_PLACES)} {rng.choice(_WHEN)}"
    )


def question(rng: random.Random) -> str:
    return (
        f"what does {rng.choice(_NAMES)}'s {rng.choice(_RELATIVES)} think about {rng.choice(_THINGS)}"
        f" in {rng.choice(_PLACES)}"
    )


def fresh(make: Callable[[random.Random], str], suffix: str = "") -> Callable[[random.Random], str]:
    """`make`, never the same text twice (an exact duplicate is merged, a repeated query is cached)."""
    made: set[str] = set()

    def one(rng: random.Random) -> str:
        text = make(rng) + suffix
        while text in made:
            text = make(rng) + suffix
        made.add(text)
        return text

    return one


def user_names(users: int) -> list[str]:
    """The generator's user ids, heaviest first (memories.generate.user_ids; not imported: no Django here)."""
    width = max(5, len(str(users)))
    return [f"user-{rank:0{width}d}" for rank in range(1, users + 1)]


def data_account(options: SuiteOptions, seed: int) -> str:
    """One account per data set: the generator fills only an empty namespace."""
    return f"{ACCOUNT}-{options.users}u-{options.memories}m-s{seed}"


def generator_available() -> bool:
    return (BASE_DIR / "memories" / "management" / "commands" / "generate_memories.py").exists()


def _stored_memories(client: httpx.Client) -> int:
    stats = client.get(f"/api/memory/{NAMESPACE}/stats")
    stats.raise_for_status()
    return int(stats.json()["memories"]["total"])


def settle_reads(server: Server) -> None:
    """Apply the reads counted so far to access_count now (`manage.py flush_access`).

    Sampling lists up to 1,000 memories of each user it looks at, and every
    memory read is counted (memories.access). The scheduled flush of those
    tens of thousands of reads otherwise lands in the first measured windows:
    in one run it ran during the new-query searches, and one search took 1.65 s.
    The measured requests' own reads are flushed as they would be in service.
    """
    if server.manage_env is not None:
        _log(_manage(server.manage_env, "flush_access"))


def load_data(server: Server, client: httpx.Client, options: SuiteOptions, seed: int) -> bool:
    """The data set: `options.memories` memories over `options.users` users of the key's account.

    The one place that decides where the data comes from: the generator
    (`manage.py generate_memories`: a Zipf-like spread, real vectors) where the
    server's database can be reached, else the batch endpoint (an even
    spread). Kept across runs: a data set already there is used as it is.
    True if it was loaded now.
    """
    if server.own_database and server.manage_env is not None:
        # Earlier runs' writes expire within the hour (WRITE_TTL_SECONDS), but
        # the daily retention job seldom runs in a server that lives minutes:
        # without this, expired rows pile up (72,000 after a day of runs), and
        # every search of a user still reads them before filtering them out.
        _log(_manage(server.manage_env, "cleanup"))
        if server.database_url is not None:
            import psycopg

            # Now, not by autovacuum in the middle of the measurements (it
            # vacuums the HNSW index too: seconds of both cores).
            with psycopg.connect(server.database_url, autocommit=True) as connection:
                connection.execute("VACUUM (ANALYZE) memories_memory")
    stored = _stored_memories(client)
    if stored >= options.memories:
        _log(f"data set already there ({stored} memories)")
        return False
    started = time.monotonic()
    if server.manage_env is not None and generator_available() and stored == 0:
        _log(f"generating {options.memories} memories over {options.users} users (manage.py generate_memories)")
        _log(
            _manage(
                server.manage_env,
                "generate_memories",
                *("--users", str(options.users), "--memories", str(options.memories)),
                *("--account", data_account(options, seed), "--namespace", NAMESPACE, "--seed", str(seed)),
                *("--vector-cache", str(VECTOR_CACHE)),
            )
        )
    else:
        _log(f"loading {options.memories - stored} memories over {options.users} users through the batch endpoint")
        rng = random.Random(seed)
        names = user_names(options.users)
        for offset in range(stored, options.memories, 1_000):
            items = [
                {"user_id": names[n % options.users], "content": sentence(rng), "importance": rng.random()}
                for n in range(offset, min(offset + 1_000, options.memories))
            ]
            response = client.post("/memory/memories/batch", json={"memories": items})
            if response.status_code != 201:
                raise RuntimeError(f"loading failed: {response.status_code} {response.text[:300]}")
    _log(f"data set loaded in {time.monotonic() - started:.0f} s")
    return True


def wait_for_preload(client: httpx.Client, *, trigger: bool) -> None:
    """Measure the steady state: preloading done (start-up's, or one asked for after a fresh load)."""
    if trigger:
        client.post("/memory/preload/trigger", json={"all": True}).raise_for_status()
        time.sleep(1)
    deadline = time.monotonic() + START_TIMEOUT
    while client.get("/memory/preload/status").json()["current"]:
        if time.monotonic() > deadline:
            _log("preloading still runs; measuring anyway")
            return
        time.sleep(0.5)


@dataclass
class DataSet:
    # Heaviest first, and how often each is picked: requests follow the
    # memories (Zipf, s = 1), as an agent's heavy users are its busy ones.
    users: list[str]
    weights: list[float]
    # Ids read before each measurement of hits, and the cold ones never read.
    hot_ids: list[str]
    cold_ids: list[str]
    # Users whose lists are read (and warmed).
    hot_users: list[str]

    def pick(self, rng: random.Random) -> str:
        return rng.choices(self.users, cum_weights=self.weights)[0]


# Preloading warms up to 100 memories a user: recent (7 days), frequent (5
# reads), important (> 0.7) or pinned, and the closest to the user's newest.
_PRELOAD_SAFE_AGE_DAYS = 30


def _unlikely_preloaded(memory: dict[str, Any]) -> bool:
    return memory["importance"] <= 0.7 and not memory["pinned"] and memory["access_count"] < 5


def sample(client: httpx.Client, users: int, cold_needed: int, rng: random.Random) -> DataSet:
    """Users to request, hot ids of many users, and cold ids: old, unimportant memories of the
    heaviest users, of which preloading (at most 100 a user) can hold only a few."""
    names = user_names(users)
    weights = list(itertools.accumulate(1 / rank for rank in range(1, users + 1)))
    hot_users = list(dict.fromkeys(rng.choices(names, cum_weights=weights, k=max(1, min(100, users // 5)))))
    hot_ids: list[str] = []
    for name in hot_users[:20]:
        page = client.get("/memory/memories", params={"user_id": name, "limit": 20}).json()["results"]
        # Not an earlier run's writes: they expire within the hour, maybe in the middle of this run.
        hot_ids.extend([memory["id"] for memory in page if memory["expires_at"] is None][:10])
    until = (datetime.now(UTC) - timedelta(days=_PRELOAD_SAFE_AGE_DAYS)).isoformat()
    cold_ids: list[str] = []
    for name in names:
        if len(cold_ids) >= cold_needed:
            break
        page = client.get("/memory/memories", params={"user_id": name, "until": until, "limit": 1000}).json()
        cold_ids.extend(memory["id"] for memory in page["results"] if _unlikely_preloaded(memory))
    return DataSet(users=names, weights=weights, hot_ids=hot_ids, cold_ids=cold_ids, hot_users=hot_users)


# -- the operations ----------------------------------------------------------------

# A request of an operation from (rng, client index, request index); None: no more.
Builder = Callable[[random.Random, int, int], Call | None]


@dataclass(frozen=True)
class Target:
    text: str
    check: Callable[[Result], bool]


@dataclass
class Operation:
    name: str
    build: Builder
    # Statuses that count as success.
    ok: frozenset[int]
    # The view it exercises (django-prometheus's label) for the server-side mean.
    view: str | None = None
    cache: str | None = None
    # Requests are fixed per client; a slow operation gets fewer.
    repeat_share: float = 1.0
    # Read once by every client before measuring (steady state of a cache).
    warm: Callable[[], list[Call]] | None = None
    single_target: Target | None = None
    saturation_target: Target | None = None
    # Async stores: measure the time until each is vector-searchable.
    track_embedding: bool = False
    writer_prefix: str = ""


def _p(result: Result, name: str) -> float:
    value = getattr(result, name)
    return float("inf") if value is None else float(value)


def _latency_target(p50: float, p99: float | None = None) -> Target:
    text = f"p50 <= {p50:g} ms" + (f", p99 <= {p99:g} ms" if p99 is not None else "")
    return Target(text, lambda r: _p(r, "p50_ms") <= p50 and (p99 is None or _p(r, "p99_ms") <= p99))


def _throughput_target(rate: float) -> Target:
    return Target(f">= {rate:,.0f} req/s", lambda r: (r.throughput or 0.0) >= rate)


def repeated_queries(hot_users: Sequence[str]) -> list[tuple[str, str]]:
    """Twenty (user, query) pairs, asked again and again: after the first time, cached results."""
    return [(hot_users[index % len(hot_users)], f"what do I know about topic {index}") for index in range(20)]


def operations(data: DataSet, nonce: str) -> list[Operation]:
    cold = iter(data.cold_ids)
    hot_ids, hot_users = data.hot_ids, data.hot_users
    repeated = repeated_queries(hot_users)

    def get_hot(rng: random.Random, client: int, n: int) -> Call:
        return get(f"/memory/memories/{hot_ids[(client * 7 + n) % len(hot_ids)]}")

    def get_cold(rng: random.Random, client: int, n: int) -> Call | None:
        memory_id = next(cold, None)
        return None if memory_id is None else get(f"/memory/memories/{memory_id}")

    def get_missing(rng: random.Random, client: int, n: int) -> Call:
        return get(f"/memory/memories/{uuid.UUID(int=rng.getrandbits(128), version=4)}")

    def list_page(rng: random.Random, client: int, n: int) -> Call:
        return get("/memory/memories", user_id=hot_users[(client * 7 + n) % len(hot_users)], limit=20)

    # The nonce keeps a query new across runs too (query vectors stay in Redis).
    new_question = fresh(question, f" {nonce}")
    new_sentence = fresh(sentence)

    def search_new(rng: random.Random, client: int, n: int) -> Call:
        return get("/memory/relevant", user_id=data.pick(rng), query=new_question(rng), limit=10)

    def search_repeated(rng: random.Random, client: int, n: int) -> Call:
        user, query = repeated[(client + n) % len(repeated)]
        return get("/memory/relevant", user_id=user, query=query, limit=10)

    def write(rng: random.Random, user: str) -> dict[str, Any]:
        return {"user_id": user, "content": new_sentence(rng), "ttl_seconds": WRITE_TTL_SECONDS}

    def store(rng: random.Random, client: int, n: int) -> Call:
        return post("/memory/memories", write(rng, data.pick(rng)))

    def store_async(rng: random.Random, client: int, n: int) -> Call:
        # One writer user per client and run: the poller lists just these.
        return post("/memory/memories?async=true", write(rng, f"httpbench-async-{nonce}-{client}"), capture=True)

    def batch(rng: random.Random, client: int, n: int) -> Call:
        user = data.pick(rng)
        return post("/memory/memories/batch", {"memories": [write(rng, user) for _ in range(100)]})

    mix: list[tuple[float, Builder]] = [
        (0.45, get_hot),
        (0.25, list_page),
        (0.10, search_new),
        (0.10, search_repeated),
        (0.05, store),
        (0.05, lambda rng, client, n: post("/memory/memories?async=true", write(rng, data.pick(rng)))),
    ]

    def mixed(rng: random.Random, client: int, n: int) -> Call | None:
        builder = rng.choices([b for _, b in mix], weights=[w for w, _ in mix])[0]
        return builder(rng, client, n)

    ok = frozenset({200})
    return [
        # The floor: gunicorn, Django's middleware and the client, without
        # authentication, cache or database; every other operation pays it.
        Operation(
            "floor: GET /health (no auth, no cache, no db)", lambda rng, client, n: get("/health"), ok, view="health"
        ),
        Operation(
            "get by id, cache hit",
            get_hot,
            ok,
            view="memory-detail",
            cache="memory",
            warm=lambda: [get(f"/memory/memories/{memory_id}") for memory_id in hot_ids],
            single_target=_latency_target(1.5, 5),
            saturation_target=_throughput_target(1_000),
        ),
        Operation("get by id, cache miss (PostgreSQL)", get_cold, ok, view="memory-detail", cache="memory"),
        Operation("get by id, no such id (404)", get_missing, frozenset({404}), view="memory-detail", cache="memory"),
        Operation(
            "list 20 newest",
            list_page,
            ok,
            view="memory-list",
            cache="list",
            warm=lambda: [get("/memory/memories", user_id=user, limit=20) for user in hot_users],
            single_target=_latency_target(3),
        ),
        Operation(
            "search, new query (embeds it)",
            search_new,
            ok,
            view="memory-relevant",
            cache="search",
            single_target=_latency_target(10, 30),
            saturation_target=_throughput_target(100),
        ),
        Operation(
            "search, repeated query",
            search_repeated,
            ok,
            view="memory-relevant",
            cache="search",
            warm=lambda: [get("/memory/relevant", user_id=u, query=q, limit=10) for u, q in repeated],
            single_target=_latency_target(3),
        ),
        # 201 only: a 200 would be a merge into an existing memory, another path.
        Operation("store one (embeds it)", store, frozenset({201}), view="memory-list"),
        Operation(
            "store one, async=true (202)",
            store_async,
            frozenset({202}),
            view="memory-list",
            single_target=_latency_target(3),
            track_embedding=True,
            writer_prefix=f"httpbench-async-{nonce}-",
        ),
        Operation(
            "batch store of 100 (embeds them)",
            batch,
            frozenset({201}),
            view="memory-batch",
            repeat_share=0.05,
            single_target=_latency_target(250),
        ),
        Operation(
            "mixed: 70% get/list, 20% search, 10% writes",
            mixed,
            frozenset({200, 201, 202}),
        ),
    ]


# -- the async stores' embedding delay ------------------------------------------------


class EmbeddingWatch:
    """Polls the lists of the async writers' users and notes when each memory first has its vector.

    Vectors are written by the job cluster, which then replaces the user's
    generation token: a list read after that shows `embedding`, which is when
    the memory became vector-searchable. Runs in a thread of this process
    (one more client on the server while it polls).
    """

    def __init__(self, url: str, key: str, users: Sequence[str]) -> None:
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, **_HTTP_OPTIONS)
        self.users = list(users)
        self.embedded_at: dict[str, float] = {}
        # Per user: list only what was made since its oldest memory still waiting.
        self.since: dict[str, str | None] = dict.fromkeys(self.users)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stopping.is_set():
            for user in self.users:
                params: dict[str, str | int] = {"user_id": user, "limit": 1000}
                since = self.since[user]
                if since is not None:
                    params["since"] = since
                try:
                    response = self.client.get("/memory/memories", params=params)
                except httpx.HTTPError:
                    continue  # the next round asks again
                arrived = time.time()
                if response.status_code != 200:
                    continue
                results = response.json()["results"]
                waiting = [memory["created_at"] for memory in results if memory["embedding"] is None]
                for memory in results:
                    if memory["embedding"] is not None:
                        self.embedded_at.setdefault(memory["id"], arrived)
                if results:
                    # Newest first: all before the oldest one waiting are done.
                    self.since[user] = min(waiting) if waiting else results[0]["created_at"]
            time.sleep(POLL_SECONDS)

    def delays_ms(self, accepted: Sequence[tuple[str, float]], timeout: float) -> tuple[list[float], int]:
        """Each accepted memory's delay from its 202 to its vector, waiting up to `timeout` for the last,
        and how many had none by then (counted with the time waited: a lower bound)."""
        deadline = time.monotonic() + timeout
        while any(memory_id not in self.embedded_at for memory_id, _ in accepted) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        self.stopping.set()
        self.thread.join()
        self.client.close()
        gave_up = time.time()
        delays = [(self.embedded_at.get(memory_id, gave_up) - at) * 1000 for memory_id, at in accepted]
        return delays, sum(1 for memory_id, _ in accepted if memory_id not in self.embedded_at)


# -- measuring --------------------------------------------------------------------


@dataclass
class Bench:
    server: Server
    generator: LoadGenerator
    client: httpx.Client
    statements: StatementCounter | None
    options: SuiteOptions
    seconds: float
    rng: random.Random

    def plans(self, operation: Operation, clients: int) -> list[list[Call]]:
        count = max(3, round(self.options.repeat * operation.repeat_share))
        plans: list[list[Call]] = []
        for client in range(clients):
            plan: list[Call] = []
            for n in range(count):
                call = operation.build(self.rng, client, n)
                if call is None:
                    break
                plan.append(call)
            plans.append(plan)
        return [plan for plan in plans if plan]

    def warm(self, calls: Sequence[Call], clients: int) -> None:
        """Every client reads every call: Redis, and (8 reads spread over them) each gunicorn worker's L1."""
        self.generator.run([list(calls) for _ in range(clients)])

    def measure(self, operation: Operation, clients: int) -> list[Result]:
        mode = "1 client" if clients == 1 else f"{clients} clients"
        if operation.warm is not None:
            self.warm(operation.warm(), self.options.clients)
        plans = self.plans(operation, clients)
        if not plans:
            _log(f"{operation.name}, {mode}: nothing to request (data set too small)")
            return []
        watch = (
            EmbeddingWatch(self.server.url, self.server.key, [f"{operation.writer_prefix}{c}" for c in range(clients)])
            if operation.track_embedding
            else None
        )
        metrics_before = scrape(self.client)
        statements_before = self.statements.snapshot() if self.statements else None
        outcome = self.generator.run(plans, None if clients == 1 else self.seconds)
        # Before waiting for the vectors: the poller's own reads are not the requests'.
        statements = (
            self.statements.caused(statements_before, self.statements.snapshot())
            if self.statements is not None and statements_before is not None
            else None
        )
        metrics_after = scrape(self.client)
        delays = watch.delays_ms(outcome.captured, timeout=30.0) if watch is not None else None
        failed = sum(count for status, count in outcome.statuses.items() if status not in operation.ok)
        extra: dict[str, Any] = {
            "clients": clients,
            "requests": outcome.requests,
            "seconds": round(outcome.seconds, 3),
            "statuses": {str(status): count for status, count in sorted(outcome.statuses.items())},
            # Others' work on this machine shows here: it shares the cores.
            "load_average_1m": round(os.getloadavg()[0], 2),
        }
        if failed or outcome.errors:
            extra["failed"] = failed
            extra["errors"] = outcome.errors
            _log(f"{operation.name}, {mode}: {failed} unexpected statuses {dict(outcome.statuses)} {outcome.errors}")
        if statements is not None and outcome.requests:
            per = 1 / outcome.requests
            extra["db"] = {
                "transaction_control_per_request": round(statements.control * per, 2),
                "foreign_key_checks_per_request": round(statements.foreign_key_checks * per, 2),
                "job_queue_per_request": round(statements.job_queue * per, 2),
                "execution_ms_per_request": round(statements.milliseconds * per, 3),
                # [ms per request, calls per request, statement]
                "slowest": [
                    [round(ms * per, 3), round(calls * per, 2), " ".join(query.split())[:160]]
                    for ms, calls, query in statements.top
                ],
            }
        if operation.view is not None:
            name = "django_http_requests_latency_seconds_by_view_method"
            labels = {"view": operation.view, "method": plans[0][0][0]}
            count = _delta(metrics_before, metrics_after, f"{name}_count", **labels)
            total = _delta(metrics_before, metrics_after, f"{name}_sum", **labels)
            if count:
                # The view's own time (django-prometheus): what the client sees
                # beyond it is gunicorn, middleware, the socket and the client.
                extra["server_view_mean_ms"] = round(total / count * 1000, 2)
        if operation.cache is not None:
            extra["cache"] = _cache_counts(metrics_before, metrics_after, operation.cache)
        target = operation.single_target if clients == 1 else operation.saturation_target
        name = f"{operation.name}, {mode}"
        if not outcome.samples:  # every request failed: a row that says so
            return [Result(GROUP, name, target=target.text if target else "", met=False, extra=extra)]
        result = latency(
            GROUP,
            name,
            outcome.samples,
            throughput=outcome.requests / outcome.seconds if outcome.seconds > 0 else None,
            target=target.text if target else "",
            **extra,
        )
        result = replace(
            result,
            value=statements.statements / outcome.requests if statements is not None else None,
            unit="db stmt/req" if statements is not None else "",
        )
        if target is not None:
            result = replace(result, met=target.check(result) and not failed)
        if delays is None or not delays[0]:
            return [result]
        return [result, self.embedding_result(mode, clients, *delays)]

    @staticmethod
    def embedding_result(mode: str, clients: int, delays: list[float], never: int) -> Result:
        # At saturation the writes outrun the model on these cores: a backlog, not a target.
        target = Target("p99 <= 1,000 ms", lambda r: _p(r, "p99_ms") <= 1000) if clients == 1 else None
        result = latency(
            GROUP,
            f"async store -> vector-searchable, {mode}",
            delays,
            target=target.text if target else "",
            memories=len(delays),
            not_embedded_in_time=never,
            poll_ms=POLL_SECONDS * 1000,
        )
        return replace(result, met=target.check(result) if target else None)


def warm_up(generator: LoadGenerator, server: Server, clients: int, data: DataSet, nonce: str) -> None:
    """Load the model in every gunicorn worker and the job cluster; fill the API key caches."""
    rng = random.Random(1)
    calls = [
        get("/memory/relevant", user_id=rng.choice(data.users), query=f"{question(rng)} warm {nonce}") for _ in range(6)
    ]
    generator.run([calls for _ in range(clients)])
    writer = f"httpbench-warm-{nonce}"
    watch = EmbeddingWatch(server.url, server.key, [writer])
    outcome = generator.run(
        [[post("/memory/memories?async=true", {"user_id": writer, "content": "warm-up"}, capture=True)]]
    )
    watch.delays_ms(outcome.captured, timeout=60.0)


@dataclass(frozen=True)
class HttpOptions:
    """This part's own settings, beside the suite's."""

    # An already running server and a key of the account holding (or to hold) the data set.
    url: str | None = None
    key: str | None = None
    # Its database, for statements per request.
    database_url: str | None = None
    # The server started here otherwise.
    port: int = DEFAULT_PORT
    data_dir: Path = DEFAULT_DATA_DIR
    workers: int | None = None
    # At most this long per saturation measurement.
    seconds: float = 6.0
    # The data set's (a new seed: a new data set, in its own account).
    seed: int = SEED
    client: str = "stdlib"


def run_against(server: Server, options: SuiteOptions, http: HttpOptions) -> list[Result]:
    nonce = f"{int(time.time()):x}"
    with api_client(server) as client:
        loaded = load_data(server, client, options, http.seed)
        wait_for_preload(client, trigger=loaded)
        data = sample(client, options.users, options.repeat * (options.clients + 1), random.Random(http.seed))
        _log(f"{len(data.hot_ids)} hot ids, {len(data.cold_ids)} cold ids, {len(data.hot_users)} listed users")
        statements = StatementCounter.connect(server.database_url)
        generator = LoadGenerator(server.url, server.key, options.clients, http.client)
        try:
            # Seeded by the run: a run that reused the last one's texts would
            # store duplicates of its writes (merged, not stored: another path).
            rng = random.Random(f"{http.seed}:{nonce}")
            bench = Bench(server, generator, client, statements, options, http.seconds, rng)
            warm_up(generator, server, options.clients, data, nonce)
            settle_reads(server)
            results: list[Result] = []
            for operation in operations(data, nonce):
                for clients in (1, options.clients):
                    started = time.monotonic()
                    measured = bench.measure(operation, clients)
                    results.extend(measured)
                    for result in measured:
                        _log(f"{result.operation}: p50 {result.p50_ms:.2f} ms ({time.monotonic() - started:.1f} s)")
            return results
        finally:
            generator.close()
            if statements is not None:
                statements.close()


def run(options: SuiteOptions, http: HttpOptions | None = None) -> list[Result]:
    """The suite's entry point: against `http.url` if given, else a server started here."""
    http = http or HttpOptions()
    if http.url is not None:
        if http.key is None:
            raise ValueError("--url needs --key")
        server = Server(url=http.url.rstrip("/"), key=http.key, database_url=http.database_url, manage_env=None)
        _wait_ready(server.url, None, None)
        return run_against(server, options, http)
    with started_server(http.port, http.data_dir, http.workers, data_account(options, http.seed)) as started:
        return run_against(started, options, http)


def main() -> None:
    suite, own = SuiteOptions(), HttpOptions()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=suite.clients, help="clients at saturation")
    parser.add_argument("--repeat", type=int, default=suite.repeat, help="requests per client and operation")
    parser.add_argument("--seconds", type=float, default=own.seconds, help="at most this long per saturation run")
    parser.add_argument("--users", type=int, default=suite.users)
    parser.add_argument("--memories", type=int, default=suite.memories)
    parser.add_argument("--url", help="measure this running server instead of starting one")
    parser.add_argument("--key", help="an API key of the server at --url (its account holds the data set)")
    parser.add_argument("--database-url", help="the --url server's database, for statements per request")
    parser.add_argument("--port", type=int, default=own.port, help="port of the server started here")
    parser.add_argument("--data-dir", type=Path, default=own.data_dir, help="its embedded servers' data")
    parser.add_argument("--workers", type=int, help="its gunicorn workers (WEB_CONCURRENCY; default as make run)")
    parser.add_argument("--seed", type=int, default=own.seed, help="the data set's (a new one for another)")
    parser.add_argument("--client", choices=sorted(CLIENTS), default=own.client, help="the load generators' client")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    options = SuiteOptions(memories=args.memories, users=args.users, repeat=args.repeat, clients=args.clients)
    http = HttpOptions(
        url=args.url,
        key=args.key,
        database_url=args.database_url,
        port=args.port,
        data_dir=args.data_dir,
        workers=args.workers,
        seconds=args.seconds,
        seed=args.seed,
        client=args.client,
    )
    load = os.getloadavg()[0]
    results = run(options, http)
    print(
        f"{args.memories} memories over {args.users} users; saturation: {args.clients} clients; "
        f"client: {args.client}; load average before/after: {load:.2f}/{os.getloadavg()[0]:.2f}"
    )
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps([result.as_dict() for result in results], indent=2, default=str))


if __name__ == "__main__":
    if sys.argv[1:] == [WORKER_FLAG]:
        _worker_main()
    else:
        main()
