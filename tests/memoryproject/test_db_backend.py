"""memoryproject.db: pooled connections are checked before use, unless they were just returned."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from django.db import connection
from psycopg_pool import ConnectionPool
from rest_framework.test import APIClient

from memoryproject.db import base
from tests.factories import make_account


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch, transactional_db: None) -> list[object]:
    """The connections the backend checks with a round trip, in order."""
    checked: list[object] = []
    real = ConnectionPool.check_connection

    def spy(conn: Any) -> None:
        checked.append(conn)
        real(conn)

    monkeypatch.setattr(ConnectionPool, "check_connection", staticmethod(spy))
    # An earlier test's database error would have every connection checked for a while.
    monkeypatch.setattr(base, "_last_error", -math.inf)
    return checked


def _query_and_return() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    connection.close()  # back to the pool, as at the end of a request


def _use_every_idle_connection() -> None:
    # The pool hands out its idle connections oldest first: cycling as many
    # times as it may hold returns each of them once.
    for _ in range(connection.pool.max_size):  # type: ignore[attr-defined]  # not in django-stubs
        _query_and_return()


def test_a_connection_just_returned_to_the_pool_is_taken_without_a_check(checks: list[object]) -> None:
    _use_every_idle_connection()
    checks.clear()

    _query_and_return()

    assert checks == []


def test_after_a_database_error_every_connection_is_checked_for_a_while(checks: list[object]) -> None:
    _use_every_idle_connection()
    checks.clear()
    base._saw_error()

    _query_and_return()

    assert len(checks) == 1


def test_a_connection_idle_past_the_bypass_window_is_checked(
    checks: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "ALIVE_BYPASS_SECONDS", 0.05)
    _use_every_idle_connection()
    checks.clear()
    time.sleep(0.1)

    _query_and_return()

    assert len(checks) == 1


def test_while_the_database_breaker_is_open_a_request_gets_503_with_its_cooldown(
    transactional_db: None, settings: Any
) -> None:
    settings.DATABASE_BREAKER = {"THRESHOLD": 3, "COOLDOWN": 30.0}
    account = make_account("acme")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {account.raw_key}")
    connection.close()  # back to the pool: the next query asks for a connection
    breaker = base.database_breaker()
    breaker.trip()
    try:
        response = client.post("/memory/memories", {"user_id": "u1", "content": "User likes tea"}, format="json")
    finally:
        breaker.reset()  # the test database's flush needs a connection

    assert response.status_code == 503
    assert 29 <= int(response["Retry-After"]) <= 30
    assert response.json()["error"]["code"] == "unavailable"
