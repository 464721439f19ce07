"""Liveness and readiness probes: plain Django views, no authentication, JSON.

`/health` only proves the process answers. `/ready` checks each dependency
and says how bad a failure is: without Redis the service still answers from
PostgreSQL (degraded, 200); without the embedding model writes keep their text
and are embedded later (degraded, 200); without PostgreSQL nothing works (503).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt

from memoryproject.errors import error_response

logger = logging.getLogger(__name__)

CheckStatus = Literal["ok", "degraded", "unavailable"]
Check = dict[str, Any]
View = Callable[[HttpRequest], HttpResponse]

_ALLOWED_METHODS = ("GET", "HEAD")


def _probe(view: Callable[[HttpRequest], JsonResponse]) -> View:
    """GET/HEAD only, answered in JSON; never cached; exempt from CSRF so that a POST gets its 405."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest) -> HttpResponse:
        if request.method not in _ALLOWED_METHODS:
            response = error_response(405, "method_not_allowed", f"Method {request.method} is not allowed here.")
            response["Allow"] = ", ".join(_ALLOWED_METHODS)
            return response
        return view(request)

    return csrf_exempt(never_cache(wrapper))


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _failed(status: CheckStatus, started: float, error: Exception) -> Check:
    return {"status": status, "latency_ms": _elapsed_ms(started), "error": f"{type(error).__name__}: {error}"}


def check_database() -> Check:
    started = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as error:
        logger.warning("readiness: database check failed: %s", error)
        return _failed("unavailable", started, error)
    return {"status": "ok", "latency_ms": _elapsed_ms(started)}


def check_cache() -> Check:
    # The client is django-redis's own, so the probe goes through the same pool,
    # URL and (short) socket timeouts as every cache call, and it is not
    # silenced by IGNORE_EXCEPTIONS the way cache.get() would be.
    from django_redis import get_redis_connection

    started = time.perf_counter()
    try:
        client = get_redis_connection("default")
        # The first call builds the client (imports, pool): not the cache's latency.
        started = time.perf_counter()
        client.ping()
    except Exception as error:
        logger.warning("readiness: cache check failed: %s", error)
        return _failed("degraded", started, error)
    return {"status": "ok", "latency_ms": _elapsed_ms(started)}


def check_embedder() -> Check:
    started = time.perf_counter()
    try:
        # Imported here: the embedding package pulls in numpy and the model code,
        # which a liveness probe or an unrelated import should not pay for.
        from memories.embedding import get_embedder

        embedder = get_embedder()
    except Exception as error:
        logger.warning("readiness: embedder check failed: %s", error)
        return _failed("degraded", started, error)
    return {
        "status": "ok",
        "latency_ms": _elapsed_ms(started),
        "model": embedder.model_name,
        "dimensions": embedder.dimensions,
    }


def overall_status(checks: dict[str, Check]) -> tuple[str, int]:
    """The probe's status and HTTP code: any unavailable dependency fails it, a degraded one does not."""
    statuses = {check["status"] for check in checks.values()}
    if "unavailable" in statuses:
        return "unavailable", 503
    if "degraded" in statuses:
        return "degraded", 200
    return "ready", 200


@_probe
def health(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Touches no dependency, so a database outage never restarts it."""
    return JsonResponse({"status": "ok"})


@_probe
def ready(request: HttpRequest) -> JsonResponse:
    """Readiness: the state of the database, the cache and the embedding model."""
    checks = {"database": check_database(), "cache": check_cache(), "embedder": check_embedder()}
    status, code = overall_status(checks)
    return JsonResponse({"status": status, "checks": checks}, status=code)
