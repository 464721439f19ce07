"""Fault tests (issue 6): the real service under load while its dependencies fail.

One service for the module, as `make run` starts it (`python -m
memoryproject.run`: gunicorn with two workers, the django-q2 cluster, and an
embedded PostgreSQL and Valkey of its own, on a free port and a data
directory of its own). Starting it (initdb, every migration) is most of the
module's time; each test leaves the servers running as it found them, even
when it fails.

Under a mixed HTTP load (tests/load.py: cached reads, and single, async,
batch and updating writes), a test stops a dependency for real (SIGKILL of
valkey-server; `pg_ctl stop` as a restart and as a crash), keeps the load
going, starts it again the way the service started it, and then holds the
service to its principles: degrade, don't fail (no 500, no hang; 503 with
Retry-After where a write cannot be done); recover by itself within seconds;
every acknowledged write in PostgreSQL exactly once, nothing half-written, no
stale read afterwards. The last test kills a django-q2 worker mid-task.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import shutil
import signal
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psutil  # type: ignore[import-untyped]  # no stubs in requirements/dev.txt
import psycopg
import pytest

from tests.load import QUERIES, Answer, Client, Load, Reader, text
from tests.local_server import JSONHandler, local_server
from tests.servers import (
    Service,
    database_url,
    free_port,
    kill_valkey,
    own_environ,
    start_embedded,
    stop_postgres,
)

pytestmark = pytest.mark.live_server_process

START_TIMEOUT = 240.0  # initdb and every migration, on a busy 2-core machine
BASELINE = 3.0  # seconds of load before the fault
OUTAGE = 6.0  # seconds the dependency stays down, under load
AFTER = 3.0  # seconds of load once the service has recovered
# "Recovers by itself within seconds": generous, the machine is shared and noisy.
RECOVERY_TIMEOUT = 30.0
# A request sent this long after the fault began meets the fault, not its start.
SETTLE = 1.0
# The slowest answer allowed while a dependency is down: half the database
# pool's timeout (DATABASE_POOL_TIMEOUT, 10 s), so that a request that waited
# for the pool fails the test; generous otherwise (measured: a tenth of a second).
OUTAGE_ANSWER_LIMIT = 5.0
WRITES = {"store", "store_async", "batch", "batch_async", "update"}
READ_STATUSES = {200}
WRITE_STATUSES = {200, 201, 202}


# -- an LLM extractor that can hold a transcript --------------------------------------------------

MARKER = re.compile(r"fault transcript (\w+)")
# Unrelated sentences: neither is merged into the other as a near-duplicate.
FACTS = ("User keeps a tortoise named Sprocket {n}", "User works night shifts at harbour {n}")


@dataclass
class Extractor:
    """The service's LLM (EXTRACTION_PROVIDER=openai): two memories and a summary
    per transcript, named by its marker. The first request for a transcript
    marked HOLD... is held (the job worker that sent it is provably mid-task)
    until `release`, then refused."""

    url: str = ""
    holding: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    held: set[str] = field(default_factory=set)
    # The client's port of the request held last: which process sent it.
    held_from: int = 0
    answered: list[str] = field(default_factory=list)

    def answer(self, body: dict[str, Any], client_port: int) -> tuple[int, dict[str, Any]]:
        found = MARKER.search(json.dumps(body))
        assert found is not None, body
        marker = found.group(1)
        # Only the first request of a marker is held: the transcript's second run is answered.
        if marker.startswith("HOLD") and marker not in self.held:
            self.held.add(marker)
            self.held_from = client_port
            self.holding.set()
            self.release.wait(timeout=300)
            return 503, {"error": {"message": "held by a fault test"}}
        self.answered.append(marker)
        extraction = {
            "memories": [
                {"content": fact.format(n=marker), "kind": "fact", "category": "life", "importance": 0.6}
                for fact in FACTS
            ],
            "summary": f"Conversation {marker}: a tortoise and night shifts.",
        }
        choice = {"index": 0, "message": {"role": "assistant", "content": json.dumps(extraction)}}
        return 200, {
            "id": f"chatcmpl-{marker}",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [choice],
        }


@pytest.fixture(scope="module")
def extractor() -> Iterator[Extractor]:
    upstream = Extractor()

    class Handler(JSONHandler):
        def do_POST(self) -> None:
            self.answer_json(*upstream.answer(self.read_json(), self.client_address[1]))

    with local_server(Handler) as url:
        upstream.url = url
        try:
            yield upstream
        finally:
            upstream.release.set()


# -- the service and its data ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(extractor: Extractor, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    # Under /tmp, whose short paths keep the Valkey socket inside the AF_UNIX limit.
    data_dir = Path(tempfile.mkdtemp(prefix="mp-faults-"))
    environ = own_environ(data_dir)
    environ.update(
        PORT=str(free_port()),
        WEB_CONCURRENCY="2",
        PYTHONUNBUFFERED="1",
        EXTRACTION_PROVIDER="openai",
        EXTRACTION_BASE_URL=extractor.url,
        EXTRACTION_MODEL="gpt-fault-test",
        EXTRACTION_API_KEY="sk-test",
        EXTRACTION_TIMEOUT="120",
    )
    running = Service(data_dir, environ, tmp_path_factory.mktemp("faults") / "run.log")
    try:
        running.start()
        running.wait_until_ready(START_TIMEOUT)
        yield running
    finally:
        running.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def client(service: Service) -> Client:
    return Client(service.url, service.api_key())


@dataclass(frozen=True)
class Seeded:
    readers: list[Reader]
    # A user preloaded into Redis whose memories were never read: only the preload can serve them.
    preloaded: Reader


def _seed_user(client: Client, user_id: str, count: int) -> Reader:
    rng = random.Random(user_id)
    body = {"memories": [{"user_id": user_id, "content": text(rng, "seed")} for _ in range(count)]}
    answer = client.ok("POST", "/memory/memories/batch", body)
    return Reader(user_id, [result["memory"]["id"] for result in answer["results"]])


def _wait_for(what: str, check: Callable[[], bool], timeout: float, service: Service | None = None) -> float:
    """Poll until `check` holds; the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            log = f"\nthe service's log:\n{service.log()[-6000:]}" if service is not None else ""
            pytest.fail(f"{what}: not within {timeout:g} s{log}")
        time.sleep(0.2)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def seeded(client: Client, service: Service) -> Seeded:
    readers = [_seed_user(client, f"reader-{n}", 6) for n in range(3)]
    preloaded = _seed_user(client, "preloaded-0", 8)
    run = client.ok("POST", "/memory/preload/trigger", {"user_id": preloaded.user_id})

    def preload_succeeded() -> bool:
        runs = client.ok("GET", "/memory/preload/status")["last"]
        return any(r["id"] == run["id"] and r["status"] == "succeeded" for r in runs)

    _wait_for("the preload of one user", preload_succeeded, 60, service)
    return Seeded(readers=readers, preloaded=preloaded)


class Database:
    """The service's PostgreSQL, seen directly: a fresh connection per query, since tests restart it."""

    def __init__(self, url: str) -> None:
        self.url = url

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as connection:
            return connection.execute(sql, params).fetchall()


@pytest.fixture(scope="module")
def database(service: Service) -> Database:
    return Database(database_url(service.data_dir))


# -- what every fault test checks ------------------------------------------------------------------


def _new_writers(client: Client, prefix: str, count: int = 3) -> tuple[list[str], dict[str, str]]:
    """Writer users of one test, each with the memory its thread keeps updating."""
    rng = random.Random(prefix)
    writers = [f"{prefix}-writer-{n}" for n in range(count)]
    mutable = {
        user_id: client.ok("POST", "/memory/memories", {"user_id": user_id, "content": text(rng, "mutable")})["id"]
        for user_id in writers
    }
    return writers, mutable


def _warm(client: Client, readers: Sequence[Reader]) -> None:
    """Read everything the readers' load will read, twice: from then on the cache answers it."""
    for _ in range(2):
        for reader in readers:
            for memory_id in reader.memory_ids:
                client.ok("GET", f"/memory/memories/{memory_id}")
            client.ok("GET", "/memory/memories?" + urlencode({"user_id": reader.user_id}))
            for query in QUERIES:
                client.ok(
                    "GET", "/memory/relevant?" + urlencode({"user_id": reader.user_id, "query": query, "limit": 5})
                )


def _show(answers: Sequence[Answer], limit: int = 15) -> str:
    return "\n".join(answer.brief() for answer in answers[:limit])


def _assert_no_server_error(load: Load) -> None:
    """Never a 500, never a request left without an answer (a hang, a refused connection)."""
    bad = [answer for answer in load.answers if (answer.status >= 500 and answer.status != 503) or answer.status == 0]
    assert not bad, f"{len(bad)} answers were server errors or no answer:\n{_show(bad)}"


def _assert_answered_in_time(answers: Sequence[Answer]) -> None:
    slow = [answer for answer in answers if answer.seconds > OUTAGE_ANSWER_LIMIT]
    assert not slow, f"answers slower than {OUTAGE_ANSWER_LIMIT:g} s during the outage:\n{_show(slow)}"


def _assert_durable(database: Database, client: Client, load: Load) -> None:
    """Every acknowledged write is in PostgreSQL exactly once, nothing is half-written,
    and the API, cache included, now answers what PostgreSQL holds."""
    users = list(load.writers)
    rows = database.rows(
        "SELECT id::text, user_id, content FROM memories_memory WHERE account_id = "
        "(SELECT id FROM memories_account WHERE name = 'default') AND namespace = 'default' AND user_id = ANY(%s)",
        [users],
    )
    by_id = {memory_id: (user_id, content) for memory_id, user_id, content in rows}
    missing = [s for s in load.stored if by_id.get(s.memory_id) != (s.user_id, s.content)]
    assert not missing, f"{len(missing)} of {len(load.stored)} acknowledged writes are not in PostgreSQL: {missing[:5]}"
    twins = [key for key, count in Counter((user_id, content) for _, user_id, content in rows).items() if count > 1]
    assert not twins, f"stored twice: {twins[:5]}"
    contents = Counter(content for _, _, content in rows)
    torn = [batch for batch in load.batches if sum(contents[content] for content in batch) not in (0, len(batch))]
    assert not torn, f"batches stored in part: {torn[:3]}"
    without_history = database.rows(
        "SELECT m.id FROM memories_memory m WHERE m.user_id = ANY(%s) AND NOT EXISTS "
        "(SELECT 1 FROM memories_memoryhistory h WHERE h.memory_id = m.id AND h.action = 'create')",
        [users],
    )
    assert not without_history, f"memories without their creation in the history: {without_history[:5]}"

    for user_id, memory_id in load.mutable.items():
        (content,) = database.rows("SELECT content FROM memories_memory WHERE id = %s", [memory_id])[0]
        possible = load.possible_contents(memory_id)
        assert possible is None or content in possible, "the last acknowledged update is not what PostgreSQL holds"
        assert client.ok("GET", f"/memory/memories/{memory_id}")["content"] == content, f"stale memory of {user_id}"
    for user_id in users:
        listed = client.ok("GET", "/memory/memories?" + urlencode({"user_id": user_id, "limit": 1000}))["results"]
        held = {memory_id for memory_id, (owner, _) in by_id.items() if owner == user_id}
        assert {memory["id"] for memory in listed} == held, f"the list of {user_id} is stale"
        assert all(memory["content"] == by_id[memory["id"]][1] for memory in listed), f"stale content for {user_id}"


def _cache_hits(client: Client) -> int | None:
    """The service-wide cache hits (every type and tier), or None while the cache is unavailable."""
    status, body, _, _ = client.call("GET", "/memory/cache/stats")
    if status != 200 or body.get("redis") != "ok":
        return None
    hits: int = sum(tier["hits"] for kind in body["types"].values() for tier in kind["tiers"].values())
    return hits


def _ready(client: Client) -> bool:
    status, body, _, _ = client.call("GET", "/ready")
    return status == 200 and body["status"] == "ready"


# -- Valkey ----------------------------------------------------------------------------------------


def test_valkey_killed_under_load_is_served_from_postgresql_and_the_cache_comes_back_by_itself(
    service: Service, client: Client, seeded: Seeded, database: Database
) -> None:
    writers, mutable = _new_writers(client, "valkey")
    _warm(client, seeded.readers)
    load = Load(client, readers=seeded.readers, writers=writers, mutable=mutable)
    load.start()
    try:
        time.sleep(BASELINE)
        killed = time.monotonic()
        kill_valkey(service.data_dir)
        time.sleep(OUTAGE)
        restarting = time.monotonic()
        start_embedded(service.data_dir, service.environ)
        restarted = time.monotonic()

        # By itself: the breakers half-open after their cooldown and close on the first success.
        back = _wait_for("the cache answering again", lambda: _cache_hits(client) is not None, RECOVERY_TIMEOUT)
        hits = _cache_hits(client) or 0
        growing = _wait_for("cache hits growing again", lambda: (_cache_hits(client) or 0) > hits, RECOVERY_TIMEOUT)
        ready = _wait_for("/ready saying ready", lambda: _ready(client), RECOVERY_TIMEOUT)
        time.sleep(AFTER)
    finally:
        load.stop()
        start_embedded(service.data_dir, service.environ)  # whatever happened, Valkey runs again

    during = load.between(killed + SETTLE, restarting)
    print(
        f"\nValkey: down {restarting - killed:.1f} s, restarted in {restarted - restarting:.1f} s; cache back "
        f"{back:.1f} s after, hits growing after {back + growing:.1f} s, /ready after {back + growing + ready:.1f} s; "
        f"{len(load.answers)} requests, {len(during)} during the outage "
        f"(slowest {max((a.seconds for a in during), default=0):.2f} s), {len(load.stored)} writes acknowledged"
    )
    _assert_no_server_error(load)
    assert {answer.op for answer in during} >= {"get", "list", "search", "store", "batch", "update"}, _show(during)
    _assert_answered_in_time(during)
    unexpected = [
        answer
        for answer in load.answers
        if answer.status not in (WRITE_STATUSES if answer.op in WRITES else READ_STATUSES)
    ]
    assert not unexpected, f"without Redis every request is served from PostgreSQL:\n{_show(unexpected)}"
    # The writes of the outage could not replace their users' tokens in Redis:
    # recorded in PostgreSQL, and replayed by now (or reads would be stale).
    assert not database.rows("SELECT id FROM memories_pendinginvalidation")
    _assert_durable(database, client, load)


# -- PostgreSQL ------------------------------------------------------------------------------------


def _write_probe(client: Client, rng: random.Random) -> Answer:
    started = time.monotonic()
    status, body, retry_after, error = client.call(
        "POST", "/memory/memories", {"user_id": "postgres-probe", "content": text(rng, "probe")}
    )
    return Answer("store", "postgres-probe", started, time.monotonic() - started, status, body, retry_after, error)


# `fast`: a restart (every session ended); `immediate`: a crash (recovery from the WAL on start).
@pytest.mark.parametrize("mode", ["fast", "immediate"], ids=["restart", "crash"])
def test_postgresql_stopped_under_load_serves_cached_reads_refuses_writes_with_503_and_recovers_by_itself(
    service: Service, client: Client, seeded: Seeded, database: Database, mode: str
) -> None:
    rng = random.Random(mode)
    gunicorn = _gunicorn(service)
    writers, mutable = _new_writers(client, f"postgres-{mode}")
    _warm(client, seeded.readers)
    load = Load(client, readers=seeded.readers, writers=writers, mutable=mutable)
    load.start()
    preloaded: list[Answer] = []
    probes: list[Answer] = []
    try:
        time.sleep(BASELINE)
        stopping = time.monotonic()
        stop_postgres(service.data_dir, mode=mode)
        stopped = time.monotonic()
        while time.monotonic() - stopped < OUTAGE:
            # Memories only the preload put in Redis (never read before).
            for memory_id in seeded.preloaded.memory_ids:
                started = time.monotonic()
                status, body, retry_after, error = client.call("GET", f"/memory/memories/{memory_id}")
                preloaded.append(
                    Answer("get", "preloaded", started, time.monotonic() - started, status, body, retry_after, error)
                )
            time.sleep(0.2)
        restarting = time.monotonic()
        start_embedded(service.data_dir, service.environ)
        restarted = time.monotonic()

        def write_accepted() -> bool:
            probes.append(_write_probe(client, rng))
            return probes[-1].status == 201

        recovered = _wait_for("a write accepted again", write_accepted, RECOVERY_TIMEOUT, service)
        ready = _wait_for("/ready saying ready", lambda: _ready(client), RECOVERY_TIMEOUT, service)
        recovered_at = time.monotonic()
        log_at_recovery = len(service.log())
        time.sleep(AFTER)
    finally:
        load.stop()
        start_embedded(service.data_dir, service.environ)  # whatever happened, PostgreSQL runs again

    during = load.between(stopped + SETTLE, restarting)
    refused = [answer for answer in during if answer.op in WRITES]
    waits = sorted(answer.seconds for answer in refused)
    print(
        f"\nPostgreSQL ({mode}): stopped in {stopped - stopping:.1f} s, down {restarting - stopped:.1f} s, "
        f"restarted in {restarted - restarting:.1f} s; writes accepted {recovered:.1f} s after, "
        f"/ready {recovered + ready:.1f} s after; {len(load.answers)} requests, {len(during)} during the outage; "
        f"writes refused in {statistics.median(waits) if waits else 0:.2f} s (median), "
        f"{max(waits, default=0):.2f} s (slowest); writes tried after the restart: "
        f"{[(probe.status, round(probe.seconds, 2)) for probe in probes]}"
    )
    _assert_no_server_error(load)
    unexpected = [
        answer
        for answer in load.answers
        if answer.status not in (WRITE_STATUSES if answer.op in WRITES else READ_STATUSES) | {503}
    ]
    assert not unexpected, _show(unexpected)
    # Cached and preloaded reads do not need PostgreSQL.
    reader_ids = {reader.user_id for reader in seeded.readers}
    cached = [answer for answer in during if answer.user_id in reader_ids]
    assert {answer.op for answer in cached} == {"get", "list", "search"}, _show(cached)
    failed = [answer for answer in cached + preloaded if answer.status != 200]
    assert not failed, f"cached reads failed without PostgreSQL:\n{_show(failed)}"
    # Writes: a clear 503, with Retry-After and the JSON error, in bounded time.
    assert refused, "no write was tried during the outage"
    wrong = [
        answer
        for answer in refused
        if answer.status != 503
        or not (answer.retry_after or "").isdigit()
        or not isinstance(answer.body, dict)
        or answer.body.get("error", {}).get("code") != "unavailable"
    ]
    assert not wrong, f"writes without PostgreSQL must get a 503 with Retry-After:\n{_show(wrong)}"
    _assert_answered_in_time(during + preloaded)
    # Once back, everything is accepted again, with no restart of gunicorn.
    after = load.between(recovered_at + SETTLE, float("inf"))
    not_ok = [a for a in after if a.status not in (WRITE_STATUSES if a.op in WRITES else READ_STATUSES)]
    assert not not_ok, f"requests failing after the recovery:\n{_show(not_ok)}"
    assert _gunicorn(service) == gunicorn, "gunicorn's processes were restarted"
    _assert_durable(database, client, load)

    # The job cluster is back too: the async writes (those of before the outage
    # included) get their vectors without anyone's help.
    def embedded() -> bool:
        return not database.rows(
            "SELECT id FROM memories_memory WHERE user_id = ANY(%s) AND embedding IS NULL", [list(writers)]
        )

    caught_up = _wait_for("every async write embedded", embedded, 90, service)
    print(f"every async write embedded {caught_up:.1f} s after the load ended")
    # No process, busy or idle during the outage (django-q2's monitor, a web
    # worker), went on to use a connection the restart had closed.
    since = service.log()[log_at_recovery:]
    for closed in ("terminating connection due to administrator command", "server closed the connection"):
        assert closed not in since, since[-5000:]


# -- a job worker killed mid-task ------------------------------------------------------------------
#
# tests/memories/test_crash_recovery.py kills stand-alone `manage.py process_raw`
# and `embed_pending` processes. Here the process killed is a django-q2 worker
# of the service's own cluster, inside a task the cluster took from its queue:
# the cluster must replace it and go on by itself, without taking the service
# down, and the task's work must be done once, neither lost nor twice.


def _running(processes: Sequence[psutil.Process], word: str = "") -> list[psutil.Process]:
    """Those still running (not exited, not waiting to be reaped) whose command line has `word`."""
    found = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):  # ZombieProcess included
            if process.status() != psutil.STATUS_ZOMBIE and word in " ".join(process.cmdline()):
                found.append(process)
    return found


def _cluster(service: Service) -> psutil.Process:
    """The django-q2 sentinel: the process that forks the job workers (and the pusher and monitor)."""
    (leader,) = [p for p in _running(service.children(), "qcluster") if p.ppid() == service.pid]
    (sentinel,) = _running(leader.children())
    return sentinel


def _gunicorn(service: Service) -> set[int]:
    return {p.pid for p in _running(service.children(), "gunicorn")}


def _store_transcript(client: Client, marker: str) -> dict[str, Any]:
    body = {
        "session_id": f"session-{marker}",
        "metadata": {"user_id": f"user-{marker}"},
        "session_data": f"User: Hello, this is fault transcript {marker}. I keep a tortoise and work nights.\n"
        "Assistant: Noted, thank you.",
    }
    answer: dict[str, Any] = client.ok("POST", "/api/memory/default/store_raw", body)
    return answer


def _processed(client: Client, marker: str) -> bool:
    status, body, _, _ = client.call("GET", f"/api/memory/default/session/session-{marker}")
    return status == 200 and body["status"] == "processed"


def _memories_of(database: Database, marker: str) -> Counter[str]:
    rows = database.rows("SELECT content FROM memories_memory WHERE user_id = %s", [f"user-{marker}"])
    return Counter(content for (content,) in rows)


def test_a_job_worker_killed_mid_task_is_replaced_and_its_task_is_done_once_by_the_cluster(
    service: Service, client: Client, database: Database, extractor: Extractor
) -> None:
    gunicorn = _gunicorn(service)
    sentinel = _cluster(service)
    held = _store_transcript(client, "HOLD1")
    _wait_for("the job worker asking the LLM", extractor.holding.is_set, 60, service)
    # The worker whose connection sent the held request.
    (worker,) = [
        child
        for child in _running(sentinel.children())
        if any(c.laddr.port == extractor.held_from for c in child.net_connections(kind="tcp"))
    ]
    others = {child.pid for child in _running(sentinel.children())} - {worker.pid}

    worker.send_signal(signal.SIGKILL)
    killed = time.monotonic()

    def replaced_by_a_new_one() -> bool:
        children = {child.pid for child in _running(sentinel.children())}
        return worker.pid not in children and len(children) == len(others) + 1

    # The cluster replaces its worker; nothing else stops or restarts.
    replaced = _wait_for("a new job worker", replaced_by_a_new_one, RECOVERY_TIMEOUT, service)
    assert service.process is not None
    assert service.process.poll() is None, service.log()[-3000:]
    assert _gunicorn(service) == gunicorn, "gunicorn's processes changed"
    assert client.call("GET", "/health")[0] == 200
    # Killed mid-task: the transcript is claimed, and nothing of its run was written.
    (row,) = database.rows(
        "SELECT t.status, t.attempts, s.summary FROM memories_rawtranscript t "
        "JOIN memories_session s ON s.id = t.session_id WHERE t.id = %s",
        [held["raw_memory_id"]],
    )
    assert row == ("processing", 1, ""), row
    assert not _memories_of(database, "HOLD1"), "the killed run wrote some of its memories"

    # The cluster goes on by itself: new work is done in seconds.
    _store_transcript(client, "AFTER1")
    after = _wait_for("a transcript stored after the kill processed", lambda: _processed(client, "AFTER1"), 60, service)

    # django-q2 gives the killed task to a worker again once its lock expires
    # (Q_RETRY, 11 minutes): expire it now. Run again, it finds the transcript
    # claimed and does nothing.
    locked = database.rows(
        "UPDATE django_q_ormq SET lock = now() - interval '1 second' WHERE lock > now() RETURNING id"
    )
    assert locked, "the killed task is no longer in the queue"
    redelivered = _wait_for(
        "the killed task run again and acknowledged",
        lambda: not database.rows("SELECT id FROM django_q_ormq WHERE id = ANY(%s)", [[i for (i,) in locked]]),
        60,
        service,
    )
    assert not _memories_of(database, "HOLD1")
    # The every-minute schedule requeues a claim older than INGEST_STALE_CLAIM_SECONDS
    # (300): as if both had passed, the claim is aged and the schedule made due.
    assert database.rows(
        "UPDATE memories_rawtranscript SET claimed_at = claimed_at - interval '1 hour' WHERE id = %s RETURNING id",
        [held["raw_memory_id"]],
    )
    assert database.rows(
        "UPDATE django_q_schedule SET next_run = now() WHERE name = 'memories.process_transcripts' RETURNING id"
    )
    requeued = _wait_for("the killed task's transcript processed", lambda: _processed(client, "HOLD1"), 90, service)
    print(
        f"\nJob worker killed: replaced in {replaced:.1f} s; a transcript stored then processed in {after:.1f} s; "
        f"the killed task redelivered and done in {redelivered:.1f} s; its transcript requeued by the "
        f"schedule and processed in {requeued:.1f} s ({time.monotonic() - killed:.1f} s after the kill)"
    )

    # Each transcript's work done exactly once: its two memories and its summary, no twin.
    for marker in ("HOLD1", "AFTER1"):
        memories = _memories_of(database, marker)
        assert set(memories.values()) == {1}, memories
        assert {fact.format(n=marker) for fact in FACTS} <= set(memories), memories
        assert len(memories) == len(FACTS) + 1, memories
    (attempts,) = database.rows("SELECT attempts FROM memories_rawtranscript WHERE id = %s", [held["raw_memory_id"]])
    assert attempts == (2,)
    assert extractor.answered.count("HOLD1") == 1
