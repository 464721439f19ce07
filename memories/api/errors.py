"""Every API error has one shape: {"error": {"code", "message", "fields"?}}."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import Http404
from psycopg.errors import QueryCanceled
from rest_framework import exceptions, status
from rest_framework.parsers import JSONParser
from rest_framework.response import Response

from memories.embedding import EmbeddingError
from memoryproject.breakers import BreakerOpen

logger = logging.getLogger(__name__)


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"
    default_detail = "The request is larger than this API accepts."


class ServiceUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "unavailable"
    default_detail = "A dependency is unavailable; try again shortly."

    default_retry_after = 5.0

    def __init__(self, detail: str | None = None, *, retry_after: float = default_retry_after) -> None:
        super().__init__(detail)
        # Seconds a client should wait (the Retry-After header): dependencies
        # restart in seconds, and a breaker says when it will try again.
        self.retry_after = retry_after


class StrictJSONParser(JSONParser):
    """DRF's parser, plus: nesting deep enough to exhaust the recursion limit is a 400, not a 500."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("JSON nested too deeply.") from None


_CODES = {
    exceptions.ParseError: "malformed_json",
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "rate_limited",
}


def _message(detail: Any) -> str:
    if isinstance(detail, list) and detail:
        return _message(detail[0])
    if isinstance(detail, dict):
        return "Invalid input: " + ", ".join(str(key) for key in detail)
    return str(detail)


def _retry_after(error: BaseException) -> float:
    """When the database breaker refused the request (memoryproject.db), the seconds until it tries again."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, BreakerOpen):
            return cause.retry_after
        cause = cause.__cause__
    return ServiceUnavailable.default_retry_after


def error_response(status_code: int, code: str, message: str, fields: Any = None) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    return Response({"error": body}, status=status_code)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, EmbeddingError):
        logger.warning("embedding failed: %s", exc)
        exc = ServiceUnavailable(f"The embedding model is unavailable: {exc}")
    elif isinstance(exc, OperationalError) and isinstance(exc.__cause__, QueryCanceled):
        # API_STATEMENT_TIMEOUT_MS passed (the transaction, if any, was rolled back).
        logger.error("database statement timed out: %s", exc)
        exc = ServiceUnavailable("The database took too long to answer; nothing was changed. Try again shortly.")
    elif isinstance(exc, (OperationalError, InterfaceError)):
        logger.error("database unavailable: %s", exc)
        exc = ServiceUnavailable(
            "The database is unavailable; nothing was changed. Try again shortly.", retry_after=_retry_after(exc)
        )
    elif isinstance(exc, DatabaseError):
        return None  # a bug, not the client's fault: let it surface as a 500 and be logged
    if not isinstance(exc, exceptions.APIException):
        return None
    if isinstance(exc, exceptions.ValidationError):
        detail = exc.detail
        fields = detail if isinstance(detail, dict) else None
        non_field = detail.get("non_field_errors") if isinstance(detail, dict) else detail
        message = _message(non_field) if non_field else _message(detail)
        return error_response(exc.status_code, "invalid", message, json.loads(json.dumps(fields)) if fields else None)
    code = _CODES.get(type(exc), exc.default_code if isinstance(exc.default_code, str) else "error")
    response = error_response(exc.status_code, code, _message(exc.detail))
    auth_header = getattr(exc, "auth_header", None)
    if auth_header:
        response["WWW-Authenticate"] = auth_header
    wait = getattr(exc, "wait", None)
    if isinstance(exc, exceptions.Throttled) and wait is not None:
        response["Retry-After"] = str(int(wait))
    if isinstance(exc, ServiceUnavailable):
        response["Retry-After"] = str(max(math.ceil(exc.retry_after), 1))
    return response
