from __future__ import annotations

from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

from memoryproject.browser_middleware import AuthenticationMiddleware, MessageMiddleware, SessionMiddleware


def _through_all(authorization: str | None) -> HttpRequest:
    """The request as the view would see it, after the three middlewares."""
    seen: list[HttpRequest] = []

    def view(request: HttpRequest) -> HttpResponse:
        seen.append(request)
        return HttpResponse()

    # A middleware is a get_response for the one before it (the stubs type __call__ as possibly async).
    chain: Any = view
    for middleware in (MessageMiddleware, AuthenticationMiddleware, SessionMiddleware):
        chain = middleware(chain)
    request = RequestFactory().get("/memory/memories")
    if authorization is not None:
        request.META["HTTP_AUTHORIZATION"] = authorization
    chain(request)
    return seen[0]


@pytest.mark.parametrize("authorization", ["Bearer mp_key", "bearer mp_key", "BEARER mp_key"])
def test_a_request_with_an_api_key_gets_no_session_user_or_messages(authorization: str) -> None:
    request = _through_all(authorization)

    assert not hasattr(request, "session")
    assert not hasattr(request, "user")
    assert not hasattr(request, "_messages")


@pytest.mark.django_db
@pytest.mark.parametrize("authorization", [None, "Basic dXNlcjpwYXNz", "Bearer"])
def test_a_browsers_request_gets_them_all(authorization: str | None) -> None:
    """Browsers add Basic credentials by themselves (a proxy's in front of the admin): not an API key."""
    request = _through_all(authorization)

    assert hasattr(request, "session")
    assert not request.user.is_authenticated
    assert hasattr(request, "_messages")
