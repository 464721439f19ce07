"""The errors every operation may answer, in the OpenAPI schema.

drf-spectacular documents what a view declares; the errors that DRF and the
project's exception handler give any view (bad input, no key, no such URL)
are added here, in the one error shape (memories.api.errors), so that clients
and schema-driven tests know every status an operation can answer.
"""

from __future__ import annotations

from typing import Any

_INVALID = "Invalid input: malformed JSON, or an unknown or bad parameter or field; `error.fields` says which."
_UNAUTHENTICATED = "No API key, or an invalid or revoked one."
_NOT_FOUND = "Nothing at this path in your account: no such object, or another account's."


def _error(description: str) -> dict[str, Any]:
    # New dicts each time, all the way down: one shared by operations would be written as YAML anchors.
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def document_errors(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular's postprocessing hook: each operation's 400, 401 and 404 where it can answer them."""
    for path, operations in result.get("paths", {}).items():
        for operation in operations.values():
            responses = operation["responses"]
            # Any request may carry bad JSON or an unknown query parameter.
            responses.setdefault("400", _error(_INVALID))
            if any("ApiKey" in requirement for requirement in operation.get("security", [])):
                responses.setdefault("401", _error(_UNAUTHENTICATED))
            # A path parameter names something that may not exist (or cannot be routed, as one with a '/').
            if "{" in path:
                responses.setdefault("404", _error(_NOT_FOUND))
    return result
