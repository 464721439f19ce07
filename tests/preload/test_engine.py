"""Preloading writes a user's hot memories where the read path finds them, and nobody else's."""

from __future__ import annotations

import dataclasses
import socket
from typing import Any

import orjson
import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django_redis import get_redis_connection

from memories import selectors, services
from memories.cache import CacheUnavailable, tiered_cache
from memories.models import Account, Memory
from preload.config import EffectiveConfig, resolve_config
from preload.engine import preload_user, strategy_key
from preload.options import Strategy
from tests.factories import AccountWithKey, make_memory

pytestmark = pytest.mark.django_db


def _config(account: Account, user_id: str = "u1") -> EffectiveConfig:
    return resolve_config(account_id=account.id, namespace="default", user_id=user_id)


def _preload(account: Account, user_id: str = "u1", **kwargs: Any) -> Any:
    return preload_user(
        account=account, namespace="default", user_id=user_id, config=_config(account, user_id), **kwargs
    )


def test_preload_keys_hold_only_the_users_memories(account: AccountWithKey, other_account: AccountWithKey) -> None:
    mine = {make_memory(account.account, f"mine {n}", importance=0.9).id for n in range(3)}
    make_memory(account.account, "another user's", user_id="u2", importance=0.9)
    make_memory(other_account.account, "another account's", importance=0.9)

    result = _preload(account.account)

    redis = get_redis_connection("default")
    assert result.memories == 3
    for key in result.keys:
        assert key.startswith(f"preload:{account.account.id}:default:u1:")
        assert {str(memory_id) for memory_id in mine} >= set(orjson.loads(redis.get(key)))
    recent = strategy_key(account_id=account.account.id, namespace="default", user_id="u1", strategy="recent")
    assert set(orjson.loads(redis.get(recent))) == {str(memory_id) for memory_id in mine}
    assert redis.ttl(recent) <= 7200


def test_a_preloaded_memory_is_read_without_a_query(account: AccountWithKey) -> None:
    memory = make_memory(account.account, "User flies to Lisbon monthly", importance=0.9)
    _preload(account.account)
    tiered_cache().local.clear()  # as in a freshly started worker: only Redis has it

    with CaptureQueriesContext(connection) as queries:
        found = selectors.memory_get(account=account.account, memory_id=memory.id)

    assert found.content == "User flies to Lisbon monthly"
    # (At most the cache's periodic look for pending invalidations runs.)
    assert [q["sql"] for q in queries.captured_queries if "memories_memory" in q["sql"]] == []


def test_a_write_after_the_preload_is_seen(account: AccountWithKey) -> None:
    memory = make_memory(account.account, "User likes tea", importance=0.9)
    _preload(account.account)

    services.memory_update(memory=memory, changes={"content": "User likes coffee"}, actor="test")

    assert selectors.memory_get(account=account.account, memory_id=memory.id).content == "User likes coffee"


def test_expired_memories_are_not_preloaded(account: AccountWithKey) -> None:
    make_memory(account.account, "kept", importance=0.9)
    gone = make_memory(account.account, "expired", importance=0.9)
    Memory.objects.filter(pk=gone.pk).update(expires_at="2000-01-01T00:00:00Z")

    assert _preload(account.account).memories == 1


def test_dry_run_writes_nothing(account: AccountWithKey) -> None:
    make_memory(account.account, "User likes tea", importance=0.9)

    result = _preload(account.account, dry_run=True)

    assert result.memories == 1
    assert get_redis_connection("default").keys("preload:*") == []


def test_without_redis_preloading_fails_with_cache_unavailable(account: AccountWithKey) -> None:
    make_memory(account.account, "User likes tea", importance=0.9)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    caches = {"default": {**settings.CACHES["default"], "LOCATION": f"redis://127.0.0.1:{port}/0"}}

    with override_settings(CACHES=caches), pytest.raises(CacheUnavailable):
        _preload(account.account)


def test_reads_of_preloaded_users_count_as_preload_hits_or_misses(account: AccountWithKey, api: Any) -> None:
    preloaded = make_memory(account.account, "User flies to Lisbon monthly", importance=0.9)
    not_chosen = make_memory(account.account, "Old and unimportant", importance=0.1)
    Memory.objects.filter(pk=not_chosen.pk).update(created_at="2001-01-01T00:00:00Z")
    _preload(account.account)
    tiered_cache().local.clear()

    api.get(f"/memory/memories/{preloaded.id}")  # served by the preload
    api.get(f"/memory/memories/{not_chosen.id}")  # the user is preloaded, this memory was not

    assert api.get("/memory/preload/status").json()["hit_rate"] == {"hits": 1, "misses": 1, "hit_rate": 0.5}
    assert api.get("/memory/cache/stats").json()["preload"]["hits"] == 1


@pytest.fixture
def page_of_three(settings: Any) -> None:
    settings.MEMORY = {**settings.MEMORY, "DEFAULT_PAGE_SIZE": 3}


@pytest.mark.usefixtures("page_of_three")
def test_a_preloaded_users_first_list_page_is_served_without_a_query(account: AccountWithKey, api: Any) -> None:
    for n in range(5):
        make_memory(account.account, f"User fact {n}", importance=0.9)
    assert _preload(account.account).list_page
    tiered_cache().local.clear()

    with CaptureQueriesContext(connection) as queries:
        preloaded = api.get("/memory/memories", {"user_id": "u1"}).json()

    assert [q["sql"] for q in queries.captured_queries if "memories_memory" in q["sql"]] == []
    tiered_cache().clear()
    from_database = api.get("/memory/memories", {"user_id": "u1"}).json()
    assert preloaded == from_database
    assert len(preloaded["results"]) == 3
    rest = api.get("/memory/memories", {"user_id": "u1", "cursor": preloaded["next_cursor"]}).json()
    assert [m["content"] for m in rest["results"]] == ["User fact 1", "User fact 0"]


@pytest.mark.usefixtures("page_of_three")
def test_no_list_page_is_preloaded_when_a_memory_on_it_was_not_chosen(account: AccountWithKey) -> None:
    for n in range(3):
        make_memory(account.account, f"User fact {n}", importance=0.9)
    # The newest memory, but nothing any strategy picks: old and unimportant.
    newest = make_memory(account.account, "Newest but unchosen", importance=0.0)
    Memory.objects.filter(pk=newest.pk).update(created_at="2100-01-01T00:00:00Z")
    config = dataclasses.replace(_config(account.account), strategies=(Strategy.IMPORTANT,))

    result = preload_user(account=account.account, namespace="default", user_id="u1", config=config)

    assert result.memories == 3
    assert not result.list_page
    assert get_redis_connection("default").keys("c:list:*") == []


def test_a_write_after_the_preload_shows_in_the_list(account: AccountWithKey, api: Any) -> None:
    make_memory(account.account, "User likes tea", importance=0.9)
    _preload(account.account)

    api.post("/memory/memories", {"user_id": "u1", "content": "User moved to Porto"}, format="json")

    contents = [m["content"] for m in api.get("/memory/memories", {"user_id": "u1"}).json()["results"]]
    assert contents == ["User moved to Porto", "User likes tea"]


def test_list_reads_of_preloaded_users_count_as_preload_hits_or_misses(account: AccountWithKey, api: Any) -> None:
    make_memory(account.account, "User likes tea", importance=0.9)
    _preload(account.account)
    tiered_cache().local.clear()

    api.get("/memory/memories", {"user_id": "u1"})  # the preloaded page
    api.get("/memory/memories", {"user_id": "u1", "kind": "fact"})  # a page the preload did not make

    assert api.get("/memory/preload/status").json()["hit_rate"] == {"hits": 1, "misses": 1, "hit_rate": 0.5}
