from __future__ import annotations

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

LIST = "/memory/memories?user_id=u1"


@pytest.mark.parametrize("accept", [None, "*/*", "application/json"])
def test_what_clients_send_gets_compact_json(api: APIClient, accept: str | None) -> None:
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    response = api.get(LIST, **headers)  # type: ignore[arg-type]

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.content == b'{"results":[],"next_cursor":null}'


def test_an_indent_is_negotiated_as_drf_does(api: APIClient) -> None:
    response = api.get(LIST, HTTP_ACCEPT="application/json; indent=2")

    assert response.status_code == 200
    assert response.content.startswith(b'{\n  "results"')


def test_another_type_is_not_acceptable(api: APIClient) -> None:
    response = api.get(LIST, HTTP_ACCEPT="text/html")

    assert response.status_code == 406
    assert response.json()["error"]["code"] == "not_acceptable"


def test_a_format_parameter_is_negotiated_as_drf_does(api: APIClient) -> None:
    assert api.get(f"{LIST}&format=xml").status_code == 404
