from __future__ import annotations

import re
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from drf_spectacular.generators import SchemaGenerator

from memories.api.serializers import NAMESPACE_PATTERN


def test_openapi_schema_is_valid_without_warnings() -> None:
    out = StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", "--format", "openapi-json", stdout=out)
    assert '"/memory/relevant"' in out.getvalue()
    assert '"bearer"' in out.getvalue()


@pytest.mark.django_db
def test_docs_page_is_served_without_a_cdn() -> None:
    response = Client().get("/api/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "swagger-ui" in page
    assert "cdn.jsdelivr.net" not in page
    assert Client().get("/api/schema/").status_code == 200


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = SchemaGenerator().get_schema(request=None, public=True)  # type: ignore[no-untyped-call]
    return schema


def _operations(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        f"{method.upper()} {path}": operation
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
    }


def _parameter(operation: dict[str, Any], name: str) -> dict[str, Any]:
    return next(parameter for parameter in operation["parameters"] if parameter["name"] == name)


def test_every_operation_documents_the_errors_it_can_answer() -> None:
    # Found by the API fuzz test (test_api_fuzz): answers with statuses the schema did not list.
    operations = _operations(_schema())
    for name, operation in operations.items():
        documented = set(operation["responses"])
        assert "400" in documented, name
        assert "401" in documented or operation["security"] == [{"cookieAuth": []}], name
        assert "404" in documented or "{" not in name, name
    assert "403" in operations["POST /memory/cache/clear"]["responses"]
    assert "409" in operations["PATCH /memory/memories/{memory_id}"]["responses"]
    assert "409" in operations["POST /api/memory/{vectorstore_name}/store_raw"]["responses"]


def test_schema_says_what_the_code_refuses() -> None:
    # Found by the API fuzz test too: requests valid by the schema were refused as invalid.
    schema = _schema()
    operations, components = _operations(schema), schema["components"]["schemas"]
    vectorstore = _parameter(operations["GET /api/memory/{vectorstore_name}/stats"], "vectorstore_name")
    assert vectorstore["schema"]["pattern"] == NAMESPACE_PATTERN
    assert components["MemoryCreate"]["additionalProperties"] is False  # strict serializers refuse unknown fields
    assert components["MemoryCreate"]["properties"]["metadata"]["type"] == "object"
    assert components["BatchCreate"]["properties"]["memories"]["items"] == {"$ref": "#/components/schemas/MemoryCreate"}
    assert components["StoreRaw"]["properties"]["metadata"]["required"] == ["user_id"]
    kinds = _parameter(operations["GET /memory/memories"], "kind")["schema"]["pattern"]
    assert re.fullmatch(kinds, "fact,discrete")
    assert not re.fullmatch(kinds, "rumour")
