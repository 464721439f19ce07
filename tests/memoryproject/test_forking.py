"""A forked child (django-q2's workers) opens its own database connections and leaves its parent's alone."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db(transaction=True)


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid: int = cursor.fetchone()[0]
        return pid


def _session_alive(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
        return bool(cursor.fetchone()[0])


def _in_child(work: Callable[[], str]) -> str:
    """Runs `work` in a forked child; returns what it wrote, or its error."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover  (the child's coverage is not collected)
        try:
            os.close(read_end)
            try:
                answer = work()
            except BaseException as error:
                answer = f"error: {error!r}"
            os.write(write_end, answer.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    return answer


def _child_queries() -> str:
    pid = _backend_pid()
    connection.close()
    connection.close_pool()  # type: ignore[attr-defined]  # the child's own pool
    gc.collect()  # what the child forgot must not end the parent's session when collected
    return str(pid)


def test_a_child_forked_while_a_connection_is_open_opens_its_own() -> None:
    parent = _backend_pid()

    child = _in_child(_child_queries)

    assert child.isdigit(), child
    assert int(child) != parent
    assert _backend_pid() == parent  # the parent's session survived the child, still usable


def test_a_child_forked_after_the_pool_took_a_connection_back_does_not_use_it() -> None:
    parent = _backend_pid()
    connection.close()  # back into the pool, still open

    child = _in_child(_child_queries)

    assert child.isdigit(), child
    assert int(child) != parent
    assert _session_alive(parent)  # the pooled session survived too
