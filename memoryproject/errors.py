"""JSON answers for errors raised outside DRF views (unknown paths, bad hosts, crashes).

They share the API's error shape, {"error": {"code", "message"}}, so a client
never has to parse Django's HTML error pages.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse


def error_response(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


def bad_request(request: HttpRequest, exception: Exception) -> JsonResponse:
    if isinstance(exception, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return error_response(413, "too_large", f"The request body is larger than {limit} bytes; send less at once.")
    # The exception can be a SuspiciousOperation whose text repeats attacker
    # input (a forged Host header): it is logged by Django, not echoed.
    return error_response(400, "bad_request", "The request could not be understood.")


def permission_denied(request: HttpRequest, exception: Exception) -> JsonResponse:
    return error_response(403, "permission_denied", "You do not have permission to do this.")


def not_found(request: HttpRequest, exception: Exception) -> JsonResponse:
    return error_response(404, "not_found", f"Nothing is found at {request.path}.")


def server_error(request: HttpRequest) -> JsonResponse:
    return error_response(500, "server_error", "The server failed to answer this request; the error is logged.")
