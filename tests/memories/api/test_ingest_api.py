"""`/api/memory/{vectorstore_name}/...`: store_raw and the hierarchy endpoints."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from django_q.models import OrmQ
from rest_framework.test import APIClient

from memories.ingest import process_queued
from memories.models import Memory, MemoryKind, RawTranscript, TranscriptStatus
from tests.factories import AccountWithKey

pytestmark = pytest.mark.django_db

BASE = "/api/memory/travel"
FLIGHT = json.loads(
    (Path(__file__).resolve().parents[2] / "data" / "transcripts" / "01_flight_booking.json").read_text()
)


def _store_raw(api: APIClient, *, session_id: str = "s1", user_id: str = "u1", base: str = BASE) -> dict[str, Any]:
    response = api.post(
        f"{base}/store_raw",
        {"session_data": FLIGHT["session_data"], "session_id": session_id, "metadata": {"user_id": user_id}},
        format="json",
    )
    assert response.status_code == 202, response.json()
    body: dict[str, Any] = response.json()
    return body


# -- store_raw ---------------------------------------------------------------------------------------


def test_store_raw_answers_202_with_the_queued_rows_id_position_and_estimate(api: APIClient) -> None:
    first = _store_raw(api, session_id="a")
    second = _store_raw(api, session_id="b")

    assert first["success"] is True
    assert (first["queue_position"], second["queue_position"]) == (0, 1)
    row = RawTranscript.objects.get(pk=second["raw_memory_id"])
    assert row.status == TranscriptStatus.QUEUED
    assert row.text == FLIGHT["session_data"]
    assert row.session.external_id == "b"
    assert row.user_id == "u1"
    assert row.namespace == "travel"
    assert second["queued_at"].startswith(str(row.created_at.date()))
    # Nothing processed yet: the documented default per transcript, times (position + 1).
    assert second["estimate_basis"] == "default"
    assert second["estimated_processing_time"] == pytest.approx(2 * first["estimated_processing_time"])


def test_store_raw_enqueues_only_the_transcript_id_after_commit(
    api: APIClient, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        body = _store_raw(api)
        # Not before the row is committed: a worker would not find it.
        assert not OrmQ.objects.exists()

    assert len(callbacks) == 1

    queued = [task for task in OrmQ.objects.all() if task.func() == "memories.ingest_tasks.process_transcript_task"]
    assert [task.task["args"] for task in queued] == [(body["raw_memory_id"],)]


def test_estimated_processing_time_follows_measured_throughput(api: APIClient) -> None:
    _store_raw(api, session_id="a")
    process_queued(limit=10)
    mean = RawTranscript.objects.get().duration_seconds
    assert mean is not None

    body = _store_raw(api, session_id="b")

    assert body["estimate_basis"] == "measured"
    assert body["estimated_processing_time"] == pytest.approx(mean, abs=1e-3)


def test_store_raw_accepts_a_list_of_messages_and_makes_a_session_id(api: APIClient) -> None:
    messages = [{"role": "user", "content": "I prefer window seats."}, {"role": "assistant", "content": "Noted."}]
    response = api.post(f"{BASE}/store_raw", {"session_data": messages, "metadata": {"user_id": "u1"}}, format="json")

    assert response.status_code == 202
    row = RawTranscript.objects.get(pk=response.json()["raw_memory_id"])
    assert row.messages == messages
    assert response.json()["session_id"] == row.session.external_id


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"session_data": "User: hi"}, "metadata", "required"),
        ({"session_data": "User: hi", "metadata": {"x": 1}}, "metadata", "metadata.user_id is required"),
        ({"session_data": "User: hi", "metadata": {"user_id": 5}}, "metadata", "non-empty string"),
        ({"session_data": "   ", "metadata": {"user_id": "u1"}}, "session_data", "no messages"),
        ({"session_data": 42, "metadata": {"user_id": "u1"}}, "session_data", "must be the chat text"),
        ({"session_data": [{"role": "robot", "content": "x"}], "metadata": {"user_id": "u1"}}, "session_data", "role"),
        ({"session_data": "User: a\x00b", "metadata": {"user_id": "u1"}}, "session_data", "NUL"),
        # What a message carries besides role and content is stored (jsonb) and measured (orjson) too.
        (
            {"session_data": [{"role": "user", "content": "hi", "x": "a\x00"}], "metadata": {"user_id": "u1"}},
            "session_data",
            "NUL",
        ),
        (
            {"session_data": [{"role": "user", "content": "hi", "n": 2**64}], "metadata": {"user_id": "u1"}},
            "session_data",
            "64 bits",
        ),
        ({"session_data": "User: hi", "metadata": {"user_id": "u1", "n": 2**64}}, "metadata", "64 bits"),
        ({"session_data": "User: hi", "metadata": {"user_id": "u1"}, "session_id": "a/b"}, "session_id", ""),
        ({"session_data": "User: hi", "metadata": {"user_id": "u1"}, "extra": 1}, "extra", "Unknown field"),
        ([1, 2], "non_field_errors", "JSON object"),
    ],
)
def test_store_raw_rejects_bad_input_with_a_json_400(api: APIClient, body: Any, field: str, message: str) -> None:
    response = api.post(f"{BASE}/store_raw", body, format="json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert field in error["fields"]
    assert message in json.dumps(error["fields"][field])
    assert not RawTranscript.objects.exists()


def test_store_raw_rejects_a_bad_vectorstore_name(api: APIClient) -> None:
    response = api.post("/api/memory/bad%20name!/store_raw", {}, format="json")

    assert response.status_code == 400
    assert "vectorstore_name" in response.json()["error"]["fields"]


def test_store_raw_refuses_another_users_session_with_409(api: APIClient) -> None:
    _store_raw(api, session_id="shared", user_id="u1")

    response = api.post(
        f"{BASE}/store_raw",
        {"session_data": "User: hi", "session_id": "shared", "metadata": {"user_id": "u2"}},
        format="json",
    )

    assert response.status_code == 409
    assert RawTranscript.objects.count() == 1


def test_store_raw_needs_an_api_key() -> None:
    response = APIClient().post(f"{BASE}/store_raw", {}, format="json")

    assert response.status_code == 401


# -- processing_status --------------------------------------------------------------------------------


def test_processing_status_counts_the_queue_and_shows_the_heartbeat(api: APIClient) -> None:
    _store_raw(api, session_id="a")
    process_queued(limit=10)
    _store_raw(api, session_id="b")

    body = api.get(f"{BASE}/processing_status").json()

    assert body["queue_size"] == 1
    assert body["counts"] == {"queued": 1, "processing": 0, "processed": 1, "error": 0}
    assert body["processor"]["alive"] is True
    assert body["processor"]["source"] == "redis"
    assert body["processor"]["heartbeat_age_seconds"] < 30
    assert body["daily_stats"][0]["processed"] == 1
    assert body["daily_stats"][0]["mean_processing_seconds"] > 0


def test_processing_status_is_empty_for_another_account(api: APIClient, other_api: APIClient) -> None:
    _store_raw(api)

    body = other_api.get(f"{BASE}/processing_status").json()

    assert body["queue_size"] == 0
    assert body["daily_stats"] == []


def test_processing_status_rejects_unknown_parameters(api: APIClient) -> None:
    assert api.get(f"{BASE}/processing_status?verbose=1").status_code == 400


# -- hierarchy ---------------------------------------------------------------------------------------


def test_hierarchy_returns_all_three_levels_with_their_links(api: APIClient) -> None:
    stored = _store_raw(api)
    process_queued(limit=10)

    body = api.get(f"{BASE}/hierarchy", {"session_id": "s1", "memory_type": "all"}).json()

    assert [raw["raw_memory_id"] for raw in body["raw"]] == [stored["raw_memory_id"]]
    assert body["raw"][0]["status"] == "processed"
    assert len(body["summaries"]) == 1
    assert body["summaries"][0]["session_id"] == "s1"
    assert body["summaries"][0]["raw_memory_id"] == stored["raw_memory_id"]
    assert {"User prefers window seats", "User is vegetarian"} <= {m["content"] for m in body["discrete"]}
    assert all(m["session_id"] == "s1" for m in body["discrete"])
    assert all(m["raw_memory_id"] == stored["raw_memory_id"] for m in body["discrete"])
    assert body["count"] == len(body["raw"]) + len(body["summaries"]) + len(body["discrete"])


def test_hierarchy_filters_by_type_session_date_and_limit(api: APIClient) -> None:
    _store_raw(api, session_id="a")
    _store_raw(api, session_id="b")
    process_queued(limit=10)

    only_summaries = api.get(f"{BASE}/hierarchy", {"memory_type": "summary"}).json()
    assert set(only_summaries) == {"vectorstore_name", "memory_type", "summaries", "count"}
    assert len(only_summaries["summaries"]) == 2
    assert len(api.get(f"{BASE}/hierarchy", {"memory_type": "raw", "limit": "1"}).json()["raw"]) == 1
    assert api.get(f"{BASE}/hierarchy", {"session_id": "a", "memory_type": "raw"}).json()["count"] == 1
    today = timezone.now().date()
    assert api.get(f"{BASE}/hierarchy", {"end_date": str(today)}).json()["count"] > 0
    assert api.get(f"{BASE}/hierarchy", {"start_date": str(today + timedelta(days=1))}).json()["count"] == 0
    assert api.get(f"{BASE}/hierarchy", {"session_id": "nope"}).json()["count"] == 0


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 1001},
        {"limit": "x"},
        {"memory_type": "everything"},
        {"start_date": "yesterday"},
        {"start_date": "2024-02-01", "end_date": "2024-01-01"},
        {"colour": "red"},
    ],
)
def test_hierarchy_rejects_bad_parameters_with_a_json_400(api: APIClient, params: dict[str, Any]) -> None:
    response = api.get(f"{BASE}/hierarchy", params)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"


def test_hierarchy_shows_nothing_of_another_account_or_namespace(api: APIClient, other_api: APIClient) -> None:
    _store_raw(api)
    process_queued(limit=10)

    assert other_api.get(f"{BASE}/hierarchy").json()["count"] == 0
    assert api.get("/api/memory/elsewhere/hierarchy").json()["count"] == 0


# -- session -----------------------------------------------------------------------------------------


def test_session_shows_its_summary_memories_and_transcript_status(api: APIClient) -> None:
    stored = _store_raw(api)
    pending = api.get(f"{BASE}/session/s1").json()
    assert pending["status"] == "pending"
    assert pending["transcripts"][0]["status"] == "queued"

    process_queued(limit=10)
    body = api.get(f"{BASE}/session/s1").json()

    assert body["status"] == "processed"
    assert body["summary"]
    assert body["summary_embedded"] is True
    assert body["summary_memory"]["content"] == body["summary"]
    assert "User prefers window seats" in {m["content"] for m in body["memories"]}
    assert body["transcripts"][0]["raw_memory_id"] == stored["raw_memory_id"]
    assert body["transcripts"][0]["memories_created"] == len(body["memories"])


def test_session_of_another_account_is_404(api: APIClient, other_api: APIClient) -> None:
    _store_raw(api)

    response = other_api.get(f"{BASE}/session/s1")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert api.get("/api/memory/elsewhere/session/s1").status_code == 404


# -- stats -------------------------------------------------------------------------------------------


def test_stats_count_memories_by_type_storage_and_processing(api: APIClient) -> None:
    _store_raw(api, session_id="a")
    _store_raw(api, session_id="b")
    process_queued(limit=1)

    body = api.get(f"{BASE}/stats").json()

    discrete = Memory.objects.exclude(kind=MemoryKind.SUMMARY).count()
    assert body["memories"]["hierarchy"] == {"discrete": discrete, "summary": 1, "raw_transcripts": 2}
    assert body["transcripts"]["by_status"]["queued"] == 1
    assert body["storage_bytes"]["raw_transcripts"] == 2 * len(FLIGHT["session_data"].encode())
    assert body["storage_bytes"]["memory_content"] > 0
    assert body["processing"]["today"]["processed"] == 1
    assert body["sessions"] == {"total": 2, "summarized": 1}


def test_stats_of_another_account_are_zero(api: APIClient, other_api: APIClient) -> None:
    _store_raw(api)
    process_queued(limit=10)

    body = other_api.get(f"{BASE}/stats").json()

    assert body["memories"]["total"] == 0
    assert body["storage_bytes"]["total"] == 0


# -- cleanup -----------------------------------------------------------------------------------------


def test_cleanup_deletes_old_processed_transcripts_of_the_caller_only(
    api: APIClient, other_api: APIClient, account: AccountWithKey, other_account: AccountWithKey
) -> None:
    _store_raw(api, session_id="mine")
    _store_raw(other_api, session_id="theirs")
    process_queued(limit=10)
    RawTranscript.objects.update(processed_at=timezone.now() - timedelta(days=10))
    memories = Memory.objects.count()

    dry = api.post(f"{BASE}/cleanup?retention_days=7&dry_run=true")
    assert dry.json()["transcripts_deleted"] == 1
    assert RawTranscript.objects.count() == 2
    kept = api.post(f"{BASE}/cleanup", {"retention_days": 30}, format="json")
    assert kept.json()["transcripts_deleted"] == 0
    response = api.post(f"{BASE}/cleanup?retention_days=7")

    assert response.status_code == 200
    assert response.json()["transcripts_deleted"] == 1
    assert list(RawTranscript.objects.values_list("account_id", flat=True)) == [other_account.account.id]
    assert Memory.objects.count() == memories


def test_cleanup_defaults_to_30_days(api: APIClient) -> None:
    body = api.post(f"{BASE}/cleanup").json()

    assert body["retention_days"] == 30
    assert body["transcripts_deleted"] == 0


@pytest.mark.parametrize("query", ["retention_days=-1", "retention_days=abc", "days=3"])
def test_cleanup_rejects_bad_input_with_a_json_400(api: APIClient, query: str) -> None:
    response = api.post(f"{BASE}/cleanup?{query}")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"


@pytest.mark.parametrize("session_id", ["%00", "a%00b", "%ED%A0%80", "x" * 300])
def test_session_with_an_impossible_id_is_404_not_500(api: APIClient, session_id: str) -> None:
    response = api.get(f"{BASE}/session/{session_id}")

    assert response.status_code in (400, 404)
    assert "error" in response.json()


def test_hierarchy_with_a_nul_in_a_filter_is_400(api: APIClient) -> None:
    assert api.get(f"{BASE}/hierarchy?session_id=a%00b").status_code == 400
    assert api.get(f"{BASE}/hierarchy?user_id=%00").status_code == 400
