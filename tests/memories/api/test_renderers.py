from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import orjson
from rest_framework.renderers import JSONRenderer

from memories.api.renderers import OrjsonRenderer, RenderedJSON

VALUES = {
    "text": 'café \u2028 line \u2029 para "quoted" <tag>',
    "when": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    "whole": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "price": Decimal("1.50"),
    "nested": [{"a": None, "b": True, "c": 0.1, "d": 7}],
}


def test_writes_the_same_bytes_as_drf() -> None:
    assert OrjsonRenderer().render(VALUES) == JSONRenderer().render(VALUES)


def test_leaves_what_orjson_refuses_to_drf() -> None:
    huge = {"n": 2**70}

    assert orjson.loads(OrjsonRenderer().render(huge)) == huge


def test_indents_as_asked() -> None:
    body = OrjsonRenderer().render({"a": [1]}, "application/json; indent=2")

    assert body == JSONRenderer().render({"a": [1]}, "application/json; indent=2")
    assert b"\n" in body


def test_no_content_is_an_empty_body() -> None:
    assert OrjsonRenderer().render(None) == b""


def test_rendered_json_is_spliced_in_as_its_value() -> None:
    inner = JSONRenderer().render([VALUES["nested"], VALUES["text"]])
    spliced = {"results": RenderedJSON(inner), "next": None}
    parsed = {"results": orjson.loads(inner), "next": None}

    assert OrjsonRenderer().render(spliced) == JSONRenderer().render(parsed)
    # An indented rendering goes through DRF's encoder, which gets it parsed.
    assert OrjsonRenderer().render(spliced, "application/json; indent=2") == JSONRenderer().render(
        parsed, "application/json; indent=2"
    )
