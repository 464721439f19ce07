from __future__ import annotations

import orjson
import pytest
from django.utils import timezone
from django_q.models import OrmQ, Schedule
from django_redis import get_redis_connection

from preload.engine import trending_key
from preload.models import PreloadConfig, PreloadRun, RunStatus
from preload.tasks import (
    REFRESH_SCHEDULE,
    TRENDING_SCHEDULE,
    enqueue_startup_preload,
    ensure_preload_schedules,
    refresh_all,
    refresh_trending,
)
from tests.factories import AccountWithKey, make_memory

pytestmark = pytest.mark.django_db


def test_schedules_are_idempotent_and_follow_the_refresh_interval() -> None:
    ensure_preload_schedules()
    ensure_preload_schedules()
    assert Schedule.objects.filter(name=REFRESH_SCHEDULE).get().minutes == 30
    assert Schedule.objects.filter(name=TRENDING_SCHEDULE).get().minutes == 60

    PreloadConfig.objects.create(refresh_interval_minutes=5)

    assert Schedule.objects.get(name=REFRESH_SCHEDULE).minutes == 5


def test_startup_preload_is_queued_not_run(account: AccountWithKey) -> None:
    make_memory(account.account, "User likes tea")

    run_id = enqueue_startup_preload()

    assert run_id is not None
    run = PreloadRun.objects.get(pk=run_id)
    assert (run.trigger, run.status, run.users_done) == ("startup", RunStatus.RUNNING, 0)
    assert OrmQ.objects.count() == 1


def test_startup_preload_can_be_switched_off() -> None:
    PreloadConfig.objects.create(startup_preload=False)
    assert enqueue_startup_preload() is None


def test_scheduled_refresh_preloads_everyone(account: AccountWithKey, other_account: AccountWithKey) -> None:
    make_memory(account.account, "a")
    make_memory(other_account.account, "b")

    assert refresh_all() == "succeeded"
    assert PreloadRun.objects.get().users_done == 2


def test_trending_keys_are_per_account(account: AccountWithKey, other_account: AccountWithKey) -> None:
    read = make_memory(account.account, "popular", access_count=9, last_accessed_at=timezone.now())
    make_memory(other_account.account, "elsewhere", access_count=9, last_accessed_at=timezone.now())

    assert refresh_trending() == 2
    ids = orjson.loads(
        get_redis_connection("default").get(trending_key(account_id=account.account.id, namespace="default"))
    )
    assert ids == [str(read.id)]
