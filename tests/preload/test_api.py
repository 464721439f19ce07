from __future__ import annotations

import pytest
from django_q.models import OrmQ
from rest_framework.test import APIClient

from preload.models import PreloadConfig, PreloadRun, RunStatus
from preload.tasks import execute_preload_run, refresh_all
from tests.factories import AccountWithKey, make_memory

pytestmark = pytest.mark.django_db


def test_trigger_queues_a_run_that_a_worker_executes(api: APIClient, account: AccountWithKey) -> None:
    make_memory(account.account, "User likes tea", importance=0.9)

    response = api.post("/memory/preload/trigger", {"user_id": "u1"}, format="json")

    assert response.status_code == 202
    run_id = response.json()["id"]
    assert response.json()["status"] == "running"
    assert OrmQ.objects.count() == 1  # queued durably in PostgreSQL
    assert execute_preload_run(run_id) == "succeeded"
    status = api.get("/memory/preload/status", {"user_id": "u1"}).json()
    assert status["last"][0]["id"] == run_id
    assert status["last"][0]["memories"] == 1
    assert status["user"]["strategies"]["important"]["memories"] == 1
    assert execute_preload_run(run_id) == "succeeded"  # a retried task does nothing twice


@pytest.mark.parametrize(
    "body",
    [{}, {"user_id": "u1", "all": True}, {"user_ids": []}, {"all": True, "strategies": ["trending"]}, {"bogus": 1}],
)
def test_bad_trigger_is_400_and_queues_nothing(api: APIClient, body: dict[str, object]) -> None:
    response = api.post("/memory/preload/trigger", body, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert PreloadRun.objects.count() == 0


def test_runs_of_another_account_are_not_shown(api: APIClient, other_api: APIClient, account: AccountWithKey) -> None:
    make_memory(account.account, "User likes tea")
    api.post("/memory/preload/trigger", {"all": True}, format="json")

    other = other_api.get("/memory/preload/status").json()
    assert (other["current"], other["last"]) == ([], [])
    assert api.get("/memory/preload/status").json()["current"][0]["status"] == RunStatus.RUNNING


def test_config_read_change_and_inherit(api: APIClient, other_api: APIClient) -> None:
    before = api.get("/memory/preload/config").json()
    assert before["effective"]["max_memories_per_user"] == 100
    assert before["origins"]["max_memories_per_user"] == "default"

    changed = api.post("/memory/preload/config", {"options": {"max_memories_per_user": 20}}, format="json")
    user = api.post("/memory/preload/config", {"user_id": "u1", "options": {"recent_days": 3}}, format="json").json()

    assert changed.status_code == 200
    assert changed.json()["set"] == {"max_memories_per_user": 20}
    assert user["effective"]["max_memories_per_user"] == 20
    assert user["origins"]["max_memories_per_user"] == "account"
    assert user["effective"]["recent_days"] == 3
    assert other_api.get("/memory/preload/config").json()["effective"]["max_memories_per_user"] == 100
    assert PreloadConfig.objects.count() == 2


@pytest.mark.parametrize(
    "options",
    [{"max_memories_per_user": -1}, {"max_memories_per_user": "many"}, {"nonsense": 1}, {"memory_budget_bytes": 10}],
)
def test_bad_config_is_400_and_changes_nothing(api: APIClient, options: dict[str, object]) -> None:
    response = api.post("/memory/preload/config", {"options": options}, format="json")
    assert response.status_code == 400
    assert PreloadConfig.objects.count() == 0


def test_preload_endpoints_need_a_key(db: None) -> None:
    client = APIClient()
    assert client.get("/memory/preload/status").status_code == 401
    assert client.post("/memory/preload/trigger", {"all": True}, format="json").status_code == 401
    assert client.get("/memory/preload/config").status_code == 401


def test_service_wide_runs_show_in_every_accounts_status(api: APIClient, account: AccountWithKey) -> None:
    make_memory(account.account, "User likes tea")
    refresh_all()

    last = api.get("/memory/preload/status").json()["last"]
    assert [(run["trigger"], run["covers"]) for run in last] == [("schedule", "service")]
