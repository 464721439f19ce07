"""Timeouts of what the service waits for: the API's statements and the Redis pool."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.db import OperationalError, connection, transaction
from django_redis import get_redis_connection
from redis import BlockingConnectionPool

from memories.api.errors import exception_handler
from tests.servers import run_python

SHOW_TIMEOUT = (
    "import django; django.setup();"
    "from django.db import connection;"
    "cursor = connection.cursor(); cursor.execute('SHOW statement_timeout'); print(cursor.fetchone()[0])"
)


def _statement_timeout(environ: dict[str, str]) -> str:
    done = run_python("-c", SHOW_TIMEOUT, env=environ, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_web_processes_connect_with_the_api_statement_timeout(subprocess_env: dict[str, str]) -> None:
    web = {**subprocess_env, "MEMORYPROJECT_ROLE": "web", "API_STATEMENT_TIMEOUT_MS": "1234"}

    assert _statement_timeout(web) == "1234ms"


def test_jobs_and_commands_run_without_it(subprocess_env: dict[str, str]) -> None:
    job = {**subprocess_env, "API_STATEMENT_TIMEOUT_MS": "1234"}
    job.pop("MEMORYPROJECT_ROLE", None)

    assert _statement_timeout(job) == "0"


def _sleep_past(*, timeout_ms: int) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL statement_timeout = {timeout_ms}")
        cursor.execute("SELECT pg_sleep(2)")


@pytest.mark.django_db
def test_a_statement_cut_off_by_the_timeout_is_a_503_with_retry_after() -> None:
    with pytest.raises(OperationalError) as cancelled:
        _sleep_past(timeout_ms=20)

    response = exception_handler(cancelled.value, {})

    assert response is not None
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.data["error"]["message"].startswith("The database took too long to answer")


def test_the_redis_pool_is_bounded_and_waits_no_longer_than_a_command() -> None:
    pool = get_redis_connection("default").connection_pool
    options: Any = settings.CACHES["default"]["OPTIONS"]

    assert isinstance(pool, BlockingConnectionPool)
    assert pool.max_connections == options["CONNECTION_POOL_KWARGS"]["max_connections"]
    assert pool.timeout == options["SOCKET_TIMEOUT"]
