"""Per API key rate limits (memories.api.throttling): 429 with Retry-After past
the limit, per key, counted on a read's first Redis round trip, open when Redis is down."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rest_framework.test import APIClient

from memories.api import throttling
from memories.cache import tiered_cache
from memories.models import ApiKey, Memory
from tests.conftest import spy_redis_commands
from tests.factories import AccountWithKey, make_memory

pytestmark = pytest.mark.django_db

# A minute's start, in the future of any real clock: windows of our own.
MINUTE = 60 * 40_000_000


@dataclass
class Clock:
    """The throttle's time.time(), moved by the test."""

    now: float

    def time(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _forget_refused_keys() -> Iterator[None]:
    yield
    throttling._refused.clear()


@pytest.fixture
def rate(settings: Any) -> Callable[[str], None]:
    def set_rate(value: str) -> None:
        settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"api_key": value}}

    return set_rate


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A clock of the test's own: no window ends between two requests unless the test says so."""
    clock = Clock(now=MINUTE + 10.0)
    monkeypatch.setattr(throttling, "time", clock)
    return clock


def _client(raw_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def _read(account: AccountWithKey) -> str:
    return f"/memory/memories/{make_memory(account.account, 'User likes tea').id}"


def _write(api: APIClient, n: int) -> Any:
    return api.post("/memory/memories", {"user_id": "u1", "content": f"fact number {n}"}, format="json")


def _assert_rate_limited(response: Any) -> int:
    assert response.status_code == 429, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == "rate_limited"
    assert "throttled" in error["message"]
    wait = int(response["Retry-After"])
    assert wait >= 1
    return wait


def test_a_read_past_the_limit_gets_429_with_retry_after_and_no_data(
    api: APIClient, account: AccountWithKey, rate: Callable[[str], None]
) -> None:
    path = _read(account)
    rate("3/min")
    assert [api.get(path).status_code for _ in range(3)] == [200, 200, 200]

    response = api.get(path)

    assert _assert_rate_limited(response) <= 60
    assert b"tea" not in response.content


def test_a_write_past_the_limit_gets_429_and_stores_nothing(
    api: APIClient, account: AccountWithKey, rate: Callable[[str], None]
) -> None:
    rate("2/min")
    assert [_write(api, n).status_code for n in range(2)] == [201, 201]

    _assert_rate_limited(_write(api, 2))

    assert Memory.objects.count() == 2


def test_limits_are_per_key(
    api: APIClient, account: AccountWithKey, other_api: APIClient, rate: Callable[[str], None]
) -> None:
    path = _read(account)
    rate("2/min")
    for _ in range(2):
        api.get(path)
    _assert_rate_limited(api.get(path))

    _, second_key = ApiKey.generate(account=account.account, name="second")
    assert _client(second_key).get(path).status_code == 200  # the same account, another key
    assert other_api.get("/memory/memories?user_id=u1").status_code == 200  # another account


def test_without_a_rate_nothing_is_limited(
    api: APIClient, account: AccountWithKey, rate: Callable[[str], None]
) -> None:
    path = _read(account)
    for value in ("", "0"):
        rate(value)
        assert {api.get(path).status_code for _ in range(20)} == {200}


def test_a_refused_request_is_not_counted_and_retry_after_is_enough(
    api: APIClient, account: AccountWithKey, rate: Callable[[str], None], clock: Clock
) -> None:
    path = _read(account)
    rate("2/min")
    api.get(path)
    api.get(path)
    wait = _assert_rate_limited(api.get(path))
    _assert_rate_limited(api.get(path))  # refused in this process, before the view

    clock.now += wait - 1
    _assert_rate_limited(api.get(path))
    clock.now += 1

    assert api.get(path).status_code == 200


def test_a_burst_at_a_windows_edge_does_not_pass_twice_the_rate(
    api: APIClient, account: AccountWithKey, rate: Callable[[str], None], clock: Clock
) -> None:
    path = _read(account)
    rate("2/min")
    clock.now = MINUTE + 59.0
    assert [api.get(path).status_code for _ in range(2)] == [200, 200]
    clock.now = MINUTE + 61.0  # a fixed window would start afresh here

    # The last minute already holds almost 2 (59/60 of the previous window's 2): one more, not two.
    assert api.get(path).status_code == 200
    _assert_rate_limited(api.get(path))


@pytest.fixture
def redis_down(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every call of the cache goes to a port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        # No retries: redis-py's default policy would retry each call for about 4 s.
        dead = Redis(host="127.0.0.1", port=sock.getsockname()[1], retry=Retry(NoBackoff(), 0))
        monkeypatch.setattr(tiered_cache(), "_redis", lambda: dead)
        yield


def test_with_redis_down_requests_still_answer(
    api: APIClient, account: AccountWithKey, rate: Callable[[str], None], redis_down: None
) -> None:
    path = _read(account)
    rate("1/min")

    assert [api.get(path).status_code for _ in range(3)] == [200, 200, 200]
    assert [_write(api, n).status_code for n in range(3)] == [201, 201, 201]


@pytest.mark.parametrize("warm", ["redis", "l1"])
def test_a_limited_cached_read_costs_one_redis_round_trip(
    api: APIClient,
    account: AccountWithKey,
    rate: Callable[[str], None],
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    warm: str,
) -> None:
    # Through the settings fixture, as the rate: override_settings around it would leak what the fixture sets.
    settings.ACCESS_TRACKING = {**settings.ACCESS_TRACKING, "ENABLED": False}
    path = _read(account)
    rate("1000/min")
    for _ in range(2):  # the key's last use written, then the key and the memory cached
        assert api.get(path).status_code == 200
    cache = tiered_cache()
    if warm == "redis":  # as in a worker that has not served this memory yet
        for key in [key for key in cache.local._entries if not key.startswith("c:auth:")]:
            cache.local.delete(key)
    commands = spy_redis_commands(monkeypatch)

    assert api.get(path).status_code == 200

    # The memory (or its user's token), the key's token and the count: one script.
    assert commands == ["EVALSHA"], commands
    assert [int(count) for count in _throttle_counts(cache._redis()).values()] == [3]


def _throttle_counts(client: Redis) -> dict[bytes, bytes]:
    keys = sorted(client.scan_iter(match="throttle:*"))
    return dict(zip(keys, client.mget(keys), strict=True))


def test_the_schema_documents_429_on_every_operation_that_takes_a_key() -> None:
    out = StringIO()
    call_command("spectacular", "--format", "openapi-json", stdout=out)
    schema = json.loads(out.getvalue())

    operations = [operation for path in schema["paths"].values() for operation in path.values()]
    keyed = [operation for operation in operations if {"ApiKey": []} in operation.get("security", [])]
    assert keyed
    for operation in keyed:
        response = operation["responses"]["429"]
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
        assert "Retry-After" in response["headers"]
    assert all("429" not in operation["responses"] for operation in operations if operation not in keyed)
