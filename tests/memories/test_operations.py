"""Memory operations are timed, and a slow one is logged as one JSON line (memories.operations)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from memories.operations import operation
from tests.factories import AccountWithKey

pytestmark = pytest.mark.django_db


def _count(name: str) -> float:
    return REGISTRY.get_sample_value("memory_operation_duration_seconds_count", {"operation": name}) or 0.0


def test_each_api_read_and_write_is_timed_as_its_operation(api: APIClient) -> None:
    before = {name: _count(name) for name in ("store", "batch", "get", "list", "search", "embed")}

    memory_id = api.post("/memory/memories", {"user_id": "u1", "content": "User likes tea"}, format="json").json()["id"]
    api.post(
        "/memory/memories/batch",
        {"memories": [{"user_id": "u1", "content": c} for c in ("a cat", "a dog")]},
        format="json",
    )
    api.get(f"/memory/memories/{memory_id}")
    api.get("/memory/memories", {"user_id": "u1"})
    api.get("/memory/relevant", {"user_id": "u1", "query": "hot drinks"})

    grown = {name: _count(name) - count for name, count in before.items()}
    assert grown == {"store": 1, "batch": 1, "get": 1, "list": 1, "search": 1, "embed": 3}


def test_a_slow_operation_is_one_json_line(
    api: APIClient, account: AccountWithKey, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.SLOW_OPERATION_MS = 0
    with caplog.at_level(logging.WARNING, logger="memories.slow"):
        api.get("/memory/memories", {"user_id": "u1", "limit": "5"})

    (line,) = [json.loads(record.getMessage()) for record in caplog.records if record.name == "memories.slow"]
    assert line["event"] == "slow_operation"
    assert (line["operation"], line["account"], line["user"], line["limit"], line["found"]) == (
        "list",
        account.account.id,
        "u1",
        5,
        0,
    )
    assert line["ms"] >= 0


def test_fast_operations_are_not_logged(api: APIClient, settings: Any, caplog: pytest.LogCaptureFixture) -> None:
    settings.SLOW_OPERATION_MS = 60_000
    with caplog.at_level(logging.WARNING, logger="memories.slow"):
        api.get("/memory/memories", {"user_id": "u1"})

    assert [record for record in caplog.records if record.name == "memories.slow"] == []


def test_a_failed_operation_says_what_failed(settings: Any, caplog: pytest.LogCaptureFixture) -> None:
    settings.SLOW_OPERATION_MS = 0
    with caplog.at_level(logging.WARNING, logger="memories.slow"), pytest.raises(KeyError), operation("get"):
        raise KeyError("gone")

    (record,) = [record for record in caplog.records if record.name == "memories.slow"]
    assert json.loads(record.getMessage())["error"] == "KeyError"


def test_an_unknown_operation_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown operation"), operation("fetch"):
        pass
