"""Django's session, user and message middleware, skipped for requests that carry an API key.

Sessions, the logged-in user and messages serve the admin and other pages a
browser loads. A request with an `Authorization:
Bearer` header is an API client's: its key authenticates it
(memories.api.auth), and it uses no cookie, session or message. Only Bearer:
a browser never adds that header by itself (it does add Basic credentials, a
proxy's in front of the admin, say, and such requests need all three). Running the five anyway took ~0.10 ms
of a cached read of ~0.6-1.0 ms (in process, requests interleaved with and
without them).

Each class here is a subclass of Django's, so the admin's checks still find
it in MIDDLEWARE; for an API request it only passes the request on. A
request without the header (the admin, the staff-only cache clear, a client
that forgot its key) gets all of them. CSRF and X-Frame-Options stay Django's
own: the deployment checklist looks for those by name, and they cost little
(DRF's views are exempt from CSRF).
"""

from __future__ import annotations

from collections.abc import Awaitable

from django.contrib.auth.middleware import AuthenticationMiddleware as DjangoAuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware as DjangoMessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware as DjangoSessionMiddleware
from django.http import HttpRequest, HttpResponseBase
from django.utils.deprecation import MiddlewareMixin


def carries_api_key(request: HttpRequest) -> bool:
    # The scheme is case-insensitive (RFC 9110), as ApiKeyAuthentication reads it.
    header: str = request.META.get("HTTP_AUTHORIZATION", "")
    return header[:7].lower() == "bearer "


class _BrowserOnly(MiddlewareMixin):
    # This __call__ is synchronous: under ASGI, Django adapts it rather than call __acall__.
    async_capable = False

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if carries_api_key(request):
            return self.get_response(request)
        return super().__call__(request)


class SessionMiddleware(_BrowserOnly, DjangoSessionMiddleware):
    pass


class AuthenticationMiddleware(_BrowserOnly, DjangoAuthenticationMiddleware):
    pass


class MessageMiddleware(_BrowserOnly, DjangoMessageMiddleware):
    pass
