from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client


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
