"""Liveness, readiness and the JSON error pages, against the real PostgreSQL, Valkey and model."""

from __future__ import annotations

import copy
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import Client, RequestFactory, override_settings

from memoryproject import errors
from memoryproject.health import overall_status


def test_health_touches_no_dependency(client: Client) -> None:
    # No django_db mark: pytest-django refuses database access, so a liveness
    # probe that queried the database would fail here.
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db
def test_ready_reports_every_dependency_ok(client: Client) -> None:
    response = client.get("/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    checks = body["checks"]
    assert set(checks) == {"database", "cache", "embedder"}
    assert all(check["status"] == "ok" for check in checks.values()), checks
    assert all(check["latency_ms"] >= 0 for check in checks.values())
    assert checks["embedder"]["model"] == settings.EMBEDDING["MODEL"]
    assert checks["embedder"]["dimensions"] == 384


@pytest.fixture
def dead_redis_url() -> Iterator[str]:
    """A local port that refuses connections: bound (so nothing else takes it) but not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


@pytest.mark.django_db
def test_ready_is_degraded_but_serving_without_the_cache(client: Client, dead_redis_url: str) -> None:
    from django_redis import get_redis_connection

    caches: dict[str, Any] = copy.deepcopy(settings.CACHES)
    caches["default"]["LOCATION"] = dead_redis_url
    with override_settings(CACHES=caches):
        try:
            started = time.monotonic()
            response = client.get("/ready")
            elapsed = time.monotonic() - started
        finally:
            get_redis_connection("default").connection_pool.disconnect()

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    cache = body["checks"]["cache"]
    assert cache["status"] == "degraded"
    assert "ConnectionError" in cache["error"]
    assert body["checks"]["database"]["status"] == "ok"
    # redis-py's own default policy retries ten times with backoff (about 4 s):
    # the probe must answer fast because it goes through django-redis's pool.
    assert elapsed < 2.0


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        (("ok", "ok", "ok"), ("ready", 200)),
        (("ok", "degraded", "ok"), ("degraded", 200)),
        (("ok", "degraded", "degraded"), ("degraded", 200)),
        (("unavailable", "ok", "ok"), ("unavailable", 503)),
        (("unavailable", "degraded", "ok"), ("unavailable", 503)),
    ],
)
def test_overall_status(statuses: tuple[str, str, str], expected: tuple[str, int]) -> None:
    checks = {
        name: {"status": status} for name, status in zip(("database", "cache", "embedder"), statuses, strict=True)
    }
    assert overall_status(checks) == expected


@pytest.mark.parametrize("path", ["/health", "/ready"])
def test_probes_answer_only_get(client: Client, path: str) -> None:
    response = client.post(path)
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert response["Allow"] == "GET, HEAD"


def test_unknown_path_is_a_json_404(client: Client) -> None:
    response = client.get("/no/such/page")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"error": {"code": "not_found", "message": "Nothing is found at /no/such/page."}}


def test_bad_host_is_a_json_400_that_does_not_echo_it(client: Client) -> None:
    response = client.get("/health", HTTP_HOST="evil.example")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"
    assert "evil.example" not in response.content.decode()


def test_server_error_is_json() -> None:
    response = errors.server_error(RequestFactory().get("/anything"))
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert b'"code": "server_error"' in response.content
