"""Bearer API keys: `Authorization: Bearer mp_...` authenticates as the key's account."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

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
        key = (
            ApiKey.objects.select_related("account")
            .filter(key_hash=hash_api_key(raw_key), revoked_at__isnull=True, account__is_active=True)
            .first()
        )
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        now = timezone.now()
        if key.last_used_at is None or now - key.last_used_at > _LAST_USED_RESOLUTION:
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        return Caller(account=key.account, key=key), key

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (not 403) to a request without credentials.
        return 'Bearer realm="api"'


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
