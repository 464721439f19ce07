"""A forked child starts without its parent's database connections.

django-q2 forks its sentinel, which queries the database (the scheduler, the
ORM broker) and then forks the pusher, the workers and the monitor. A child
that went on using an inherited psycopg connection, or took one from the
inherited pool, would talk on the parent's socket: two processes interleave
on one PostgreSQL session and both see garbage ("the last operation didn't
produce records", "connection in transaction status INTRANS").

The child forgets them instead of closing them: closing would send a
Terminate on the shared socket and end the parent's session too. The
forgotten objects are kept referenced so that no finaliser runs in the child
(psycopg only finishes a libpq connection in the process that opened it, but
the pool's finaliser would still try to stop worker threads the child does
not have). Redis clients need nothing: redis-py resets its pool on a pid change.
"""

from __future__ import annotations

import os

_inherited: list[object] = []


def forget_inherited_connections() -> None:
    from django.db import connections
    from django.db.backends.postgresql.base import DatabaseWrapper

    for wrapper in connections.all(initialized_only=True):
        _inherited.append(wrapper)
        # The next use builds a fresh wrapper: no connection, no transaction state.
        del connections[wrapper.alias]
    pools = DatabaseWrapper._connection_pools  # type: ignore[attr-defined]  # not in django-stubs
    for pool in pools.values():
        pool._closed = True  # its finaliser then does nothing
        _inherited.append(pool)
    pools.clear()


os.register_at_fork(after_in_child=forget_inherited_connections)
