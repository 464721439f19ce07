"""The read cache: served from the tiers, never stale, and PostgreSQL when Redis is gone."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.db import connection, connections
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django_redis import get_redis_connection
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from memories import selectors
from memories.access import send_queued_records
from memories.cache import LocalCache, cache_key, memory_key_sql, prefetch, riding_tokens, tiered_cache
from memories.models import Memory, PendingInvalidation
from memories.selectors import MemoryFilters
from memoryproject.embedded import start_valkey, stop_valkey
from tests.factories import AccountWithKey
from tests.servers import redis_down_caches

ROOT = Path(__file__).resolve().parent.parent.parent


def _store(api: APIClient, content: str, user_id: str = "u1", **fields: Any) -> dict[str, Any]:
    response = api.post("/memory/memories", {"user_id": user_id, "content": content, **fields}, format="json")
    assert response.status_code == 201, response.json()
    body: dict[str, Any] = response.json()
    return body


def _stats(api: APIClient) -> dict[str, Any]:
    response = api.get("/memory/cache/stats")
    assert response.status_code == 200, response.content
    types: dict[str, Any] = response.json()["types"]
    return types


# -- L1 -----------------------------------------------------------------------------------------


def test_local_cache_evicts_least_recently_used_by_bytes() -> None:
    local = LocalCache(max_bytes=300, idle_seconds=60)
    for name in "abc":
        local.set(name, b"x" * 99, kind="memory", ttl=60)
    assert local.get("a") is not None  # a is now the most recently used
    local.set("d", b"x" * 99, kind="memory", ttl=60)

    assert local.get("b") is None
    assert local.get("a") is not None
    assert local.sizes()["memory"] == (3, 300)


def test_local_cache_entries_die_at_ttl_and_when_idle() -> None:
    local = LocalCache(max_bytes=1_000, idle_seconds=0.05)
    local.set("short", b"1", kind="list", ttl=0.05)
    local.set("idle", b"2", kind="list", ttl=60)
    time.sleep(0.1)
    assert local.get("short") is None
    assert local.get("idle") is None
    assert local.sizes()["list"] == (0, 0)


# -- served from cache, invalidated by writes ----------------------------------------------------


@pytest.mark.django_db
def test_repeated_get_needs_no_database_query(api: APIClient) -> None:
    created = _store(api, "User likes green tea")
    url = f"/memory/memories/{created['id']}"
    api.get(url)  # fills the caches

    with CaptureQueriesContext(connection) as queries:
        response = api.get(url)

    assert response.status_code == 200
    assert response.json()["content"] == "User likes green tea"
    assert [query["sql"] for query in queries.captured_queries] == []


@pytest.mark.django_db
def test_repeated_list_and_search_are_hits(api: APIClient) -> None:
    _store(api, "User likes green tea")
    params = {"user_id": "u1", "query": "hot drinks"}
    for _ in range(3):
        assert api.get("/memory/memories", {"user_id": "u1"}).status_code == 200
        assert api.get("/memory/relevant", params).status_code == 200

    stats = _stats(api)
    assert stats["list"]["tiers"]["l1"]["hits"] == 2
    assert stats["search"]["tiers"]["l1"]["hits"] == 2
    assert stats["list"]["tiers"]["l2"]["entries"] == 1


@pytest.mark.django_db
def test_every_write_is_seen_by_the_next_read(api: APIClient) -> None:
    first = _store(api, "User likes green tea")
    url = f"/memory/memories/{first['id']}"

    def listed() -> list[str]:
        return [m["content"] for m in api.get("/memory/memories", {"user_id": "u1"}).json()["results"]]

    def found() -> list[str]:
        return [
            m["content"] for m in api.get("/memory/relevant", {"user_id": "u1", "query": "drink"}).json()["results"]
        ]

    assert listed() == ["User likes green tea"]
    assert found() == ["User likes green tea"]
    api.patch(url, {"content": "User likes black coffee"}, format="json")
    assert api.get(url).json()["content"] == "User likes black coffee"
    assert listed() == ["User likes black coffee"]
    assert found() == ["User likes black coffee"]
    _store(api, "User drinks water at night")
    assert len(listed()) == 2
    api.post("/memory/memories/batch", {"memories": [{"user_id": "u1", "content": "User hates soda"}]}, format="json")
    assert len(listed()) == 3
    api.delete(url)
    assert api.get(url).status_code == 404
    assert "User likes black coffee" not in listed()


@pytest.mark.django_db
def test_cached_memory_is_never_served_to_another_account(api: APIClient, other_api: APIClient) -> None:
    created = _store(api, "A secret")
    url = f"/memory/memories/{created['id']}"
    api.get(url)
    api.get(url)

    assert other_api.get(url).status_code == 404


@pytest.mark.django_db
def test_expired_memory_is_not_served_from_cache(api: APIClient) -> None:
    created = _store(api, "Short-lived", ttl_seconds=1)
    url = f"/memory/memories/{created['id']}"
    assert api.get(url).status_code == 200
    time.sleep(1.1)
    assert api.get(url).status_code == 404
    assert api.get("/memory/memories", {"user_id": "u1"}).json()["results"] == []


@pytest.mark.django_db
def test_revoked_key_is_refused_even_when_cached(api: APIClient, account: AccountWithKey) -> None:
    assert api.get("/memory/memories", {"user_id": "u1"}).status_code == 200
    account.key.revoked_at = account.key.created_at
    account.key.save()
    assert api.get("/memory/memories", {"user_id": "u1"}).status_code == 401


@pytest.mark.django_db
def test_admin_edit_is_seen_by_the_next_read(api: APIClient, admin_client: Any) -> None:
    created = _store(api, "User likes green tea")
    url = f"/memory/memories/{created['id']}"
    api.get(url)
    admin_client.post(
        "/admin/memories/memory/",
        {"action": "pin", "_selected_action": [created["id"]]},
    )
    assert api.get(url).json()["pinned"] is True


# -- other processes -----------------------------------------------------------------------------


def _run_worker(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.memories.cache_worker", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_write_from_another_process_is_seen_on_the_next_read(
    subprocess_env: dict[str, str], account: AccountWithKey, api: APIClient
) -> None:
    created = _store(api, "version 0")
    url = f"/memory/memories/{created['id']}"
    assert api.get(url).json()["content"] == "version 0"
    assert api.get(url).json()["content"] == "version 0"  # now in this process's L1

    writer = _run_worker(subprocess_env, "writer", created["id"], "1")
    output, _ = writer.communicate(timeout=120)

    assert writer.returncode == 0, output
    assert api.get(url).json()["content"] == "version 1"


def test_no_stale_read_under_concurrent_writes(
    subprocess_env: dict[str, str], account: AccountWithKey, api: APIClient
) -> None:
    """One writer process; two reader processes and two reader threads here, all
    reading through the cache. A read that starts after a write returned must
    see that write."""
    created = _store(api, "version 0")
    memory_id = created["id"]
    readers = [_run_worker(subprocess_env, "reader", memory_id, str(account.account.id), "8") for _ in range(2)]
    stale: list[str] = []

    def read_here() -> None:
        redis = get_redis_connection("default")
        try:
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                written = int(redis.get("test:cache-worker:written") or 0)
                content = selectors.memory_get(account=account.account, memory_id=created_id).content
                seen = int(content.rsplit(" ", 1)[1])
                if seen < written:
                    stale.append(f"saw {seen} after {written}")
        finally:
            connections.close_all()

    created_id = uuid.UUID(memory_id)
    threads = [threading.Thread(target=read_here) for _ in range(2)]
    for thread in threads:
        thread.start()
    writer = _run_worker(subprocess_env, "writer", memory_id, "40")
    writer_output, _ = writer.communicate(timeout=180)
    for thread in threads:
        thread.join(timeout=60)
    outputs = [reader.communicate(timeout=60)[0] for reader in readers]

    assert writer.returncode == 0, writer_output
    assert Memory.objects.get(pk=memory_id).content == "version 40"
    for reader, output in zip(readers, outputs, strict=True):
        assert reader.returncode == 0, output
        assert "stale=0" in output
    assert stale == []


# -- without Redis ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_api_answers_from_postgresql_while_redis_is_down_and_caches_again_after(api: APIClient, settings: Any) -> None:
    created = _store(api, "User likes green tea")
    url = f"/memory/memories/{created['id']}"
    api.get(url)
    breaker = tiered_cache().breaker
    breaker.cooldown = 0.2

    with override_settings(CACHES=redis_down_caches()):
        for _ in range(5):
            assert api.get(url).status_code == 200
            assert api.get("/memory/memories", {"user_id": "u1"}).status_code == 200
            assert api.get("/memory/relevant", {"user_id": "u1", "query": "tea"}).status_code == 200
        assert breaker.is_open
        assert api.get("/ready").json()["checks"]["cache"]["status"] == "degraded"

    time.sleep(0.3)
    api.get(url)
    with CaptureQueriesContext(connection) as queries:
        assert api.get(url).status_code == 200
    assert not breaker.is_open
    assert queries.captured_queries == []


@pytest.mark.django_db
def test_a_write_while_redis_is_down_is_not_hidden_by_the_cache_after(api: APIClient) -> None:
    created = _store(api, "User likes green tea")
    url = f"/memory/memories/{created['id']}"
    api.get(url)
    api.get(url)
    tiered_cache().breaker.cooldown = 0.1

    with override_settings(CACHES=redis_down_caches()):
        response = api.patch(url, {"content": "User likes black coffee"}, format="json")
        assert response.status_code == 200
    assert PendingInvalidation.objects.count() >= 1

    time.sleep(0.2)
    assert api.get(url).json()["content"] == "User likes black coffee"
    assert PendingInvalidation.objects.count() == 0


# -- stats and clear ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_stats_count_hits_and_misses_per_type_and_tier(api: APIClient) -> None:
    created = _store(api, "User likes green tea")
    for _ in range(3):
        api.get(f"/memory/memories/{created['id']}")

    memory = _stats(api)["memory"]["tiers"]

    assert memory["l1"]["hits"] == 2
    assert memory["l2"]["misses"] == 1
    assert memory["l1"]["entries"] == 1
    assert memory["l1"]["bytes"] > 0
    assert 0 < memory["l1"]["hit_rate"] < 1


@pytest.mark.django_db
def test_clear_is_for_staff_only(api: APIClient, client: Any) -> None:
    created = _store(api, "User likes green tea")
    api.get(f"/memory/memories/{created['id']}")
    assert api.post("/memory/cache/clear").status_code in (401, 403)
    staff = get_user_model().objects.create_user("ops", password="pw", is_staff=True)
    client.force_login(staff)

    assert client.post("/memory/cache/clear").status_code == 204
    assert _stats(api)["memory"]["tiers"]["l2"]["entries"] == 0


@pytest.mark.django_db
def test_filters_are_part_of_the_cache_key(api: APIClient, account: AccountWithKey) -> None:
    _store(api, "User likes tea", tags=["drinks"])
    _store(api, "User likes chess", tags=["games"])
    base = MemoryFilters(user_id="u1")
    games = MemoryFilters(user_id="u1", tags_any=["games"])

    everything = selectors.memory_list(account=account.account, filters=base, limit=10)
    only_games = selectors.memory_list(account=account.account, filters=games, limit=10)

    assert len(everything.ids) == 2
    assert [memory["content"] for memory in orjson.loads(only_games.results)] == ["User likes chess"]


@pytest.fixture
def own_valkey() -> Iterator[Path]:
    """A Valkey server of this test alone (so stopping it disturbs no other), the cache pointed at it."""
    directory = Path(tempfile.mkdtemp(prefix="mp-valkey-", dir="/tmp"))
    url = start_valkey(directory)
    caches = {"default": {**django_settings.CACHES["default"], "LOCATION": url}}
    try:
        with override_settings(CACHES=caches):
            yield directory
    finally:
        stop_valkey(directory)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.django_db
def test_redis_stopped_and_restarted_mid_test(api: APIClient, own_valkey: Path) -> None:
    """Stopped: every read answers 200 from PostgreSQL, and a write made meanwhile
    is recorded; restarted with its old data (entries and tokens survive): the
    write is seen, never the entries from before it, and reads hit again."""
    created = _store(api, "User likes green tea")
    url = f"/memory/memories/{created['id']}"
    api.get(url)
    assert api.get(url).json()["content"] == "User likes green tea"  # cached in L1 and L2
    breaker = tiered_cache().breaker
    breaker.cooldown = 0.2

    stop_valkey(own_valkey)
    for _ in range(3):
        assert api.get(url).status_code == 200
        assert api.get("/memory/memories", {"user_id": "u1"}).status_code == 200
        assert api.get("/memory/relevant", {"user_id": "u1", "query": "tea"}).status_code == 200
    assert api.patch(url, {"content": "User likes black coffee"}, format="json").status_code == 200
    assert breaker.is_open

    start_valkey(own_valkey)
    time.sleep(0.3)
    assert api.get(url).json()["content"] == "User likes black coffee"
    assert api.get("/memory/memories", {"user_id": "u1"}).json()["results"][0]["content"] == "User likes black coffee"
    with CaptureQueriesContext(connection) as queries:
        assert api.get(url).json()["content"] == "User likes black coffee"
    assert queries.captured_queries == []


@pytest.mark.django_db
def test_prometheus_metrics_move(api: APIClient) -> None:
    created = _store(api, "User likes green tea")

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    hits_before = sample("memory_cache_hits_total", type="memory", tier="l1")
    invalidations_before = sample("memory_cache_invalidations_total", type="user")
    api.get(f"/memory/memories/{created['id']}")
    api.get(f"/memory/memories/{created['id']}")
    api.patch(f"/memory/memories/{created['id']}", {"pinned": True}, format="json")

    # The second GET, and the PATCH's own lookup of the memory.
    assert sample("memory_cache_hits_total", type="memory", tier="l1") == hits_before + 2
    # Before the commit (after it too, where the test's transaction really commits).
    assert sample("memory_cache_invalidations_total", type="user") >= invalidations_before + 1
    metrics = api.get("/metrics").content.decode()
    assert "memory_cache_size_bytes" in metrics
    assert "memory_cache_misses_total" in metrics


@pytest.mark.django_db
def test_memory_key_sql_is_the_memorys_cache_key() -> None:
    memory_id = uuid.uuid4()
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {memory_key_sql('%s::uuid')}", [str(memory_id)])
        (key,) = cursor.fetchone()

    assert key == cache_key("memory", memory_id)


class _CountingRedis:
    """Counts the commands a client sends (a pipeline's commands count once)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.commands: list[str] = []
        cache = tiered_cache()
        real = cache._redis

        def counting() -> Any:
            client = real()
            original: Callable[..., Any] = client.execute_command

            def execute_command(*args: Any, **options: Any) -> Any:
                self.commands.append(str(args[0]))
                return original(*args, **options)

            monkeypatch.setattr(client, "execute_command", execute_command)
            return client

        monkeypatch.setattr(cache, "_redis", counting)


def test_a_memory_from_redis_is_validated_in_the_same_round_trip(
    api: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = _store(api, "User flies to Lisbon monthly")
    api.get(f"/memory/memories/{memory['id']}")  # cached
    tiered_cache().local.clear()  # a fresh worker: only Redis holds it
    counting = _CountingRedis(monkeypatch)

    found = selectors.memory_get(account=Memory.objects.get(id=memory["id"]).account, memory_id=uuid.UUID(memory["id"]))

    assert found.content == "User flies to Lisbon monthly"
    assert counting.commands == ["EVALSHA"]


def test_the_list_read_that_closes_the_breaker_does_not_trust_the_token_it_read(api: APIClient) -> None:
    created = _store(api, "User likes green tea")
    api.get("/memory/memories", {"user_id": "u1"})  # the page is cached in Redis under the user's token
    send_queued_records()  # the recorder's thread must not take the breaker's half-open try
    memory = Memory.objects.get(id=created["id"])
    Memory.objects.filter(pk=memory.pk).update(content="User likes black coffee")  # a write while Redis is down
    PendingInvalidation.objects.create(account_id=memory.account_id, namespace="default", user_id="u1")
    cache = tiered_cache()
    cache.local.clear()
    cache.breaker.trip(cooled=True)  # the next call is the half-open try

    page = selectors.memory_list(account=memory.account, filters=MemoryFilters(user_id="u1"), limit=50)

    assert [memory["content"] for memory in orjson.loads(page.results)] == ["User likes black coffee"]


def test_a_list_whose_token_redis_lost_is_read_again(api: APIClient, account: AccountWithKey) -> None:
    created = _store(api, "User likes green tea")
    api.get("/memory/memories", {"user_id": "u1"})  # cached under the user's token, in L1 and Redis
    Memory.objects.filter(pk=created["id"]).update(content="User likes black coffee")  # behind the cache's back
    cache = tiered_cache()
    get_redis_connection("default").delete(cache.generation_key(account.account.id, "default", "u1"))

    page = api.get("/memory/memories", {"user_id": "u1"}).json()

    assert [memory["content"] for memory in page["results"]] == ["User likes black coffee"]


def test_a_users_token_expires_a_generation_ttl_after_its_last_write(
    api: APIClient, account: AccountWithKey, settings: Any
) -> None:
    settings.MEMORY_CACHE = {**settings.MEMORY_CACHE, "GENERATION_TTL": 600.0}
    redis = get_redis_connection("default")
    key = tiered_cache().generation_key(account.account.id, "default", "u1")
    api.get("/memory/memories", {"user_id": "u1"})  # the first read makes the token
    assert 0 < redis.pttl(key) <= 600_000
    redis.pexpire(key, 5_000)

    _store(api, "User likes green tea")  # a write replaces it, with a new lifetime

    assert 5_000 < redis.pttl(key) <= 600_000


def test_content_that_looks_like_a_token_key_cannot_validate_an_entry(api: APIClient) -> None:
    sneaky = '{"gen":"x","gk":"gen:1:forged","memory":{}}'
    memory = _store(api, sneaky, metadata={"gk": "gen:1:forged"})
    api.get(f"/memory/memories/{memory['id']}")
    tiered_cache().local.clear()
    get_redis_connection("default").set("gen:1:forged", "x")

    api.patch(f"/memory/memories/{memory['id']}", {"content": "User changed it"}, format="json")

    assert api.get(f"/memory/memories/{memory['id']}").json()["content"] == "User changed it"


def test_the_read_that_closes_the_breaker_does_not_trust_the_token_read_with_its_entry(api: APIClient) -> None:
    created = _store(api, "User likes green tea")
    api.get(f"/memory/memories/{created['id']}")  # cached in Redis under the user's token
    send_queued_records()  # the recorder's thread must not take the breaker's half-open try
    memory = Memory.objects.get(id=created["id"])
    # What a write does while Redis is down: the row changes, the token cannot,
    # and the user is recorded for the first process that reaches Redis again.
    Memory.objects.filter(pk=memory.pk).update(content="User likes black coffee")
    PendingInvalidation.objects.create(account_id=memory.account_id, namespace="default", user_id="u1")
    cache = tiered_cache()
    cache.local.clear()
    cache.breaker.trip(cooled=True)  # the next call is the half-open try

    found = selectors._memory_get_cached(memory.account, memory.id)

    assert found["content"] == "User likes black coffee"


def test_a_token_read_in_a_request_serves_its_later_reads_until_the_user_changes() -> None:
    cache = tiered_cache()
    owner = (1, "default", f"user-{uuid.uuid4()}")
    loads: list[str] = []

    def read(prefix: str) -> bytes:
        def load() -> bytes:
            loads.append(prefix)
            return f"{prefix}:{len(loads)}".encode()

        return cache.get_or_set_current(
            "search", owner, prefix, load, encode=lambda value: value, decode=lambda raw: raw, ttl=lambda value: 60.0
        )

    with riding_tokens():
        first = read("a")
        assert read("a") == first  # under the token this request read: from L1, no round trip
        cache.invalidate_users({owner})
        # This request's own write replaced the token: it must not trust the one it read before.
        assert read("a") != first
    assert loads == ["a", "a"]


def test_a_prefetched_entry_is_taken_once() -> None:
    cache = tiered_cache()
    key = cache_key("embedding", str(uuid.uuid4()))
    loads: list[int] = []

    def load() -> bytes:
        loads.append(1)
        return b"vector"

    def read() -> bytes:
        return cache.get_or_set("embedding", key, load, encode=bytes, decode=bytes, ttl=lambda value: 60.0)

    with riding_tokens():
        prefetch(key)
        cache.generation(1, "default", "someone")  # any read of the request carries it: missing
        assert read() == b"vector"
        cache.local.clear()
        # Redis is asked again, not told "missing" a second time by the prefetched answer.
        assert read() == b"vector"
    assert loads == [1]
