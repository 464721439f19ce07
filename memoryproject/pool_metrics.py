"""Connection pool usage at /metrics: the psycopg pool of Django's database and django-redis's pool.

A pool belongs to one process: every gunicorn worker and every django-q2
worker has its own. A collector computing these at scrape time would describe
only the process answering the scrape: a different gunicorn worker each time,
and never a job worker, which holds its connections longest. An alert on that
would flap with the luck of the scrape. So under PROMETHEUS_MULTIPROC_DIR
every process samples its own pools every SAMPLE_SECONDS on a daemon thread,
into gauges of multiprocess_mode "liveall" (one series per living process,
labelled `pid`; a dead process's series go, see memoryproject.prometheus) and
counters (summed over every process, the dead included). The process that
answers a scrape samples itself once more first. Without the variable there
is one process, no thread, and the scrape's own sample is the whole truth.

The gauges are snapshots: a burst of waits between two samples escapes
memory_db_pool_waiting. The counters do not miss any (psycopg counts every
request and every wait), which is why alerts on waiting use them.

Nothing here runs on a request: the thread wakes every few seconds and reads
a few integers, and it only reads the pools that exist (it opens none).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from prometheus_client import Counter, Gauge
from redis import BlockingConnectionPool

from memoryproject.prometheus import multiprocess_dir, register_refresh

logger = logging.getLogger(__name__)

# Fine enough for a scrape every 15 s or more; the cost is a few reads every few seconds per process.
SAMPLE_SECONDS = 5.0

_PER_PROCESS = f" (per process: labelled pid under PROMETHEUS_MULTIPROC_DIR; sampled every {SAMPLE_SECONDS:g} s)"

DB_SIZE = Gauge(
    "memory_db_pool_size",
    "Connections the database pool holds open, in use or idle" + _PER_PROCESS,
    multiprocess_mode="liveall",
)
DB_AVAILABLE = Gauge(
    "memory_db_pool_available",
    "Idle connections ready in the database pool" + _PER_PROCESS,
    multiprocess_mode="liveall",
)
DB_MAX = Gauge(
    "memory_db_pool_max",
    "Most connections the database pool may open (DATABASE_POOL_MAX)" + _PER_PROCESS,
    multiprocess_mode="liveall",
)
DB_WAITING = Gauge(
    "memory_db_pool_waiting",
    "Requests waiting for a database connection at the moment of the sample" + _PER_PROCESS,
    multiprocess_mode="liveall",
)
DB_REQUESTS = Counter("memory_db_pool_requests", "Connections asked of the database pool")
DB_REQUESTS_WAITED = Counter(
    "memory_db_pool_requests_waited", "Connections asked of the database pool that had to wait for one to be free"
)
DB_WAIT_SECONDS = Counter("memory_db_pool_wait_seconds", "Time spent waiting for a database connection")
DB_REQUEST_ERRORS = Counter(
    "memory_db_pool_request_errors",
    "Connections asked of the database pool that were not given (waited DATABASE_POOL_TIMEOUT, or failed)",
)
REDIS_IN_USE = Gauge(
    "memory_redis_pool_in_use",
    "Connections of the Redis pool in use by a command" + _PER_PROCESS,
    multiprocess_mode="liveall",
)
REDIS_AVAILABLE = Gauge(
    "memory_redis_pool_available",
    "Idle connections ready in the Redis pool" + _PER_PROCESS,
    multiprocess_mode="liveall",
)
REDIS_MAX = Gauge(
    "memory_redis_pool_max",
    "Most connections the Redis pool may open" + _PER_PROCESS,
    multiprocess_mode="liveall",
)

# psycopg_pool's counters (get_stats) and the counters they feed, with the factor from its unit.
_DB_COUNTERS = (
    ("requests_num", DB_REQUESTS, 1.0),
    ("requests_queued", DB_REQUESTS_WAITED, 1.0),
    ("requests_wait_ms", DB_WAIT_SECONDS, 0.001),
    ("requests_errors", DB_REQUEST_ERRORS, 1.0),
)

# Held while sampling, and across a fork (see _before_fork): prometheus_client's
# multiprocess values share one lock that a fork must not catch held by this thread.
_lock = threading.Lock()
# The pool the counters were last read from, and what they said then.
_counted_pool: int | None = None
_counted: dict[str, int] = {}
_thread: threading.Thread | None = None
_stop = threading.Event()
_warned = False


def database_pool() -> Any:
    """The psycopg pool of Django's default database, or None: not pooled, or not opened yet in this process."""
    # Not `connection.pool`: that property opens the pool when it does not exist.
    pools = getattr(connections[DEFAULT_DB_ALIAS], "_connection_pools", None) or {}
    return pools.get(DEFAULT_DB_ALIAS)


def redis_pool() -> Any:
    """django-redis's connection pool of the default cache (made, not connected, if this process had none)."""
    from django_redis import get_redis_connection

    return get_redis_connection("default").connection_pool


def redis_counts(pool: Any) -> tuple[int, int, int]:
    """In use, idle and most connections of a redis-py pool."""
    if pool.pid != os.getpid():
        # Inherited over a fork and not reset yet: none of its connections are this process's.
        return 0, 0, int(pool.max_connections)
    if isinstance(pool, BlockingConnectionPool):
        # Its queue holds the idle connections and a None for each one not made yet.
        idle = sum(1 for item in list(pool.pool.queue) if item is not None)
        return len(pool._connections) - idle, idle, int(pool.max_connections)
    return len(pool._in_use_connections), len(pool._available_connections), int(pool.max_connections)


def _sample_database() -> None:
    global _counted_pool, _counted
    pool = database_pool()
    stats: dict[str, int] = pool.get_stats() if pool is not None else {}
    DB_SIZE.set(stats.get("pool_size", 0))
    DB_AVAILABLE.set(stats.get("pool_available", 0))
    DB_MAX.set(stats.get("pool_max", 0))
    DB_WAITING.set(stats.get("requests_waiting", 0))
    if pool is None:
        return
    if id(pool) != _counted_pool:
        # A new pool (first sample, or after close_pool or a fork) counts from zero.
        _counted_pool, _counted = id(pool), {}
    for name, counter, factor in _DB_COUNTERS:
        value = stats.get(name, 0)
        # Lower than last time only for a new pool at the old one's address, or after pop_stats: all of it is new.
        delta = value - _counted.get(name, 0) if value >= _counted.get(name, 0) else value
        if delta:
            counter.inc(delta * factor)
        _counted[name] = value


def _sample_redis() -> None:
    in_use, idle, most = redis_counts(redis_pool())
    REDIS_IN_USE.set(in_use)
    REDIS_AVAILABLE.set(idle)
    REDIS_MAX.set(most)


def sample() -> None:
    """Bring this process's pool metrics up to date (the sampler thread, and before each scrape)."""
    global _warned
    with _lock:
        for part in (_sample_database, _sample_redis):
            try:
                part()
            except Exception:
                # Once per process: a broken sampler would otherwise log every few seconds forever.
                if not _warned:
                    _warned = True
                    logger.exception("metrics: could not sample a connection pool")


def _run(stop: threading.Event) -> None:
    while not stop.wait(SAMPLE_SECONDS):
        sample()


def start() -> bool:
    """Under PROMETHEUS_MULTIPROC_DIR, sample this process's pools on a daemon thread; True if it started one."""
    global _thread, _stop
    if multiprocess_dir() is None or (_thread is not None and _thread.is_alive()):
        return False
    _stop = threading.Event()
    _thread = threading.Thread(target=_run, args=(_stop,), name="pool-metrics", daemon=True)
    _thread.start()
    return True


def stop() -> None:
    global _thread
    _stop.set()
    if _thread is not None:
        _thread.join()
    _thread = None


def _before_fork() -> None:
    # Waits for a sample in progress to end, so that no lock it takes is copied held into the child.
    _lock.acquire()


def _after_fork_in_parent() -> None:
    _lock.release()


def _after_fork_in_child() -> None:
    global _thread, _counted_pool, _counted
    _lock.release()
    _counted_pool, _counted = None, {}
    # Threads do not survive a fork: a child of a sampling process (django-q2's workers) samples itself.
    if _thread is not None:
        _thread = None
        start()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
register_refresh(sample)
