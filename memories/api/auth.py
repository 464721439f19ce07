"""Bearer API keys: `Authorization: Bearer mp_...` authenticates as the key's account."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request

from memories.cache import CacheUnavailable, Rider, cache_key, ride_token, riding_tokens, tiered_cache
from memories.invalidation import AUTH_GENERATION
from memories.models import Account, ApiKey, hash_api_key

logger = logging.getLogger(__name__)

# last_used_at is for people, not for accounting: one write a minute per key is plenty.
_LAST_USED_RESOLUTION = timedelta(minutes=1)
_CHALLENGE = 'Bearer realm="api"'


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
        key = _provisional_key(request, key_hash) if request.method in SAFE_METHODS else None
        if key is None:
            try:
                key = _cached_key(key_hash)
            except CacheUnavailable:
                key = _load_key(key_hash)
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        now = timezone.now()
        if key.last_used_at is None or now - key.last_used_at > _LAST_USED_RESOLUTION:
            try:
                ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
            except (OperationalError, InterfaceError) as error:
                # PostgreSQL is down: a cached read still answers (the next request tries again).
                logger.info("could not record the key's last use: %s", error)
                return Caller(account=key.account, key=key), key
            # The cached copy would otherwise keep asking for this update.
            with contextlib.suppress(CacheUnavailable):
                tiered_cache().delete("auth", cache_key("auth", key_hash))
        return Caller(account=key.account, key=key), key

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (not 403) to a request without credentials.
        return _CHALLENGE


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
    generation_key = cache.generation_key(*AUTH_GENERATION)

    def load() -> dict[str, Any] | None:
        generation = cache.generation(*AUTH_GENERATION)
        key = _load_key(key_hash)
        if key is None:
            return None
        return {
            "gen": generation,
            "gk": generation_key,
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
        # From Redis, the entry comes with the token its "gk" names, in one round trip.
        valid_with_generation=lambda entry, current: (
            entry is not None and entry["gen"] == (current or cache.generation(*AUTH_GENERATION))
        ),
    )
    return None if entry is None else _key_of(key_hash, entry)


def _key_of(key_hash: str, entry: dict[str, Any]) -> ApiKey:
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


# -- one round trip fewer for reads -----------------------------------------------------------
#
# A key cached in this process is checked against the keys' generation token
# on every request. For a read, that token rides on the request's first Redis
# read of its data (memories.cache.ride_token) instead of a round trip of its
# own, and DeferredKeyCheckMiddleware settles the check before the response
# leaves: a key revoked meanwhile gets its 401 instead of the data. Writes are
# checked before they act, as before.


@dataclass
class _DeferredCheck:
    key_hash: str
    token: str
    rider: Rider


_DEFERRED_ATTRIBUTE = "memoryproject_deferred_key_check"


def _provisional_key(request: Request, key_hash: str) -> ApiKey | None:
    """The key as this process's L1 holds it, its check deferred; None when it
    holds none or nothing would settle the check (outside the middleware)."""
    cache = tiered_cache()
    raw = cache.local.get(cache_key("auth", key_hash))
    if raw is None:
        return None
    entry = orjson.loads(raw)
    if entry is None or "gk" not in entry:
        return None
    rider = ride_token(entry["gk"])
    if rider is None:
        return None
    setattr(request._request, _DEFERRED_ATTRIBUTE, _DeferredCheck(key_hash=key_hash, token=entry["gen"], rider=rider))
    return _key_of(key_hash, entry)


def _still_valid(check: _DeferredCheck) -> bool:
    try:
        # A request that read nothing from Redis reads the token now.
        token = check.rider.token if check.rider.read else tiered_cache().generation(*AUTH_GENERATION)
        # Changed: some key or account changed since this one was cached (not
        # necessarily this one); the ordinary check, down to PostgreSQL, decides.
        return token == check.token or _cached_key(check.key_hash) is not None
    except CacheUnavailable:
        return _load_key(check.key_hash) is not None


class DeferredKeyCheckMiddleware:
    """Settles the deferred API key checks of reads (see above) before their response leaves."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        with riding_tokens():
            response = self.get_response(request)
            check = getattr(request, _DEFERRED_ATTRIBUTE, None)
            if check is None or _still_valid(check):
                return response
        refused = JsonResponse(
            {"error": {"code": "authentication_failed", "message": "Invalid or revoked API key."}}, status=401
        )
        refused["WWW-Authenticate"] = _CHALLENGE
        return refused


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
