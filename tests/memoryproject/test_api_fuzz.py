"""API fuzzing: schemathesis generates requests for every operation of the
OpenAPI schema (/api/schema/) - valid ones, and invalid ones on purpose - and
sends them to the application in process, with a real API key. No answer may
be a 5xx, and every answer must be one the schema documents: its status code,
its content type and its body.

Bounded: FUZZ_EXAMPLES examples per operation (25; more for a deeper run
by hand), derandomized so that a failure found in CI is found again anywhere.
No operation is left out.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import schemathesis
from django.contrib.auth import get_user_model
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import Client
from django.utils.crypto import get_random_string
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.factories import AccountWithKey, make_memory, make_pending, make_session, make_transcript

CONFIG = {
    # Valid requests, and requests that break the schema on purpose (which must be 4xx, never 5xx).
    # Credentials are the test's, not generated. No NUL characters: every text field refuses
    # them (PostgreSQL cannot store them), as tests/memories/api/test_bad_input.py checks.
    "generation": {"mode": "all", "with-security-parameters": False, "allow-x00": False},
    # Examples and fuzzing. Not the coverage phase: its exhaustive boundary values take minutes
    # (run by hand, it found nothing more); not the stateful phase: the schema declares no links.
    "phases": {"coverage": {"enabled": False}, "stateful": {"enabled": False}},
}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
VECTORSTORE = "fuzz"


def _schema_document() -> dict[str, Any]:
    document: dict[str, Any] = SchemaGenerator().get_schema(request=None, public=True)  # type: ignore[no-untyped-call]
    return document


# Loaded when the tests are collected, for one test per operation. (schemathesis.pytest.from_fixture,
# which would load it in a fixture, does not run on pytest 9: it sets Node._nodeid, gone there.)
schema = schemathesis.openapi.from_dict(_schema_document(), config=SchemathesisConfig.from_dict(CONFIG))
schema.app = WSGIHandler()


@dataclass(frozen=True)
class Caller:
    """What every request carries: the API key, and a staff session for the one staff-only operation."""

    headers: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)


@pytest.fixture
def caller(account: AccountWithKey, client: Client) -> Caller:
    client.force_login(get_user_model().objects.create_user("fuzz-admin", is_staff=True))
    # A session's unsafe requests need the CSRF cookie and header to agree; API key requests ignore both.
    token = get_random_string(32)
    return Caller(
        headers={"Authorization": f"Bearer {account.raw_key}", "X-CSRFToken": token},
        cookies={"sessionid": client.cookies["sessionid"].value, "csrftoken": token},
    )


@dataclass(frozen=True)
class Seeded:
    memory_id: str
    session_id: str


@pytest.fixture
def seeded(account: AccountWithKey) -> Seeded:
    """A memory (with its history) and a processed session of the account: valid generated
    requests name these instead of random ids, so that reading, changing and deleting
    what exists is fuzzed too, not only the 404 of what does not."""
    (memory,) = make_pending(account.account, ["User prefers green tea"])
    session = make_session(account.account, "fuzz-session", namespace=VECTORSTORE)
    make_transcript(session)
    make_memory(account.account, "User likes hiking", user_id=session.user_id, namespace=VECTORSTORE, session=session)
    return Seeded(memory_id=str(memory.id), session_id=session.external_id)


def _name_seeded(case: Any, seeded: Seeded) -> None:
    if case.meta.generation.mode is not GenerationMode.POSITIVE:
        return  # invalid ids and names stay as generated
    substitutes = {"memory_id": seeded.memory_id, "vectorstore_name": VECTORSTORE, "session_id": seeded.session_id}
    for name in case.path_parameters or {}:
        case.path_parameters[name] = substitutes[name]


@pytest.fixture
def application(db: None) -> Iterator[None]:
    """Requests to schema.app run in this test's transaction."""
    # As Django's test client does: neither the start nor the end of a request may
    # close the connection, and with it the test's transaction.
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    try:
        yield
    finally:
        for signal in (request_started, request_finished):
            signal.connect(close_old_connections)


@schema.parametrize()
@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "25")),
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[
        # The account, its data and the transaction last across the examples of an operation, on purpose.
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
def test_every_operation_answers_generated_requests_as_its_schema_says(
    case: Any, caller: Caller, seeded: Seeded, application: None
) -> None:
    _name_seeded(case, seeded)
    case.call_and_validate(headers=caller.headers, cookies=caller.cookies, checks=CHECKS)


def test_the_fuzzed_schema_is_the_one_served(client: Client, db: None) -> None:
    served = client.get("/api/schema/", {"format": "json"})
    assert served.status_code == 200
    assert orjson.loads(served.content) == orjson.loads(orjson.dumps(_schema_document()))
