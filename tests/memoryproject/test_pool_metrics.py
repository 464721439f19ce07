"""Connection pool usage at /metrics: the database's psycopg pool and django-redis's pool, per process."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg_pool
import pytest
from django.conf import settings
from django.db import connection
from django_redis import get_redis_connection
from prometheus_client import REGISTRY
from redis import BlockingConnectionPool, ConnectionPool

from memoryproject import pool_metrics
from tests.metrics import parse_samples, scrape, unlabelled
from tests.servers import run_python

pytestmark = pytest.mark.django_db


def _value(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@pytest.fixture
def tiny_pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[psycopg_pool.ConnectionPool]:
    """A one-connection pool of the test database, sampled instead of Django's."""
    pool = psycopg_pool.ConnectionPool(
        kwargs=connection.get_connection_params(), min_size=1, max_size=1, timeout=0.2, open=True
    )
    pool.wait()
    monkeypatch.setattr(pool_metrics, "database_pool", lambda: pool)
    yield pool
    pool.close()


def test_database_pool_gauges_describe_this_process_s_pool() -> None:
    # The test's own transaction holds a connection of the pool.
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")

    scraped = unlabelled(scrape())

    size, available = scraped["memory_db_pool_size"], scraped["memory_db_pool_available"]
    assert size >= 1
    assert 0 <= available <= size - 1
    assert scraped["memory_db_pool_max"] == settings.DATABASES["default"]["OPTIONS"]["pool"]["max_size"] >= size
    assert scraped["memory_db_pool_waiting"] == 0


def test_every_connection_asked_of_the_pool_is_counted_once(tiny_pool: psycopg_pool.ConnectionPool) -> None:
    pool_metrics.sample()
    before = _value("memory_db_pool_requests_total")

    for _ in range(3):
        with tiny_pool.connection():
            pass
    pool_metrics.sample()
    pool_metrics.sample()

    assert _value("memory_db_pool_requests_total") == before + 3
    assert (_value("memory_db_pool_size"), _value("memory_db_pool_available"), _value("memory_db_pool_max")) == (
        1,
        1,
        1,
    )


def test_a_wait_for_a_busy_pool_and_its_timeout_are_counted(tiny_pool: psycopg_pool.ConnectionPool) -> None:
    pool_metrics.sample()
    waited, seconds, errors = (
        _value("memory_db_pool_requests_waited_total"),
        _value("memory_db_pool_wait_seconds_total"),
        _value("memory_db_pool_request_errors_total"),
    )
    held = tiny_pool.getconn()
    waiting_seen: list[float] = []

    def sample_while_waiting() -> None:
        time.sleep(0.1)
        pool_metrics.sample()
        waiting_seen.append(_value("memory_db_pool_waiting"))

    sampler = threading.Thread(target=sample_while_waiting)
    sampler.start()
    try:
        with pytest.raises(psycopg_pool.PoolTimeout), tiny_pool.connection():
            pass
    finally:
        sampler.join()
        tiny_pool.putconn(held)
    pool_metrics.sample()

    assert waiting_seen == [1]
    assert _value("memory_db_pool_waiting") == 0
    assert _value("memory_db_pool_requests_waited_total") == waited + 1
    assert _value("memory_db_pool_request_errors_total") == errors + 1
    assert 0.15 <= _value("memory_db_pool_wait_seconds_total") - seconds < 5


def test_no_pool_yet_reads_as_no_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_metrics, "database_pool", lambda: None)

    pool_metrics.sample()

    assert (_value("memory_db_pool_size"), _value("memory_db_pool_max")) == (0, 0)


def test_redis_pool_gauges_describe_django_redis_s_pool() -> None:
    get_redis_connection("default").ping()
    pool = get_redis_connection("default").connection_pool

    scraped = unlabelled(scrape())

    in_use, available = scraped["memory_redis_pool_in_use"], scraped["memory_redis_pool_available"]
    assert available >= 1  # the ping's connection, back in the pool
    assert in_use >= 0
    assert in_use + available <= scraped["memory_redis_pool_max"] == pool.max_connections


@pytest.mark.parametrize("pool_class", [ConnectionPool, BlockingConnectionPool])
def test_a_connection_taken_from_a_redis_pool_counts_as_in_use(pool_class: type[ConnectionPool]) -> None:
    base = get_redis_connection("default").connection_pool
    pool = pool_class(connection_class=base.connection_class, max_connections=3, **base.connection_kwargs)
    try:
        assert pool_metrics.redis_counts(pool) == (0, 0, 3)
        taken = pool.get_connection()
        assert pool_metrics.redis_counts(pool) == (1, 0, 3)
        pool.release(taken)
        assert pool_metrics.redis_counts(pool) == (0, 1, 3)
    finally:
        pool.disconnect()


def _eventually(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def test_in_multiprocess_mode_a_thread_samples_the_pools_without_a_scrape(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert not pool_metrics.start()  # single-process mode: the scrape samples
    monkeypatch.setattr(pool_metrics, "multiprocess_dir", lambda: str(tmp_path))
    monkeypatch.setattr(pool_metrics, "SAMPLE_SECONDS", 0.02)
    pool_metrics.REDIS_MAX.set(-1)

    assert pool_metrics.start()
    try:
        assert not pool_metrics.start()  # one per process
        assert _eventually(lambda: _value("memory_redis_pool_max") > 0)
    finally:
        pool_metrics.stop()


# -- across processes ----------------------------------------------------------------------------------

# Under PROMETHEUS_MULTIPROC_DIR the parent (a gunicorn worker, say) forks a
# child (as django-q2 forks its workers) that holds a database connection in a
# transaction. The parent answers GET /metrics while the child lives, and again
# after it exited. The child never answers a scrape: its sampler thread must.
_SCRIPT = """
import json, os, select, sys, time

import django

django.setup()

from django.db import transaction
from django.test import Client

from memories.models import Account
from memoryproject import pool_metrics

pool_metrics.SAMPLE_SECONDS = 0.05
ready_read, ready_write = os.pipe()
done_read, done_write = os.pipe()
pid = os.fork()
if pid == 0:
    code = 1
    try:
        with transaction.atomic():
            Account.objects.count()
            os.write(ready_write, b"x")
            select.select([done_read], [], [], 60)
        code = 0
    finally:
        os._exit(code)
assert select.select([ready_read], [], [], 60)[0], "the child never got its connection"
time.sleep(0.5)  # several of the child's samples
while_alive = Client().get("/metrics").content.decode()
os.write(done_write, b"x")
_, status = os.waitpid(pid, 0)
assert status == 0, status
after_exit = Client().get("/metrics").content.decode()
json.dump({"child": pid, "parent": os.getpid(), "while_alive": while_alive, "after_exit": after_exit}, sys.stdout)
"""


def _by_pid(text: str, name: str) -> dict[str, float]:
    return {dict(labels)["pid"]: value for (sample, labels), value in parse_samples(text).items() if sample == name}


@pytest.mark.django_db(transaction=True)
def test_a_forked_worker_s_pool_is_seen_by_a_scrape_another_process_answers(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    result = run_python("-c", _SCRIPT, env={**subprocess_env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    child, parent = str(answer["child"]), str(answer["parent"])

    sizes = _by_pid(answer["while_alive"], "memory_db_pool_size")
    available = _by_pid(answer["while_alive"], "memory_db_pool_available")
    assert sizes[child] - available[child] >= 1  # the child's connection, in use
    assert parent in sizes  # the answering process sampled itself
    assert child in _by_pid(answer["while_alive"], "memory_redis_pool_max")
    # Gone with the child; the parent's stay.
    assert set(_by_pid(answer["after_exit"], "memory_db_pool_size")) == {parent}
