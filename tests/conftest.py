"""Shared fixtures. Tests run against the real PostgreSQL and Valkey (embedded,
or those of DATABASE_URL / REDIS_URL) and the real embedding model."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from rest_framework.test import APIClient

import memories.embedding as embedding
from memories.access import send_queued_records
from memories.cache import tiered_cache
from memories.embedding import Embedder, Vectors, get_embedder
from memoryproject.breakers import reset_breakers
from tests.factories import AccountWithKey, make_account


def _with_redis_db(url: str, db: int) -> str:
    """The same Redis server, another logical database: tests never touch `make run`'s cache."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = dict(parse_qsl(parts.query))
        query["db"] = str(db)
        # urlunsplit would drop the empty authority and write `unix:/path`.
        return f"unix://{parts.path}?{urlencode(query)}"
    return urlunsplit(parts._replace(path=f"/{db}"))


def pytest_configure(config: pytest.Config) -> None:
    # Several test sessions at once on one machine (people, helpers) each take
    # a slot: their own test database and Redis database. CI uses slot 0.
    slot = int(os.environ.get("MEMORYPROJECT_TEST_SLOT", "0"))
    if not 0 <= slot <= 7:
        raise pytest.UsageError("MEMORYPROJECT_TEST_SLOT must be 0..7")
    settings.CACHES["default"]["LOCATION"] = _with_redis_db(settings.REDIS_URL, 15 - slot)
    # The test client and the live server speak plain http, also where the
    # servers' URLs make the settings take this for production.
    settings.SECURE_SSL_REDIRECT = settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    if slot:
        name = settings.DATABASES["default"]["NAME"]
        settings.DATABASES["default"].setdefault("TEST", {})["NAME"] = f"test_{name}_{slot}"


def reset_caches() -> None:
    """Empty tiers: Redis's test database flushed, this process's L1 and breaker reset."""
    # Reads queued earlier must not land in the emptied Redis.
    send_queued_records()
    cache.clear()
    tiered = tiered_cache()
    tiered.local.clear()
    tiered.breaker.reset()
    tiered.reset_stats()
    reset_breakers()


@pytest.fixture(autouse=True)
def _clean_cache() -> None:
    """Each test starts with empty tiers (and so does each example of a property-based test: it calls reset_caches)."""
    reset_caches()


@pytest.fixture
def account(db: None) -> AccountWithKey:
    return make_account("acme")


@pytest.fixture
def other_account(db: None) -> AccountWithKey:
    return make_account("globex")


@pytest.fixture
def api(account: AccountWithKey) -> APIClient:
    """A client authenticated as `account`."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {account.raw_key}")
    return client


@pytest.fixture
def other_api(other_account: AccountWithKey) -> APIClient:
    """A client authenticated as another account."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {other_account.raw_key}")
    return client


@dataclass
class SpyEmbedder:
    """The real embedder, recording the texts it is asked for. `before`, when
    set, runs before each call: a stand-in for a writer racing the embedder."""

    inner: Embedder
    texts: list[str] = field(default_factory=list)
    calls: int = 0
    before: Callable[[], None] | None = None

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def dimensions(self) -> int:
        return self.inner.dimensions

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.calls += 1
        self.texts.extend(texts)
        if self.before is not None:
            self.before()
        return self.inner.embed(texts)


@pytest.fixture
def spy_embedder(monkeypatch: pytest.MonkeyPatch) -> SpyEmbedder:
    """Installs a SpyEmbedder as the process's embedder for one test."""
    spy = SpyEmbedder(get_embedder())
    monkeypatch.setattr(embedding, "_embedder", spy)
    return spy


def spy_redis_commands(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The names of the Redis commands this process's cache sends from now on, in order."""
    commands: list[Any] = []
    cache = tiered_cache()
    client = cache._redis()
    original: Callable[..., Any] = client.execute_command

    def execute_command(*args: Any, **options: Any) -> Any:
        commands.append(args[0])
        return original(*args, **options)

    monkeypatch.setattr(client, "execute_command", execute_command)
    monkeypatch.setattr(cache, "_redis", lambda: client)
    return commands


@pytest.fixture
def subprocess_env(transactional_db: None) -> dict[str, str]:
    """Environment for a child process that must see this test's database and
    Redis: the test database (committed data only: transactional tests) and Redis's test database."""
    params: dict[str, Any] = connection.get_connection_params()
    host = params.get("host") or "localhost"
    port = params.get("port") or 5432
    user = params.get("user") or "postgres"
    password = params.get("password") or ""
    name = settings.DATABASES["default"]["NAME"]
    if host.startswith("/"):
        database_url = f"postgresql://{user}:{password}@/{name}?host={host}&port={port}"
    else:
        database_url = f"postgresql://{user}:{password}@{host}:{port}/{name}"
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": str(settings.CACHES["default"]["LOCATION"]),
        "SECRET_KEY": settings.SECRET_KEY,
        # Test helpers over plain http, not a production deployment (memoryproject.settings.PRODUCTION).
        "MEMORYPROJECT_PRODUCTION": "false",
        "DJANGO_SETTINGS_MODULE": "memoryproject.settings",
    }
