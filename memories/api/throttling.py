"""Per API key rate limits: DRF throttling, counted in Redis in a sliding window.

THROTTLE_RATE (REST_FRAMEWORK's DEFAULT_THROTTLE_RATES["api_key"]), e.g.
`6000/min`, limits each API key; a request past it gets a 429 with
Retry-After and the API's error body. Unset, empty or 0: no limit.

The window slides (memories.cache.WindowCounter): a count per fixed window,
plus the previous window's count weighted by the share of it that the last
`period` seconds still cover, so a burst at a window's edge cannot pass twice
the rate. A refused request is not counted: a client that waits Retry-After
gets through.

What it costs. DRF's SimpleRateThrottle keeps a pickled list of timestamps
per client (a GET and a SET, and O(n) work in the rate). Here a count is one
Lua call (MGET, INCR, PEXPIRE), and a read (GET, HEAD) makes it on its first
Redis round trip (memories.cache.ride_counter), as its API key's check does:
a limited read costs no round trip more (bench/throttle.py). Its verdict then
waits for the view, and DeferredThrottleMiddleware answers 429 instead of the
view's response. A key refused is remembered in its process until its
Retry-After, so its next requests are refused at once, before the view and
without counting: a client hammering expensive reads (a new search embeds its
query) costs one of them per process and wait. A write is counted before it
acts, on a round trip of its own.

Redis down or its breaker open: the request goes through. The service
degrades; it does not refuse.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.http import HttpRequest, HttpResponseBase, JsonResponse
from rest_framework import exceptions
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

from memories.api.auth import Caller
from memories.cache import CacheUnavailable, Rider, WindowCounter, ride_counter, tiered_cache
from memoryproject.env import parse_rate

if TYPE_CHECKING:
    # Not at run time: rest_framework.views imports this module (DEFAULT_THROTTLE_CLASSES).
    from rest_framework.views import APIView

SCOPE = "api_key"
_DEFERRED_ATTRIBUTE = "memoryproject_deferred_throttle"
# (key id, requests, period) -> time.time() until which this process refuses the key.
_refused: dict[tuple[int, int, int], float] = {}
# Past this many keys refused at once, the memo is emptied: each key is then
# asked of Redis again, which still refuses it.
_REFUSED_MAX = 10_000


@functools.lru_cache(maxsize=8)
def _rate(text: str | None) -> tuple[int, int] | None:
    """(requests, period in seconds) of a rate; settings checked it at start-up (memoryproject.env.env_rate)."""
    return parse_rate(text) if text else None


@dataclass(frozen=True)
class _Window:
    """Where a key's request of `now` is counted, for a rate of `requests` per `period` seconds."""

    key_id: int
    requests: int
    period: int
    now: float

    @property
    def elapsed(self) -> float:
        """Seconds since the current window began."""
        return self.now % self.period

    @property
    def counter(self) -> WindowCounter:
        index = int(self.now // self.period)
        prefix = f"throttle:{self.key_id}:{self.period}"
        return WindowCounter(
            key=f"{prefix}:{index}",
            previous_key=f"{prefix}:{index - 1}",
            limit=self.requests,
            window_ms=self.period * 1000,
            previous_weight=1.0 - self.elapsed / self.period,
        )

    @property
    def memo(self) -> tuple[int, int, int]:
        return (self.key_id, self.requests, self.period)

    def retry_after(self, counted: tuple[int, int, int]) -> int:
        """Whole seconds until a refused key's next request would be counted, if it sends none meanwhile."""
        _, current, previous = counted
        if current < self.requests and previous:
            # In this window, once the previous window's weighted share has fallen enough.
            wait = self.period * (1.0 - (self.requests - current) / previous) - self.elapsed
        else:
            # In the next window, where this one's count, weighted, must fall below the limit.
            wait = self.period - self.elapsed + self.period * (1.0 - self.requests / max(current, self.requests))
        return max(1, math.ceil(wait + 0.001))

    def refuse(self, counted: tuple[int, int, int]) -> int:
        """Remember in this process that the key is refused; its Retry-After."""
        wait = self.retry_after(counted)
        if len(_refused) >= _REFUSED_MAX:
            _refused.clear()
        _refused[self.memo] = self.now + wait
        return wait


@dataclass(frozen=True)
class _Deferred:
    """A read's count, riding on its first Redis round trip; settled by DeferredThrottleMiddleware."""

    window: _Window
    rider: Rider


def _count(window: _Window) -> tuple[int, int, int] | None:
    """Count on a round trip of its own; None when Redis cannot (then nothing is refused)."""
    try:
        return tiered_cache().count(window.counter)
    except CacheUnavailable:
        return None


class ApiKeyRateThrottle(BaseThrottle):
    """THROTTLE_RATE per API key (see this module's docstring)."""

    scope = SCOPE

    def __init__(self) -> None:
        self._wait: int | None = None

    def allow_request(self, request: Request, view: APIView) -> bool:
        rate = _rate(api_settings.DEFAULT_THROTTLE_RATES.get(self.scope))
        who = request.user
        if rate is None or not isinstance(who, Caller):
            return True  # no limit, or no API key (the schema, an admin's session)
        window = _Window(key_id=who.key.pk, requests=rate[0], period=rate[1], now=time.time())
        until = _refused.get(window.memo)
        if until is not None:
            if window.now < until:
                self._wait = max(1, math.ceil(until - window.now))
                return False
            _refused.pop(window.memo, None)
        if request.method in SAFE_METHODS:
            rider = ride_counter(window.counter)
            if rider is not None:
                setattr(request._request, _DEFERRED_ATTRIBUTE, _Deferred(window=window, rider=rider))
                return True
        counted = _count(window)
        if counted is None or counted[0]:
            return True
        self._wait = window.refuse(counted)
        return False

    def wait(self) -> float | None:
        return self._wait


def too_many_requests(wait: int) -> JsonResponse:
    """The 429 DRF's Throttled gets from memories.api.errors, for a response made outside DRF."""
    message = str(exceptions.Throttled(wait).detail)
    response = JsonResponse({"error": {"code": "rate_limited", "message": message}}, status=429)
    response["Retry-After"] = str(wait)
    return response


class DeferredThrottleMiddleware:
    """Settles the counts that reads made on their first Redis round trip (see
    this module's docstring): a read past its key's limit gets a 429 instead of
    its response. Outside DeferredKeyCheckMiddleware: an invalid key keeps its 401."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        deferred: _Deferred | None = getattr(request, _DEFERRED_ATTRIBUTE, None)
        if deferred is None or response.status_code == 401:
            return response
        # Nothing carried it (the view read nothing from Redis): counted now.
        counted = deferred.rider.counted or _count(deferred.window)
        if counted is None or counted[0]:
            return response
        return too_many_requests(deferred.window.refuse(counted))


def _rate_limited_response() -> dict[str, Any]:
    return {
        "description": "Too many requests for this API key (THROTTLE_RATE); try again after Retry-After seconds.",
        "headers": {
            "Retry-After": {"description": "Seconds to wait before the next request.", "schema": {"type": "integer"}}
        },
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def document_rate_limit(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular's postprocessing hook: every operation that takes an API key may answer 429."""
    for path in result.get("paths", {}).values():
        for operation in path.values():
            if any("ApiKey" in requirement for requirement in operation.get("security", [])):
                # A copy each: a shared one would be written as YAML anchors.
                operation["responses"].setdefault("429", _rate_limited_response())
    return result
