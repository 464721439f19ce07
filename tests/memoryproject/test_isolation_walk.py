"""Isolation proof: every operation of the OpenAPI schema, called with a second
account's key on the first account's ids, user ids, session ids and
vectorstore names, finds nothing of it (404, never 403), shows nothing of it
(lists and searches empty, no id or content of it anywhere in a body) and
changes nothing of it.

_calls() is the table of how to call each operation; the walk fails when the
schema gains an operation the table lacks, so a new endpoint cannot skip the proof.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import pytest
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from memories.access import flush_access_counts, send_queued_records
from memories.cache import tiered_cache
from memories.ingest import process_queued
from memories.models import Account, Memory, MemoryHistory, ProcessingDay, RawTranscript, Session
from memories.vectors import EmbeddingField
from preload.engine import strategy_key, trending_key
from preload.models import PreloadConfig, PreloadRun
from preload.options import USER_STRATEGIES
from preload.tasks import execute_preload_run
from tests.factories import AccountWithKey, make_memory

pytestmark = pytest.mark.django_db

USER = "alice"
VECTORSTORE = "travel"
SESSION = "trip-a"
TRANSCRIPT = (
    "User: Hi, I need a flight from Boston to Lisbon for the 14th of June.\n"
    "Assistant: Sure! Any preferred seat?\n"
    "User: I prefer window seats, and I am vegetarian.\n"
    "Assistant: Noted."
)
# Markers only the first account ever sends: finding one in the second account's answers is a leak.
TAG_MARKER = "a-secret-tag"
METADATA_MARKER = "a-secret-metadata"


@dataclass(frozen=True)
class Seeded:
    """The first account's data, as the second account will name it."""

    live_id: str  # patched: has history
    keyed_id: str  # with category and key (an upsert key)
    deleted_id: str  # deleted: only its history is left
    batch_ids: list[str]
    pending_id: str  # an async write, still waiting for its vector
    extracted_ids: list[str]  # discrete memories and the summary made from the transcript
    cursor: str
    category: str
    key: str
    # Of memories the second account re-sends in other letters: the first for a single write,
    # the last for an async one, the others in a batch.
    contents: list[str]
    secrets: frozenset[str]  # every id and text of the first account

    @property
    def memory_ids(self) -> list[str]:
        return [self.live_id, self.keyed_id, self.deleted_id, self.pending_id, *self.batch_ids, *self.extracted_ids]


# -- the first account's data --------------------------------------------------------------------------


def _ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.content)
    return response.json() if response.content else None


def _seed(api: APIClient, account: Account) -> Seeded:
    """Data of every kind, written as a client would, plus an expired memory (which no client can write)."""
    keyed = _ok(
        api.post(
            "/memory/memories",
            {
                "user_id": USER,
                "content": "Alice keeps her spare key under the blue flowerpot",
                "category": "home",
                "key": "spare-key",
                "tags": [TAG_MARKER],
                "metadata": {"marker": METADATA_MARKER},
                "importance": 0.9,
                "pinned": True,
            },
            format="json",
        ),
        201,
    )
    live = _ok(
        api.post("/memory/memories", {"user_id": USER, "content": "Alice plays the cello on Sundays"}, format="json"),
        201,
    )
    _ok(api.patch(f"/memory/memories/{live['id']}", {"content": "Alice plays the viola on Sundays"}, format="json"))
    batch = _ok(
        api.post(
            "/memory/memories/batch",
            {
                "memories": [
                    {"user_id": USER, "content": "Alice is allergic to hazelnuts", "kind": "preference"},
                    {"user_id": USER, "content": "Alice's locker code is fourfourseven"},
                ]
            },
            format="json",
        ),
        201,
    )
    pending_content = "Alice volunteers at the Marigold animal shelter"
    pending = _ok(
        api.post(
            "/memory/memories?async=true",
            {"user_id": USER, "content": pending_content},
            format="json",
        ),
        202,
    )
    doomed = _ok(
        api.post("/memory/memories", {"user_id": USER, "content": "Alice sold her old kayak"}, format="json"), 201
    )
    _ok(api.delete(f"/memory/memories/{doomed['id']}"), 204)
    _ok(
        api.post(
            f"/api/memory/{VECTORSTORE}/store_raw",
            {
                "session_data": TRANSCRIPT,
                "session_id": SESSION,
                "metadata": {"user_id": USER, "marker": METADATA_MARKER},
            },
            format="json",
        ),
        202,
    )
    assert process_queued(limit=5).processed == 1
    # Everything in the vectorstore came from the transcript: its discrete memories and its session's summary.
    extracted = [
        str(pk) for pk in Memory.objects.filter(account=account, namespace=VECTORSTORE).values_list("id", flat=True)
    ]
    assert extracted, "the transcript was processed into memories"
    make_memory(
        account,
        "Alice's expired coupon is SPRING-ALICE",
        user_id=USER,
        expires_at=timezone.now() - timedelta(days=1),
    )
    page = _ok(api.get("/memory/memories", {"user_id": USER, "limit": "2"}))
    assert page["next_cursor"]
    _ok(api.post("/memory/preload/config", {"options": {"max_memories_per_user": 7}}, format="json"))
    _ok(api.post("/memory/preload/config", {"user_id": USER, "options": {"recent_days": 3}}, format="json"))
    run = _ok(api.post("/memory/preload/trigger", {"user_id": USER}, format="json"), 202)
    assert execute_preload_run(run["id"]) == "succeeded"
    return Seeded(
        live_id=live["id"],
        keyed_id=keyed["id"],
        deleted_id=doomed["id"],
        batch_ids=[result["memory"]["id"] for result in batch["results"]],
        pending_id=pending["id"],
        extracted_ids=extracted,
        cursor=page["next_cursor"],
        category="home",
        key="spare-key",
        contents=[keyed["content"], *(result["memory"]["content"] for result in batch["results"]), pending_content],
        secrets=_secrets(account),
    )


def _secrets(account: Account) -> frozenset[str]:
    """Every id and text of the account that no other account may ever be shown."""
    texts: set[str] = {TAG_MARKER, METADATA_MARKER}
    for memory_id, content in Memory.objects.filter(account=account).values_list("id", "content"):
        texts |= {str(memory_id), content}
    for memory_id, old, new in MemoryHistory.objects.filter(account=account).values_list(
        "memory_id", "old_content", "new_content"
    ):
        texts |= {str(memory_id), old or "", new or ""}
    for session_id, summary in Session.objects.filter(account=account).values_list("id", "summary"):
        texts |= {str(session_id), summary}
    texts |= {str(pk) for pk in RawTranscript.objects.filter(account=account).values_list("id", flat=True)}
    texts |= {str(pk) for pk in PreloadRun.objects.filter(account=account).values_list("id", flat=True)}
    # Too short to be told apart from anything else in a body (an empty summary, say).
    return frozenset(text for text in texts if len(text) >= 8)


_UNCOMPARABLE = (EmbeddingField, SearchVectorField, models.GeneratedField)


def _rows(model: type[models.Model], account: Account) -> list[tuple[Any, ...]]:
    # Vectors are numpy arrays (no plain ==); the generated column follows the content anyway.
    names = [f.attname for f in model._meta.concrete_fields if not isinstance(f, _UNCOMPARABLE)]
    return list(model._default_manager.filter(account=account).order_by("pk").values_list(*names))


def _snapshot(account: Account) -> dict[str, Any]:
    """Everything of the account that a call could change: its rows, and its preload keys in Redis."""
    send_queued_records()
    flush_access_counts()  # reads counted but not yet written would change access_count later
    state: dict[str, Any] = {
        model.__name__: _rows(model, account)
        for model in (Memory, MemoryHistory, RawTranscript, Session, PreloadConfig, PreloadRun, ProcessingDay)
    }
    keys = [trending_key(account_id=account.id, namespace=ns) for ns in ("default", VECTORSTORE)]
    keys += [
        strategy_key(account_id=account.id, namespace=ns, user_id=USER, strategy=strategy)
        for ns in ("default", VECTORSTORE)
        for strategy in USER_STRATEGIES
    ]
    with tiered_cache().guarded("preload") as redis:
        state["redis"] = dict(zip(keys, redis.mget(keys), strict=True))
    return state


# -- how the second account calls each operation -------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request of the second account, and what its answer must be."""

    path: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, Any] = field(default_factory=dict)
    body: Any = None
    expect: Callable[[Any], None] = lambda response: None
    # A write: made after every read, so that the reads see the second account with nothing of its own.
    writes: bool = False


def _not_found(response: Any) -> None:
    assert response.status_code == 404, (response.status_code, response.content)
    assert response.json()["error"]["code"] == "not_found"


def _answer(status: int, check: Callable[[dict[str, Any]], None] = lambda body: None) -> Callable[[Any], None]:
    def expect(response: Any) -> None:
        assert response.status_code == status, (response.status_code, response.content)
        check(response.json())

    return expect


def _empty(*names: str) -> Callable[[Any], None]:
    def check(body: dict[str, Any]) -> None:
        assert {name: body.get(name) for name in names} == {name: [] for name in names}

    return _answer(200, check)


def _forbidden(response: Any) -> None:
    assert response.status_code == 403, (response.status_code, response.content)


def _memory_reads(seeded: Seeded) -> list[Call]:
    return [Call(path={"memory_id": memory_id}, expect=_not_found) for memory_id in seeded.memory_ids]


def _no_counts(body: dict[str, Any]) -> None:
    assert body["memories"]["total"] == 0
    assert body["transcripts"]["total"] == 0
    assert body["sessions"]["total"] == 0


def _nothing_processing(body: dict[str, Any]) -> None:
    assert (body["queue_size"], body["processing"], body["processed"], body["failed"]) == (0, 0, 0, 0)
    assert not any(body["counts"].values())


def _no_runs(body: dict[str, Any]) -> None:
    assert (body["current"], body["last"]) == ([], [])


def _nothing_preloaded(body: dict[str, Any]) -> None:
    _no_runs(body)
    assert {name: s["memories"] for name, s in body["user"]["strategies"].items()} == dict.fromkeys(
        map(str, USER_STRATEGIES), 0
    )


def _nothing_configured(body: dict[str, Any]) -> None:
    assert body["set"] == {}
    assert body["origins"]["max_memories_per_user"] == "default"
    assert body["origins"]["recent_days"] == "default"


def _nothing_cleaned(body: dict[str, Any]) -> None:
    removed = ("transcripts_deleted", "sessions_deleted", "summaries_deleted", "memories_detached")
    assert {name: body[name] for name in removed} == dict.fromkeys(removed, 0)
    assert body["expired_memories_deleted"] == 0


def _searches(seeded: Seeded) -> list[dict[str, Any]]:
    """The first account's user, in each of its namespaces, asked for its own words; and with its tag."""
    plain = [{"user_id": USER, "namespace": ns, "query": seeded.contents[0]} for ns in ("default", VECTORSTORE)]
    return [*plain, {**plain[0], "tags": TAG_MARKER}]


def _calls(seeded: Seeded, first_ids: set[str]) -> dict[str, list[Call]]:
    # The second account writes under the first one's user id, category and key, and its
    # contents in other letters (the same to the embedding model): nothing of the first may match.
    def new_memory(response: Any) -> None:
        assert response.status_code == 201, response.content  # 200 would say it updated an existing one
        assert response.json()["id"] not in first_ids

    def new_pending_memory(response: Any) -> None:
        body = _ok(response, 202)
        assert body["created"] is True
        assert body["id"] not in first_ids

    def own_transcript(response: Any) -> None:
        # The second account's own session of that name: no conflict with the first account's.
        assert _ok(response, 202)["raw_memory_id"] not in first_ids

    def new_batch(response: Any) -> None:
        body = _ok(response, 201)
        assert (body["created"], body["updated"]) == (len(seeded.contents[1:-1]), 0)
        assert not {result["memory"]["id"] for result in body["results"]} & first_ids

    def own_run(response: Any) -> None:
        body = _ok(response, 202)
        # The run is executed now: it must write the second account's keys, not the first's.
        assert execute_preload_run(body["id"]) == "succeeded"

    namespaces = ("default", VECTORSTORE)
    return {
        "GET /memory/memories": [
            *(
                Call(query={"user_id": USER, "namespace": ns, "limit": 1000}, expect=_empty("results"))
                for ns in namespaces
            ),
            Call(query={"user_id": USER, "cursor": seeded.cursor}, expect=_empty("results")),
            Call(
                query={"user_id": USER, "tags": TAG_MARKER, "metadata": orjson.dumps({"marker": METADATA_MARKER})},
                expect=_empty("results"),
            ),
        ],
        "POST /memory/memories": [
            Call(
                body={
                    "user_id": USER,
                    "content": seeded.contents[0].upper(),
                    "category": seeded.category,
                    "key": seeded.key,
                },
                expect=new_memory,
                writes=True,
            ),
            Call(
                query={"async": "true"},
                body={"user_id": USER, "content": seeded.contents[-1].upper()},
                expect=new_pending_memory,
                writes=True,
            ),
        ],
        "POST /memory/memories/batch": [
            Call(
                body={"memories": [{"user_id": USER, "content": content.upper()} for content in seeded.contents[1:-1]]},
                expect=new_batch,
                writes=True,
            )
        ],
        "GET /memory/memories/{memory_id}": _memory_reads(seeded),
        "GET /memory/memories/{memory_id}/history": _memory_reads(seeded),
        "PATCH /memory/memories/{memory_id}": [
            Call(path=call.path, body={"content": "taken over", "pinned": False}, expect=_not_found, writes=True)
            for call in _memory_reads(seeded)
        ],
        "DELETE /memory/memories/{memory_id}": [
            Call(path=call.path, expect=_not_found, writes=True) for call in _memory_reads(seeded)
        ],
        "GET /memory/relevant": [Call(query=search, expect=_empty("results")) for search in _searches(seeded)],
        "POST /memory/relevant": [Call(body=search, expect=_empty("results")) for search in _searches(seeded)],
        "GET /memory/cache/stats": [Call(expect=_answer(200))],
        # Staff only (a logged-in admin session): an API key is not enough, whoever's it is.
        "POST /memory/cache/clear": [Call(expect=_forbidden, writes=True)],
        "POST /memory/preload/trigger": [
            Call(body={"user_id": USER, "namespace": ns}, expect=own_run, writes=True) for ns in namespaces
        ],
        "GET /memory/preload/status": [
            *(
                Call(query={"user_id": USER, "namespace": ns}, expect=_answer(200, _nothing_preloaded))
                for ns in namespaces
            ),
            Call(expect=_answer(200, _no_runs)),
        ],
        "GET /memory/preload/config": [
            Call(query={"user_id": USER, "namespace": "default"}, expect=_answer(200, _nothing_configured)),
            Call(expect=_answer(200, _nothing_configured)),
        ],
        "POST /memory/preload/config": [
            Call(body={"user_id": USER, "options": {"recent_days": 1}}, expect=_answer(200), writes=True),
            Call(body={"options": {"max_memories_per_user": 2}}, expect=_answer(200), writes=True),
        ],
        "POST /api/memory/{vectorstore_name}/store_raw": [
            Call(
                path={"vectorstore_name": VECTORSTORE},
                body={
                    "session_data": "User: Please remember that I collect vintage stamps.\nAssistant: Noted.",
                    "session_id": SESSION,
                    "metadata": {"user_id": USER},
                },
                expect=own_transcript,
                writes=True,
            )
        ],
        "GET /api/memory/{vectorstore_name}/processing_status": [
            Call(path={"vectorstore_name": VECTORSTORE}, expect=_answer(200, _nothing_processing))
        ],
        "GET /api/memory/{vectorstore_name}/hierarchy": [
            Call(
                path={"vectorstore_name": VECTORSTORE},
                query={"session_id": SESSION, "user_id": USER, "memory_type": "all"},
                expect=_empty("summaries", "discrete", "raw"),
            ),
            Call(path={"vectorstore_name": VECTORSTORE}, expect=_empty("summaries", "discrete", "raw")),
        ],
        "GET /api/memory/{vectorstore_name}/session/{session_id}": [
            Call(path={"vectorstore_name": VECTORSTORE, "session_id": SESSION}, expect=_not_found)
        ],
        "GET /api/memory/{vectorstore_name}/stats": [
            Call(path={"vectorstore_name": ns}, expect=_answer(200, _no_counts)) for ns in namespaces
        ],
        "POST /api/memory/{vectorstore_name}/cleanup": [
            # Retention 0 would delete everything processed or idle: of the caller's account only.
            Call(
                path={"vectorstore_name": ns},
                query={"retention_days": 0, "session_retention_days": 0},
                body={},
                expect=_answer(200, _nothing_cleaned),
                writes=True,
            )
            for ns in namespaces
        ],
    }


# -- the walk ------------------------------------------------------------------------------------------


def _schema_operations() -> dict[str, dict[str, Any]]:
    schema = SchemaGenerator().get_schema(request=None, public=True)  # type: ignore[no-untyped-call]
    return {
        f"{method.upper()} {path}": operation
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
    }


# Query parameters that name the first account's things: where an operation has
# one, some call of it must send it, or the walk would not try that door.
_NAMING_PARAMETERS = {"user_id", "session_id", "namespace", "cursor"}


def _check_coverage(operation_key: str, operation: dict[str, Any], calls: list[Call]) -> None:
    parameters = operation.get("parameters", [])
    path_names = {p["name"] for p in parameters if p["in"] == "path"}
    required = {p["name"] for p in parameters if p["in"] == "query" and p.get("required")}
    assert calls, f"{operation_key}: no call"
    for call in calls:
        assert set(call.path) == path_names, f"{operation_key}: path parameters {path_names}"
        sent = set(call.query) | set(call.body or {})
        assert required <= sent, f"{operation_key}: required {required - sent}"
    naming = {p["name"] for p in parameters if p["in"] == "query"} & _NAMING_PARAMETERS
    sent_anywhere = {name for call in calls for name in call.query}
    assert naming <= sent_anywhere, f"{operation_key}: never sends {naming - sent_anywhere}"


def _request(client: APIClient, operation_key: str, call: Call) -> Any:
    method, template = operation_key.split(" ", 1)
    url = template.format(**{name: quote(value, safe="") for name, value in call.path.items()})
    if call.query:
        url += "?" + urlencode(call.query)
    if call.body is None:
        return client.generic(method, url)
    return client.generic(method, url, orjson.dumps(call.body).decode(), content_type="application/json")


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _assert_no_leak(response: Any, call: Call, secrets: frozenset[str], where: str) -> None:
    text = response.content.decode()
    # An answer may repeat what its request said (a search echoes its query); nothing more.
    said = " ".join([*call.path.values(), *map(str, call.query.values()), orjson.dumps(call.body).decode()])
    leaked = sorted(secret for secret in secrets if secret in text and secret not in said)
    assert not leaked, f"{where} shows the first account's {leaked}: {text[:500]}"
    assert response.status_code < 500, f"{where}: {response.status_code} {text[:500]}"


def test_another_accounts_key_finds_sees_and_changes_nothing_anywhere_in_the_schema(
    api: APIClient, other_api: APIClient, account: AccountWithKey
) -> None:
    seeded = _seed(api, account.account)
    first_ids = {secret for secret in seeded.secrets if _is_uuid(secret)}
    before = _snapshot(account.account)
    operations = _schema_operations()
    table = _calls(seeded, first_ids)

    # A new operation in the schema fails here until the walk knows how to call it.
    assert set(table) == set(operations)
    for operation_key, calls in table.items():
        _check_coverage(operation_key, operations[operation_key], calls)

    ordered = [(key, call) for key, calls in table.items() for call in calls if not call.writes]
    ordered += [(key, call) for key, calls in table.items() for call in calls if call.writes]
    for operation_key, call in ordered:
        response = _request(other_api, operation_key, call)
        where = f"{operation_key} {dict(call.path)} {dict(call.query)}"
        _assert_no_leak(response, call, seeded.secrets, where)
        assert response.status_code != 403 or operation_key == "POST /memory/cache/clear", where
        call.expect(response)

    # Read again, now that the second account has its own data under the same names: still only its own.
    for operation_key, call in ordered:
        if not call.writes:
            response = _request(other_api, operation_key, call)
            _assert_no_leak(response, call, seeded.secrets, f"again: {operation_key} {dict(call.path)}")

    assert _snapshot(account.account) == before
    # And the first account still sees all of it.
    listed = {m["id"] for m in _ok(api.get("/memory/memories", {"user_id": USER, "limit": "1000"}))["results"]}
    assert listed == {seeded.live_id, seeded.keyed_id, seeded.pending_id, *seeded.batch_ids}
