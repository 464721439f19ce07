"""django-q2 tasks of preloading and their schedules: thin wrappers that take ids."""

from __future__ import annotations

from django.db import DEFAULT_DB_ALIAS
from django_q.models import Schedule
from django_q.tasks import async_task

from memories.models import Account, Memory
from memories.schedules import ensure_schedule
from memoryproject.retries import retry_database_errors
from preload.config import account_config, global_config
from preload.engine import preload_trending
from preload.models import PreloadRun, RunStatus, RunTrigger
from preload.runs import resume_stale_runs, run_create, run_execute

REFRESH_SCHEDULE = "preload.refresh"
TRENDING_SCHEDULE = "preload.trending"
TRENDING_INTERVAL_MINUTES = 60


@retry_database_errors
def execute_preload_run(run_id: str) -> str:
    """Execute a recorded run (queued by the trigger, the schedule or start-up); its status when done."""
    run = PreloadRun.objects.get(pk=run_id)
    if run.status != RunStatus.RUNNING or run.finished_at is not None:
        return str(run.status)  # a retried task finds the run already done
    return str(run_execute(run=run).status)


@retry_database_errors
def refresh_all() -> str:
    """The scheduled refresh: every user again, when background refresh is on."""
    resume_stale_runs()
    if not global_config().background_refresh:
        return "background refresh is off"
    return execute_preload_run(str(run_create(trigger=RunTrigger.SCHEDULE, account=None).id))


@retry_database_errors
def refresh_trending() -> int:
    """Each account's (and namespace's) trending key; how many keys were written."""
    written = 0
    pairs = Memory.objects.order_by().values_list("account_id", "namespace").distinct()
    accounts = Account.objects.in_bulk([account_id for account_id, _ in pairs])
    for account_id, namespace in pairs:
        account = accounts.get(account_id)
        if account is None or not account.is_active:
            continue
        config = account_config(account_id=account_id)
        if config.enabled and config.trending_enabled:
            preload_trending(account=account, namespace=namespace, config=config)
            written += 1
    return written


def enqueue_startup_preload() -> str | None:
    """Queue a preload of every user when the service starts; the web server does not wait for it."""
    if not global_config().startup_preload:
        return None
    run = run_create(trigger=RunTrigger.STARTUP, account=None)
    async_task("preload.tasks.execute_preload_run", str(run.id), task_name=f"preload-{run.id}")
    return str(run.id)


def ensure_preload_schedules(*, using: str = DEFAULT_DB_ALIAS) -> list[Schedule]:
    """The refresh (every refresh_interval_minutes of the global configuration) and trending (hourly) schedules."""
    return [
        ensure_schedule(
            name=REFRESH_SCHEDULE,
            func=refresh_all,
            minutes=global_config().refresh_interval_minutes,
            using=using,
        ),
        ensure_schedule(
            name=TRENDING_SCHEDULE,
            func=refresh_trending,
            minutes=TRENDING_INTERVAL_MINUTES,
            using=using,
        ),
    ]
