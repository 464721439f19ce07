"""Isolation, property-based: random interleavings of writes (single, batch,
async), searches, lists, gets, preloads and deletes by two accounts whose end
users have the same user ids. No answer may ever hold a memory of another
(account, user) scope, and deleting all of one user's memories leaves every
other scope as it was.

A model of who owns which memory id follows the calls; the API must agree with it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson
import pytest
from django.db import transaction
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test
from rest_framework.test import APIClient

from memories.cache import tiered_cache
from memories.embedder import embed_pending
from memories.models import Account, Memory, MemoryHistory
from memories.services import memories_delete
from preload.engine import strategy_key
from preload.options import USER_STRATEGIES
from preload.tasks import execute_preload_run
from tests.conftest import reset_caches
from tests.factories import make_account

pytestmark = pytest.mark.django_db

# The same user ids in both accounts: a scope is (account, user), never the user alone.
USERS = ("alice", "bob", "carol")
ACCOUNTS = (0, 1)
# Few texts, so that the same content is written in many scopes: a deduplication
# or a cache that forgot the scope would merge or show another scope's memory.
TEXTS = (
    "I prefer window seats on long flights",
    "My dog is called Miso",
    "I am allergic to peanuts",
    "I work night shifts as a nurse",
    "I drink green tea every morning",
)

Scope = tuple[int, str]


def _client(raw_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def _json(response: Any, status: int) -> Any:
    assert response.status_code == status, (response.status_code, response.content)
    return response.json()


class IsolationMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # Each example starts clean: its rows live in a savepoint rolled back by
        # teardown, and the caches (which no rollback empties) are emptied here.
        self._atomic = transaction.atomic()
        self._atomic.__enter__()
        reset_caches()
        accounts = [make_account(name) for name in ("acme", "globex")]
        self.accounts: list[Account] = [created.account for created in accounts]
        self.clients = [_client(created.raw_key) for created in accounts]
        self.owner: dict[str, Scope] = {}  # every memory id ever answered, and whose it is
        self.alive: dict[Scope, set[str]] = defaultdict(set)

    def teardown(self) -> None:
        transaction.set_rollback(True)
        self._atomic.__exit__(None, None, None)

    # -- the model ---------------------------------------------------------------------------------

    def _stored(self, scope: Scope, memory_id: str) -> None:
        """A write answered with this id: a new memory of the scope, or one the scope already had."""
        assert self.owner.setdefault(memory_id, scope) == scope, f"{scope} was given {self.owner[memory_id]}'s memory"
        self.alive[scope].add(memory_id)

    def _visible_to(self, account: int, memory_id: str) -> bool:
        scope = self.owner[memory_id]
        return scope[0] == account and memory_id in self.alive[scope]

    def _assert_only(self, scope: Scope, memories: list[dict[str, Any]]) -> None:
        for memory in memories:
            assert self.owner.get(memory["id"]) == scope, f"{scope} was shown {memory}"
            assert memory["id"] in self.alive[scope], f"{scope} was shown a deleted memory {memory}"
            assert memory["user_id"] == scope[1]

    def _list(self, scope: Scope) -> list[dict[str, Any]]:
        account, user = scope
        page = _json(self.clients[account].get("/memory/memories", {"user_id": user, "limit": "1000"}), 200)
        self._assert_only(scope, page["results"])
        results: list[dict[str, Any]] = page["results"]
        return results

    def _assert_every_list_matches(self) -> None:
        for scope in [(account, user) for account in ACCOUNTS for user in USERS]:
            assert {memory["id"] for memory in self._list(scope)} == self.alive[scope], scope

    # -- writes ------------------------------------------------------------------------------------

    @rule(account=st.sampled_from(ACCOUNTS), user=st.sampled_from(USERS), text=st.sampled_from(TEXTS))
    def write(self, account: int, user: str, text: str) -> None:
        response = self.clients[account].post("/memory/memories", {"user_id": user, "content": text}, format="json")
        assert response.status_code in (200, 201), response.content
        self._stored((account, user), response.json()["id"])

    @rule(account=st.sampled_from(ACCOUNTS), user=st.sampled_from(USERS), text=st.sampled_from(TEXTS))
    def write_async(self, account: int, user: str, text: str) -> None:
        body = _json(
            self.clients[account].post(
                "/memory/memories?async=true", {"user_id": user, "content": text}, format="json"
            ),
            202,
        )
        self._stored((account, user), body["id"])

    @rule(
        account=st.sampled_from(ACCOUNTS),
        items=st.lists(st.tuples(st.sampled_from(USERS), st.sampled_from(TEXTS)), min_size=1, max_size=4),
        run_async=st.booleans(),
    )
    def write_batch(self, account: int, items: list[tuple[str, str]], run_async: bool) -> None:
        path = "/memory/memories/batch" + ("?async=true" if run_async else "")
        memories = [{"user_id": user, "content": text} for user, text in items]
        body = _json(self.clients[account].post(path, {"memories": memories}, format="json"), 202 if run_async else 201)
        ids = body["ids"] if run_async else [result["memory"]["id"] for result in body["results"]]
        for (user, _), memory_id in zip(items, ids, strict=True):
            self._stored((account, user), memory_id)

    @rule()
    def embed_in_background(self) -> None:
        # What the job workers do for async writes: afterwards those are found by similarity too.
        embed_pending()

    # -- reads -------------------------------------------------------------------------------------

    @rule(account=st.sampled_from(ACCOUNTS), user=st.sampled_from(USERS))
    def list_memories(self, account: int, user: str) -> None:
        assert {memory["id"] for memory in self._list((account, user))} == self.alive[(account, user)]

    @rule(account=st.sampled_from(ACCOUNTS), user=st.sampled_from(USERS), query=st.sampled_from(TEXTS))
    def search(self, account: int, user: str, query: str) -> None:
        found = _json(
            self.clients[account].get("/memory/relevant", {"user_id": user, "query": query, "limit": "50"}), 200
        )
        self._assert_only((account, user), found["results"])

    @precondition(lambda self: self.owner)
    @rule(account=st.sampled_from(ACCOUNTS), data=st.data())
    def get(self, account: int, data: st.DataObject) -> None:
        memory_id = data.draw(st.sampled_from(sorted(self.owner)))
        response = self.clients[account].get(f"/memory/memories/{memory_id}")
        if self._visible_to(account, memory_id):
            self._assert_only(self.owner[memory_id], [_json(response, 200)])
        else:
            assert response.status_code == 404, (memory_id, response.content)

    @rule(account=st.sampled_from(ACCOUNTS), user=st.sampled_from(USERS))
    def preload(self, account: int, user: str) -> None:
        run = _json(self.clients[account].post("/memory/preload/trigger", {"user_id": user}, format="json"), 202)
        assert execute_preload_run(run["id"]) == "succeeded"
        keys = [
            strategy_key(account_id=self.accounts[account].id, namespace="default", user_id=user, strategy=strategy)
            for strategy in USER_STRATEGIES
        ]
        with tiered_cache().guarded("preload") as redis:
            preloaded = [memory_id for raw in redis.mget(keys) if raw for memory_id in orjson.loads(raw)]
        assert all(self.owner.get(memory_id) == (account, user) for memory_id in preloaded), preloaded

    # -- deletes -----------------------------------------------------------------------------------

    @precondition(lambda self: self.owner)
    @rule(account=st.sampled_from(ACCOUNTS), data=st.data())
    def delete(self, account: int, data: st.DataObject) -> None:
        memory_id = data.draw(st.sampled_from(sorted(self.owner)))
        response = self.clients[account].delete(f"/memory/memories/{memory_id}")
        if self._visible_to(account, memory_id):
            assert response.status_code == 204, response.content
            self.alive[self.owner[memory_id]].discard(memory_id)
        else:
            assert response.status_code == 404, (memory_id, response.content)

    @rule(account=st.sampled_from(ACCOUNTS), user=st.sampled_from(USERS))
    def delete_user(self, account: int, user: str) -> None:
        for memory in self._list((account, user)):
            assert self.clients[account].delete(f"/memory/memories/{memory['id']}").status_code == 204
        self.alive[(account, user)].clear()
        self._assert_every_list_matches()


def test_no_interleaving_of_calls_shows_or_changes_another_scopes_memory(db: None) -> None:
    run_state_machine_as_test(
        IsolationMachine,
        settings=settings(
            max_examples=30,
            stateful_step_count=20,
            deadline=None,
            # Reproducible in CI, and no example database written into the work tree.
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# -- deleting all of one user's memories ---------------------------------------------------------------


def _scope_state(account: Account, user: str) -> list[tuple[Any, ...]]:
    rows = Memory.objects.filter(account=account, user_id=user).order_by("pk")
    history = MemoryHistory.objects.filter(account=account, memory__user_id=user).order_by("pk")
    return [
        *rows.values_list("id", "content", "updated_at", "embedding_model"),
        *history.values_list("id", "action"),
    ]


@pytest.mark.parametrize("how", ["api", "service"])
def test_deleting_all_of_one_users_memories_leaves_every_other_user_alone(how: str, db: None) -> None:
    """Same user id in the other account, another user in the same account: untouched, cached and preloaded too."""
    first, second = make_account("acme"), make_account("globex")
    clients = {first.account.id: _client(first.raw_key), second.account.id: _client(second.raw_key)}
    doomed = (first.account, "alice")
    others = [(second.account, "alice"), (first.account, "bob")]
    for account, user in [doomed, *others]:
        memories = [{"user_id": user, "content": text} for text in TEXTS]
        _json(clients[account.id].post("/memory/memories/batch", {"memories": memories}, format="json"), 201)
        # Warm every cache a later read could be answered from: lists, searches, memories by id, preloads.
        run = _json(clients[account.id].post("/memory/preload/trigger", {"user_id": user}, format="json"), 202)
        assert execute_preload_run(run["id"]) == "succeeded"
    before = {(account.id, user): _scope_state(account, user) for account, user in others}
    seen: dict[tuple[int, str], dict[str, set[str]]] = {}
    for account, user in [doomed, *others]:
        client = clients[account.id]
        listed = _json(client.get("/memory/memories", {"user_id": user, "limit": "1000"}), 200)["results"]
        found = _json(client.get("/memory/relevant", {"user_id": user, "query": TEXTS[0]}), 200)["results"]
        for memory in listed:
            _json(client.get(f"/memory/memories/{memory['id']}"), 200)
        seen[(account.id, user)] = {"listed": {m["id"] for m in listed}, "found": {m["id"] for m in found}}

    account, user = doomed
    if how == "api":
        for memory_id in seen[(account.id, user)]["listed"]:
            assert clients[account.id].delete(f"/memory/memories/{memory_id}").status_code == 204
    else:  # the bulk delete the admin uses
        memories_delete(memories=list(Memory.objects.filter(account=account, user_id=user)), actor="test")

    client = clients[account.id]
    assert _json(client.get("/memory/memories", {"user_id": user}), 200)["results"] == []
    assert _json(client.get("/memory/relevant", {"user_id": user, "query": TEXTS[0]}), 200)["results"] == []
    for memory_id in seen[(account.id, user)]["listed"]:
        assert client.get(f"/memory/memories/{memory_id}").status_code == 404
    for account, user in others:
        client = clients[account.id]
        assert _scope_state(account, user) == before[(account.id, user)]
        listed = _json(client.get("/memory/memories", {"user_id": user, "limit": "1000"}), 200)["results"]
        found = _json(client.get("/memory/relevant", {"user_id": user, "query": TEXTS[0]}), 200)["results"]
        assert {m["id"] for m in listed} == seen[(account.id, user)]["listed"]
        assert {m["id"] for m in found} == seen[(account.id, user)]["found"]
        for memory_id in seen[(account.id, user)]["listed"]:
            assert client.get(f"/memory/memories/{memory_id}").status_code == 200
