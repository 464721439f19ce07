"""API keys: a read defers its key's check to its first Redis round trip, and a revoked key still gets its 401."""

from __future__ import annotations

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from memories.cache import tiered_cache
from memories.models import ApiKey, Memory
from tests.conftest import spy_redis_commands
from tests.factories import AccountWithKey, make_account, make_memory

pytestmark = pytest.mark.django_db


def _reads(account: AccountWithKey) -> dict[str, str]:
    """A read of each kind: its key's token rides on the data's read (by id,
    list), or nothing carries it (an endpoint of another kind)."""
    memory = make_memory(account.account, "User likes tea")
    return {
        "by id": f"/memory/memories/{memory.id}",
        "list": "/memory/memories?user_id=u1",
        "other": "/api/memory/default/processing_status",
    }


def _cache_key_here(api: APIClient, path: str) -> None:
    """Two reads: the first writes the key's last use, which drops its cached copy; the second caches it."""
    for _ in range(2):
        assert api.get(path).status_code == 200


def _revoke_elsewhere(account: AccountWithKey) -> None:
    """As another process (the admin, another worker) revokes it: this process's L1 still holds the key."""
    account.key.revoked_at = account.key.created_at
    account.key.save()


@pytest.mark.parametrize("read", ["by id", "list", "other"])
def test_a_key_revoked_elsewhere_gets_401_on_its_next_read(api: APIClient, account: AccountWithKey, read: str) -> None:
    path = _reads(account)[read]
    _cache_key_here(api, path)
    _revoke_elsewhere(account)

    response = api.get(path)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    assert b"tea" not in response.content


@pytest.mark.parametrize("read", ["by id", "list", "other"])
def test_a_change_to_another_key_leaves_this_one_valid(api: APIClient, account: AccountWithKey, read: str) -> None:
    path = _reads(account)[read]
    _cache_key_here(api, path)
    ApiKey.generate(account=make_account("other").account, name="new")  # replaces the keys' token

    assert api.get(path).status_code == 200


def test_a_write_with_a_revoked_key_is_refused_before_it_acts(api: APIClient, account: AccountWithKey) -> None:
    _cache_key_here(api, "/memory/memories?user_id=u1")
    _revoke_elsewhere(account)

    response = api.post("/memory/memories", {"user_id": "u1", "content": "User likes tea"}, format="json")

    assert response.status_code == 401
    assert not Memory.objects.exists()


def _open_breaker() -> None:
    tiered_cache().breaker.trip()


def test_without_redis_the_deferred_check_asks_postgresql(api: APIClient, account: AccountWithKey) -> None:
    path = _reads(account)["by id"]
    _cache_key_here(api, path)
    _open_breaker()
    assert api.get(path).status_code == 200

    # Revoked without a signal (as by SQL): only PostgreSQL knows.
    ApiKey.objects.filter(pk=account.key.pk).update(revoked_at=account.key.created_at)

    assert api.get(path).status_code == 401


@override_settings(ACCESS_TRACKING={"ENABLED": False})
@pytest.mark.parametrize("read", ["by id", "list"])
def test_a_cached_read_costs_one_redis_round_trip_key_check_included(
    api: APIClient, account: AccountWithKey, monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    path = _reads(account)[read]
    _cache_key_here(api, path)  # key and data cached, in L1 and Redis
    cache = tiered_cache()
    for key in [key for key in cache.local._entries if not key.startswith("c:auth:")]:
        cache.local.delete(key)  # as in a worker that has not served this user yet
    commands = spy_redis_commands(monkeypatch)

    response = api.get(path)

    assert "User likes tea" in response.content.decode()
    assert commands == ["EVALSHA"], commands
