"""Preload runs: many users, in batches, recorded in a PreloadRun row.

Users are walked in a fixed order (account, namespace, user id) in batches:
one query resolves a batch's configurations, progress and a heartbeat are
saved after each batch. While a run works on a user it holds a short Redis
lock on that user, so two runs (a schedule and a trigger, say) never preload
the same user at once; a user locked by another run is skipped and counted.
If Redis goes away the run stops, records the error and fails: the service
itself keeps answering from PostgreSQL.
"""

from __future__ import annotations

import contextlib
import secrets
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import connection, connections
from django.db.models import Q
from django.utils import timezone
from prometheus_client import Counter, Gauge, Histogram

from memories.cache import CacheUnavailable, tiered_cache
from memories.models import Account, Memory
from memories.operations import operation
from preload.budget import Budget
from preload.config import EffectiveConfig, global_config, resolve_configs
from preload.engine import BackgroundWriter, Chosen, choose, plan
from preload.models import PreloadRun, RunStatus, RunTrigger
from preload.options import Strategy

RUNS = Counter("preload_runs_total", "Preload runs finished", ["status"])
DURATION = Histogram("preload_duration_seconds", "Duration of preload runs", buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 300))
# "mostrecent" under multiprocess mode (memoryproject.prometheus): the value the
# last run set, whichever job worker ran it, and kept after that worker is
# recycled (not "live"): it describes the run, not the process. Only set() is used.
MEMORIES = Gauge("preload_memories", "Memories written by the last preload run", multiprocess_mode="mostrecent")
BYTES = Gauge("preload_bytes", "Bytes written by the last preload run", multiprocess_mode="mostrecent")

BATCH_SIZE = 500
# A run saves a heartbeat after every batch (seconds apart): silent this long, its worker is gone.
STALE_AFTER = timedelta(minutes=10)
# Long enough for one batch; a crashed run's locks free themselves.
LOCK_SECONDS = 120


@dataclass(frozen=True)
class UserRef:
    account: Account
    namespace: str
    user_id: str


def users_of(
    *,
    accounts: Sequence[Account],
    namespace: str | None,
    user_ids: Sequence[str] = (),
    after: dict[str, Any] | None = None,
) -> Iterator[UserRef]:
    """The users to preload, in a fixed order: the given ids, or every user with memories.

    `after` (a run's last_user_cursor) skips every user up to and including it.
    """
    for account in sorted(accounts, key=lambda a: a.id):
        if after is not None and account.id < after["account"]:
            continue
        rows = Memory.objects.filter(account=account)
        if after is not None and account.id == after["account"]:
            rows = rows.filter(
                Q(namespace__gt=after["namespace"]) | Q(namespace=after["namespace"], user_id__gt=after["user_id"])
            )
        if namespace is not None:
            rows = rows.filter(namespace=namespace)
        if user_ids:
            rows = rows.filter(user_id__in=list(user_ids))
        pairs = rows.order_by("namespace", "user_id").values_list("namespace", "user_id").distinct()
        for user_namespace, user_id in pairs.iterator(chunk_size=BATCH_SIZE):
            yield UserRef(account=account, namespace=user_namespace, user_id=user_id)


def _batches(users: Iterator[UserRef]) -> Iterator[list[UserRef]]:
    batch: list[UserRef] = []
    for user in users:
        batch.append(user)
        if len(batch) == BATCH_SIZE:
            yield batch
            batch = []
    if batch:
        yield batch


def _configs(users: list[UserRef]) -> dict[tuple[int, str, str], EffectiveConfig]:
    """Every user's configuration: one query per (account, namespace) in the batch."""
    configs: dict[tuple[int, str, str], EffectiveConfig] = {}
    for (account, namespace), user_ids in _by_namespace(users).items():
        for user_id, config in resolve_configs(account_id=account.id, namespace=namespace, user_ids=user_ids).items():
            configs[(account.id, namespace, user_id)] = config
    return configs


def _by_namespace(users: list[UserRef]) -> dict[tuple[Account, str], list[str]]:
    """The users' ids per (account, namespace): what one preload query covers."""
    groups: dict[tuple[Account, str], list[str]] = {}
    for user in users:
        groups.setdefault((user.account, user.namespace), []).append(user.user_id)
    return groups


def _lock_key(user: UserRef) -> str:
    return f"preload:lock:{user.account.id}:{user.namespace}:{user.user_id}"


def _lock(users: list[UserRef], token: str) -> list[bool]:
    with tiered_cache().guarded("preload") as redis:
        pipeline = redis.pipeline(transaction=False)
        for user in users:
            pipeline.set(_lock_key(user), token, nx=True, ex=LOCK_SECONDS)
        return [bool(ok) for ok in pipeline.execute()]


def _unlock(users: list[UserRef]) -> None:
    try:
        with tiered_cache().guarded("preload") as redis:
            redis.delete(*[_lock_key(user) for user in users])
    except CacheUnavailable:
        pass  # the locks expire by themselves


def preload_run(
    *,
    users: Iterator[UserRef],
    trigger: RunTrigger,
    users_total: int | None = None,
    strategies: Sequence[Strategy] | None = None,
    dry_run: bool = False,
    account: Account | None = None,
    requested_users: Sequence[str] = (),
    on_user: Callable[[int], object] | None = None,
) -> PreloadRun:
    """Preload every user of `users` now; return the finished run."""
    run = run_create(
        trigger=trigger,
        account=account,
        requested_users=requested_users,
        strategies=strategies,
        dry_run=dry_run,
        users_total=users_total,
    )
    return run_execute(run=run, users=users, on_user=on_user)


def run_create(
    *,
    trigger: RunTrigger,
    account: Account | None,
    requested_users: Sequence[str] = (),
    strategies: Sequence[Strategy] | None = None,
    dry_run: bool = False,
    namespace: str | None = None,
    users_total: int | None = None,
) -> PreloadRun:
    """A run recorded as running, for a worker to execute (the API answers with its id at once)."""
    return PreloadRun.objects.create(
        trigger=trigger,
        account=account,
        namespace=namespace,
        requested_users=list(requested_users),
        requested_strategies=list(strategies or []),
        dry_run=dry_run,
        users_total=users_total,
    )


def run_users(run: PreloadRun) -> Iterator[UserRef]:
    """The users a recorded run asked for: its account's (or every active account's), its ids or all."""
    accounts = [run.account] if run.account is not None else list(Account.objects.filter(is_active=True))
    return users_of(
        accounts=accounts, namespace=run.namespace, user_ids=run.requested_users, after=run.last_user_cursor
    )


def resume_stale_runs(*, silent_for: timedelta = STALE_AFTER) -> list[PreloadRun]:
    """Finish runs whose worker died: running, with no heartbeat for `silent_for`.

    Each is claimed with a conditional update of its heartbeat, so two
    resumers never take the same run; it goes on after its last saved user.
    """
    resumed = []
    cutoff = timezone.now() - silent_for
    for run in PreloadRun.objects.filter(status=RunStatus.RUNNING, heartbeat_at__lt=cutoff).order_by("heartbeat_at"):
        claimed = PreloadRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING, heartbeat_at=run.heartbeat_at).update(
            heartbeat_at=timezone.now()
        )
        if claimed:
            run.refresh_from_db()
            resumed.append(run_execute(run=run))
    return resumed


# Batches being chosen while an earlier one is written: PostgreSQL works on
# this many at once (one backend each), which is what a 2-core machine gains from.
CHOOSERS = 2


@dataclass
class _Batch:
    """A batch of users on its way: being chosen, then written, then saved as progress."""

    users: list[UserRef]
    # The users this run holds the lock of (none in a dry run).
    locked: list[UserRef]
    preloaded: int
    chosen: list[Future[Chosen]] = field(default_factory=list)
    writes: list[Future[None]] = field(default_factory=list)
    # The run's counters once this batch is written.
    users_done: int = 0
    memories: int = 0
    bytes: int = 0


class _Choosers:
    """Runs engine.choose for batches ahead, on CHOOSERS threads with a database
    connection each; inline when the run is inside a transaction (other
    connections would not see its rows)."""

    def __init__(self) -> None:
        parallel = not connection.in_atomic_block
        self._executor = ThreadPoolExecutor(CHOOSERS, thread_name_prefix="preload-chooser") if parallel else None
        self.ahead = CHOOSERS if parallel else 0

    def submit(self, **arguments: Any) -> Future[Chosen]:
        if self._executor is not None:
            return self._executor.submit(self._choose_in_thread, arguments)
        future: Future[Chosen] = Future()
        try:
            future.set_result(choose(**arguments))
        except Exception as error:
            future.set_exception(error)
        return future

    @staticmethod
    def _choose_in_thread(arguments: dict[str, Any]) -> Chosen:
        try:
            return choose(**arguments)
        finally:
            # A thread's connection is its own: closed here, not left to the garbage collector.
            connections.close_all()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)


def _settle(batch: _Batch, *, run: PreloadRun | None, on_user: Callable[[int], object] | None) -> None:
    """Wait for the batch's writes, free its users and, with `run`, save it as progress."""
    try:
        for written in batch.writes:
            written.result()
    finally:
        if batch.locked:
            _unlock(batch.locked)
    if run is None:
        return
    last = batch.users[-1]
    run.users_done, run.memories, run.bytes = batch.users_done, batch.memories, batch.bytes
    run.last_user_cursor = {"account": last.account.id, "namespace": last.namespace, "user_id": last.user_id}
    run.heartbeat_at = timezone.now()
    run.save(update_fields=["users_done", "memories", "bytes", "last_user_cursor", "heartbeat_at"])
    if on_user is not None:
        on_user(len(batch.users))


def _abandon(batch: _Batch) -> None:
    """After a failure: let the batch's work end and free its users, whatever it raises."""
    for chosen in batch.chosen:
        chosen.cancel()
        with contextlib.suppress(Exception):
            chosen.exception()
    with contextlib.suppress(Exception):
        _settle(batch, run=None, on_user=None)


def run_execute(
    *, run: PreloadRun, users: Iterator[UserRef] | None = None, on_user: Callable[[int], object] | None = None
) -> PreloadRun:
    """_run_execute, timed as a `preload` (memories.operations)."""
    with operation("preload", account_id=run.account_id) as sizes:
        finished = _run_execute(run=run, users=users, on_user=on_user)
        sizes.update(users=finished.users_done, memories=finished.memories, bytes=finished.bytes)
        return finished


def _run_execute(
    *, run: PreloadRun, users: Iterator[UserRef] | None = None, on_user: Callable[[int], object] | None = None
) -> PreloadRun:
    """Preload the run's users, saving progress after each batch; return the finished run.

    Three stages overlap: the next batches are chosen in PostgreSQL
    (_Choosers), the current one is planned against the byte budget here, in
    order, and the one before is written to Redis (engine.BackgroundWriter).
    A batch is saved as progress only once written, so a resumed run never
    skips a user whose preload was lost.
    """
    users = run_users(run) if users is None else users
    strategies = [Strategy(s) for s in run.requested_strategies] or None
    dry_run = run.dry_run
    token = secrets.token_hex(8)
    skipped = 0
    budget = Budget(global_config().memory_budget_bytes)
    choosers, writer = _Choosers(), BackgroundWriter()
    queued: deque[_Batch] = deque()  # being chosen
    written: _Batch | None = None  # being written

    def plan_next() -> None:
        nonlocal written
        batch = queued.popleft()
        for chosen in batch.chosen:
            writes, _ = plan(chosen.result(), budget=budget)
            if not dry_run:
                batch.writes.append(writer.submit(writes))
        # What the run holds in Redis once written: entries given back to the budget are gone.
        batch.users_done = (written.users_done if written else run.users_done) + batch.preloaded
        batch.memories, batch.bytes = budget.count, budget.total
        if written is not None:
            _settle(written, run=run, on_user=on_user)
        written = batch

    try:
        for users_of_batch in _batches(users):
            locked = [True] * len(users_of_batch) if dry_run else _lock(users_of_batch, token)
            mine = [user for user, ok in zip(users_of_batch, locked, strict=True) if ok]
            skipped += len(users_of_batch) - len(mine)
            batch = _Batch(users=users_of_batch, locked=[] if dry_run else mine, preloaded=len(mine))
            queued.append(batch)
            configs = _configs(mine)
            for (account, namespace), group in _by_namespace(mine).items():
                batch.chosen.append(
                    choosers.submit(
                        account=account,
                        namespace=namespace,
                        configs={user_id: configs[(account.id, namespace, user_id)] for user_id in group},
                        strategies=strategies,
                        dry_run=dry_run,
                    )
                )
            while len(queued) > choosers.ahead:
                plan_next()
        while queued:
            plan_next()
        if written is not None:
            _settle(written, run=run, on_user=on_user)
            written = None
    except CacheUnavailable as error:
        run.add_error({"error": "redis_unavailable", "message": f"Run stopped: {error.__cause__ or error}"})
        run.status = RunStatus.FAILED
    except Exception as error:
        # Not left "running" for ever: the row says what stopped it, and the task shows the traceback.
        run.add_error({"error": "failed", "message": f"{type(error).__name__}: {error}"})
        _finish(run, RunStatus.FAILED)
        raise
    else:
        run.status = RunStatus.SUCCEEDED
        if skipped:
            run.add_error({"error": "skipped", "message": f"{skipped} users skipped: another run was preloading them"})
    finally:
        for batch in [*queued, *([written] if written else [])]:
            _abandon(batch)
        choosers.close()
        writer.close()
    _finish(run, run.status)
    return run


def _finish(run: PreloadRun, status: str) -> None:
    run.status = status
    if run.users_total is None or run.users_total < run.users_done:
        run.users_total = run.users_done
    run.finished_at = timezone.now()
    run.save()
    RUNS.labels(run.status).inc()
    DURATION.observe((run.finished_at - run.started_at).total_seconds())
    if not run.dry_run:
        MEMORIES.set(run.memories)
        BYTES.set(run.bytes)
