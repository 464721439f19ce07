"""The embedded PostgreSQL's memory settings (memoryproject.embedded)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from memoryproject import embedded
from memoryproject.env import env_str
from tests.servers import embedded_running, own_environ, run_python, stop_embedded

_SHOW = (
    "from memoryproject import embedded; import psycopg;"
    " url = embedded.attach(postgres=True, valkey=False).database_url;"
    " print(psycopg.connect(url).execute('SHOW shared_buffers').fetchone()[0])"
)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Under /tmp, whose short paths keep the sockets inside the AF_UNIX limit.
    path = Path(tempfile.mkdtemp(prefix="mp-pg-"))
    yield path
    if embedded_running(path):
        stop_embedded(path, own_environ(path))
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.django_db
def test_the_embedded_database_runs_with_the_configured_shared_buffers() -> None:
    if not settings.EMBEDDED or env_str("DATABASE_URL"):
        pytest.skip("the tests run on a PostgreSQL of their own (DATABASE_URL), not the embedded one")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_size_bytes(current_setting('shared_buffers'))")
        (buffers,) = cursor.fetchone()
    assert buffers == embedded.configured_shared_buffers_mb() * 2**20


def test_the_default_is_an_eighth_of_the_memory_within_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBEDDED_POSTGRES_SHARED_BUFFERS_MB", raising=False)
    for memory_mb, expected in ((512, 128), (8 * 1024, 1024), (64 * 1024, 2048)):
        monkeypatch.setattr(embedded, "machine_memory_mb", lambda memory_mb=memory_mb: memory_mb)
        assert embedded.configured_shared_buffers_mb() == expected


def test_a_new_cluster_gets_the_setting_and_falls_back_when_it_cannot_start(data_dir: Path) -> None:
    environ = own_environ(data_dir)

    created = run_python("-c", _SHOW, env={**environ, "EMBEDDED_POSTGRES_SHARED_BUFFERS_MB": "256"})
    # No machine here has a terabyte of shared memory to give: it starts without the setting, and says so.
    refused = run_python("-c", _SHOW, env={**environ, "EMBEDDED_POSTGRES_SHARED_BUFFERS_MB": "1048576"})
    again = run_python("-c", _SHOW, env={**environ, "EMBEDDED_POSTGRES_SHARED_BUFFERS_MB": "192"})

    assert created.stdout.strip() == "256MB", created.stderr
    assert refused.stdout.strip() == "128MB", refused.stderr
    assert "EMBEDDED_POSTGRES_SHARED_BUFFERS_MB lower" in refused.stderr
    assert again.stdout.strip() == "192MB", again.stderr
    assert not embedded_running(data_dir), "the last process attached stops the server"
