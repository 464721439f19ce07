"""Django's PostgreSQL backend, made to fail fast and heal by itself when PostgreSQL restarts.

Two things tests/memoryproject/test_faults.py saw with PostgreSQL stopped and
started again under load:

- psycopg's pool makes a request that finds no idle connection wait up to
  DATABASE_POOL_TIMEOUT (10 s) while it tries to connect in the background,
  and when the server is down nothing ever comes: writes got their 503 after
  30 to 60 s (one wait per query they tried), and a gunicorn sync worker stuck
  in those waits held up every request behind it, cached reads included.
- A pooled connection that sat idle through the restart is dead, and only its
  first query finds out: after PostgreSQL was back, django-q2's monitor died of
  it ("reincarnated monitor after sudden death", a task's result lost), its
  scheduler skipped a round, and an idle web worker would answer one 503.

So a connection is asked of the pool through the process's "database" breaker
(memoryproject.breakers). Before waiting on a pool with no idle connection, one
direct connection attempt asks the server itself: a server that is down
refuses it at once. A connection taken from the pool, unless it went back
less than ALIVE_BYPASS_SECONDS ago, is checked with an empty query (one
round trip, as Django's CONN_HEALTH_CHECKS would, but that check
runs inside the pool, which then waits for a replacement the full timeout); a
dead one goes back to the pool, which drops it, and the server is asked again.
After DATABASE_BREAKER_THRESHOLD failures in a row, requests fail at once for
DATABASE_BREAKER_COOLDOWN seconds (an OperationalError: the API's 503 with
Retry-After, a job's retry with backoff); then the next request tries again,
and the first success closes the breaker.
"""

from __future__ import annotations

import math
import time
import weakref
from typing import Any

import psycopg
from django.conf import settings
from django.db.backends.postgresql import base
from psycopg_pool import ConnectionPool

from memoryproject.breakers import Breaker, BreakerOpen, breaker

# libpq's smallest connect_timeout; a server that is down refuses at once anyway.
PROBE_TIMEOUT_SECONDS = 2
# A connection back in the pool less than this long ago is taken without the
# check's round trip (HikariCP's aliveBypassWindowMs: 500 ms): under load, the
# check would otherwise cost every request that uses the database a round trip
# (a write's 5 became 6). The pool hands out its oldest idle connection, so the
# window holds while each of a process's few idle connections (one or two for
# a gunicorn sync worker) comes round within it: that is, under load. A restart
# inside the window costs one 503 or a job retry, as a connection lost
# mid-request does.
ALIVE_BYPASS_SECONDS = 0.5
# For this long after the process last saw a database error, every connection
# is checked: an outage leaves connections that look recently used but are dead.
CHECK_ALL_AFTER_ERROR_SECONDS = 10.0
# When each pooled connection went back to the pool (weak: the pool drops and replaces them).
_RETURNED: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
_last_error = -math.inf


def _recently_fine(connection: Any) -> bool:
    """Back in the pool unharmed a moment ago, and no database trouble lately: no check needed."""
    now = time.monotonic()
    return (
        now - _last_error > CHECK_ALL_AFTER_ERROR_SECONDS
        and now - _RETURNED.get(connection, -math.inf) < ALIVE_BYPASS_SECONDS
    )


def _saw_error() -> None:
    global _last_error
    _last_error = time.monotonic()


def database_breaker() -> Breaker:
    """The process's breaker of database connections (a pool timeout and a refused connection are failures)."""
    config = settings.DATABASE_BREAKER
    return breaker(
        "database",
        fail_max=int(config["THRESHOLD"]),
        reset_timeout=float(config["COOLDOWN"]),
        failures=(psycopg.OperationalError,),
    )


def _probe(conn_params: dict[str, Any]) -> None:
    """Connect once, directly: OperationalError at once when the server is down."""
    psycopg.connect(**{**conn_params, "connect_timeout": PROBE_TIMEOUT_SECONDS}).close()


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        pool: ConnectionPool | None = self.pool  # type: ignore[attr-defined]  # Django 5.1's pooling, not in django-stubs
        if pool is None:  # no pool (the alias that creates test databases): nothing to wait for
            return super().get_new_connection(conn_params)
        try:
            with database_breaker().guard():
                return self._live_connection(pool, conn_params)
        except psycopg.OperationalError:
            _saw_error()
            raise
        except BreakerOpen as error:
            _saw_error()
            # As Django reports a failed connection: the callers' handling of an unreachable database applies.
            raise psycopg.OperationalError(str(error)) from error

    def _live_connection(self, pool: ConnectionPool, conn_params: dict[str, Any]) -> Any:
        if pool.get_stats().get("pool_available", 0) == 0:
            # The pool would have this request wait for a connection it may never get.
            _probe(conn_params)
        # Each round drops one dead connection: at most the pool's size of them.
        for _ in range(pool.max_size):
            connection = super().get_new_connection(conn_params)
            if _recently_fine(connection):
                return connection
            try:
                ConnectionPool.check_connection(connection)
            except psycopg.Error:
                _saw_error()
                pool.putconn(connection)  # closed by the server: the pool drops it and opens another
                _probe(conn_params)
                continue
            return connection
        return super().get_new_connection(conn_params)

    def _close(self) -> None:
        if self.connection is not None and self.pool is not None:  # type: ignore[attr-defined]  # not in django-stubs
            if self.errors_occurred:
                # It failed: maybe the server is gone. The next takers check theirs.
                _RETURNED.pop(self.connection, None)
                _saw_error()
            else:
                _RETURNED[self.connection] = time.monotonic()
        super()._close()  # type: ignore[misc]  # not in django-stubs
