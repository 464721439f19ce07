"""What a write must do so that no cache serves what it changed.

Writes call `users_changed` inside their transaction. The users' generation
tokens are replaced twice: before the commit (so that entries made before the
write die even if this process crashes right after committing) and after it
(so that an entry made from the old rows while the transaction was open dies
too). A replacement that cannot reach Redis is recorded in PostgreSQL, in the
write's own transaction before the commit, and replayed later: by the process
whose Redis comes back, and by every process every REPLAY_INTERVAL seconds.
A write that is a single statement without a transaction of its own (a new
fire-and-forget memory: memories.services) calls the two halves itself,
invalidate_before_commit and invalidate_after_commit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from redis.client import Pipeline

from memories.cache import tiered_cache
from memories.models import Account, ApiKey, PendingInvalidation

logger = logging.getLogger(__name__)

User = tuple[int, str, str]  # (account id, namespace, user id)


def users_changed(users: Iterable[User]) -> None:
    changed = set(users)
    if not changed:
        return
    invalidate_before_commit(changed)
    transaction.on_commit(lambda: invalidate_after_commit(changed))


def invalidate_before_commit(users: set[User]) -> None:
    """users_changed's first half, for a write that registers the second
    (invalidate_after_commit) itself: replace the tokens now, or record the
    users in PostgreSQL (in the current transaction, if there is one)."""
    if not tiered_cache().invalidate_users(users):
        _record(users)


def invalidate_after_commit(users: set[User], also: Callable[[Pipeline], None] | None = None) -> list[Any] | None:
    """users_changed's second half, once the write has committed. `also` queues
    more commands on the same Redis round trip: their replies come back, or
    None when Redis could not be reached (the users are then recorded)."""
    replies = tiered_cache().invalidate_users_with(users, also)
    if replies is None:
        _record(users)
    return replies


# API keys and accounts share one generation token: any change to either (a
# revoke, a deactivation) sends every cached authentication back to PostgreSQL.
AUTH_GENERATION: User = (0, "auth", "keys")


@receiver([post_save, post_delete], sender=ApiKey)
@receiver([post_save, post_delete], sender=Account)
def auth_changed(**kwargs: object) -> None:
    users_changed([AUTH_GENERATION])


def _record(users: set[User]) -> None:
    global _recorded_here
    PendingInvalidation.objects.bulk_create(
        [PendingInvalidation(account_id=a, namespace=n, user_id=u) for a, n, u in users]
    )
    # This process replays at its next cache read; the others within REPLAY_INTERVAL.
    _recorded_here = True


_replayed_at = 0.0
_recorded_here = False
_replay_lock = threading.Lock()


def replay_pending_invalidations(*, force: bool = True) -> int:
    """Replace the tokens of users whose writes could not reach Redis; return how many.

    Without `force`, only when this process recorded one itself or REPLAY_INTERVAL has passed.
    """
    global _replayed_at, _recorded_here
    with _replay_lock:
        now = time.monotonic()
        due = _recorded_here or now - _replayed_at >= settings.MEMORY_CACHE["REPLAY_INTERVAL"]
        if not force and not due:
            return 0
        _replayed_at = now
        _recorded_here = False
    try:
        pending = list(PendingInvalidation.objects.values_list("id", "account_id", "namespace", "user_id")[:10_000])
    except (OperationalError, InterfaceError) as error:
        # PostgreSQL is down: this runs on cache reads, which must still answer
        # from the cache. Look again at the next read (its database breaker makes
        # that free while PostgreSQL stays down).
        logger.info("could not look for invalidations to replay: %s", error)
        _recorded_here = True
        return 0
    if not pending:
        return 0
    users = {(account_id, namespace, user_id) for _, account_id, namespace, user_id in pending}
    if not tiered_cache().invalidate_users(users):
        _recorded_here = True  # still pending: try again at the next read
        return 0
    PendingInvalidation.objects.filter(id__in=[row[0] for row in pending]).delete()
    logger.info("replayed %d cache invalidations recorded while Redis was unavailable", len(users))
    return len(users)
