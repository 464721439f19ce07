"""Bearer API keys: `Authorization: Bearer mp_...` authenticates as the key's account."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from memories.cache import CacheUnavailable, cache_key, tiered_cache
from memories.invalidation import AUTH_GENERATION
from memories.models import Account, ApiKey, hash_api_key

# last_used_at is for people, not for accounting: one write a minute per key is plenty.
_LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class Caller:
    """Who is calling: DRF puts this in request.user."""

    account: Account
    key: ApiKey
    is_authenticated: bool = True

    @property
    def actor(self) -> str:
        return f"api:{self.key.name}"


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Caller, ApiKey] | None:
        parts = get_authorization_header(request).split()
        if not parts:
            return None
        if parts[0].lower() != b"bearer" or len(parts) != 2:
            raise exceptions.AuthenticationFailed("Use the header `Authorization: Bearer <API key>`.")
        try:
            raw_key = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid API key.") from None
        key_hash = hash_api_key(raw_key)
        try:
            key = _cached_key(key_hash)
        except CacheUnavailable:
            key = _load_key(key_hash)
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        now = timezone.now()
        if key.last_used_at is None or now - key.last_used_at > _LAST_USED_RESOLUTION:
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
            # The cached copy would otherwise keep asking for this update.
            with contextlib.suppress(CacheUnavailable):
                tiered_cache().delete("auth", cache_key("auth", key_hash))
        return Caller(account=key.account, key=key), key

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (not 403) to a request without credentials.
        return 'Bearer realm="api"'


def _load_key(key_hash: str) -> ApiKey | None:
    return (
        ApiKey.objects.select_related("account")
        .filter(key_hash=key_hash, revoked_at__isnull=True, account__is_active=True)
        .first()
    )


def _cached_key(key_hash: str) -> ApiKey | None:
    """The usable key with this hash, with its account, without a query when cached."""
    cache = tiered_cache()
    ttl = float(settings.MEMORY_CACHE["AUTH_TTL"])

    def load() -> dict[str, Any] | None:
        generation = cache.generation(*AUTH_GENERATION)
        key = _load_key(key_hash)
        if key is None:
            return None
        return {
            "gen": generation,
            "key": {
                "id": key.pk,
                "name": key.name,
                "prefix": key.prefix,
                "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
            },
            "account": {"id": key.account.pk, "name": key.account.name},
        }

    entry = cache.get_or_set(
        "auth",
        cache_key("auth", key_hash),
        load,
        encode=lambda entry: orjson.dumps(entry),
        decode=orjson.loads,
        # An unknown key is not cached: it would let a guesser fill the cache.
        ttl=lambda entry: ttl if entry is not None else 0,
        valid=lambda entry: entry is not None and entry["gen"] == cache.generation(*AUTH_GENERATION),
    )
    if entry is None:
        return None
    account = Account(id=entry["account"]["id"], name=entry["account"]["name"], is_active=True)
    last_used = entry["key"]["last_used_at"]
    return ApiKey(
        id=entry["key"]["id"],
        account=account,
        name=entry["key"]["name"],
        prefix=entry["key"]["prefix"],
        key_hash=key_hash,
        last_used_at=datetime.fromisoformat(last_used) if last_used else None,
    )


def caller(request: Request) -> Caller:
    user = request.user
    assert isinstance(user, Caller), "view without ApiKeyAuthentication"
    return user


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    """Tells the OpenAPI schema (and /api/docs/'s Authorize button) about bearer keys."""

    target_class = ApiKeyAuthentication
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "An API key: `Authorization: Bearer mp_...`"}
