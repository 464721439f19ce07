from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.conf import settings
from django.test import override_settings
from django.utils import timezone
from django_redis import get_redis_connection

from memories.cache import tiered_cache
from preload.models import PreloadRun, RunStatus, RunTrigger
from preload.runs import UserRef, _lock_key, preload_run, resume_stale_runs, run_create, users_of
from tests.factories import AccountWithKey, make_memory

pytestmark = pytest.mark.django_db


def test_a_user_locked_by_another_run_is_skipped(account: AccountWithKey) -> None:
    make_memory(account.account, "mine", importance=0.9)
    make_memory(account.account, "theirs", user_id="u2", importance=0.9)
    busy = next(user for user in users_of(accounts=[account.account], namespace=None) if user.user_id == "u2")
    get_redis_connection("default").set(_lock_key(busy), "another-run", ex=60)

    run = preload_run(users=users_of(accounts=[account.account], namespace=None), trigger=RunTrigger.API)

    assert run.status == RunStatus.SUCCEEDED
    assert run.users_done == 1
    assert run.errors[0]["error"] == "skipped"
    assert get_redis_connection("default").get(_lock_key(busy)) == b"another-run"


def test_without_redis_the_run_fails_soft_and_says_why(account: AccountWithKey) -> None:
    make_memory(account.account, "mine", importance=0.9)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    caches = {"default": {**settings.CACHES["default"], "LOCATION": f"redis://127.0.0.1:{port}/0"}}

    with override_settings(CACHES=caches):
        run = preload_run(users=users_of(accounts=[account.account], namespace=None), trigger=RunTrigger.SCHEDULE)

    assert run.status == RunStatus.FAILED
    assert run.finished_at is not None
    assert run.errors[0]["error"] == "redis_unavailable"
    tiered_cache().breaker.reset()


def test_a_run_that_breaks_is_recorded_as_failed(account: AccountWithKey) -> None:
    make_memory(account.account, "mine", importance=0.9)

    def users_then_failure() -> Iterator[UserRef]:
        yield from users_of(accounts=[account.account], namespace=None)
        raise RuntimeError("lost the database")

    with pytest.raises(RuntimeError):
        preload_run(users=users_then_failure(), trigger=RunTrigger.COMMAND)

    run = PreloadRun.objects.get()
    assert run.status == RunStatus.FAILED
    assert run.finished_at is not None
    assert run.errors[0]["message"] == "RuntimeError: lost the database"


def test_a_run_whose_worker_died_is_resumed_after_its_last_user(account: AccountWithKey) -> None:
    for user_id in ("u1", "u2", "u3"):
        make_memory(account.account, f"memory of {user_id}", user_id=user_id, importance=0.9)
    stale = run_create(trigger=RunTrigger.API, account=account.account)
    PreloadRun.objects.filter(pk=stale.pk).update(
        users_done=1,
        last_user_cursor={"account": account.account.id, "namespace": "default", "user_id": "u1"},
        heartbeat_at=timezone.now() - timedelta(hours=1),
    )

    (resumed,) = resume_stale_runs()

    assert resumed.pk == stale.pk
    assert resumed.status == RunStatus.SUCCEEDED
    assert resumed.users_done == 3  # u2 and u3 now, u1 before
    assert resume_stale_runs() == []
