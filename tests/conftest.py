"""Shared fixtures. Tests run against the real PostgreSQL and Valkey (embedded,
or those of DATABASE_URL / REDIS_URL) and the real embedding model."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.core.cache import cache
from rest_framework.test import APIClient

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
    settings.CACHES["default"]["LOCATION"] = _with_redis_db(settings.REDIS_URL, 15)


@pytest.fixture(autouse=True)
def _clean_cache() -> None:
    cache.clear()


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
