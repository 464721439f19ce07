"""Exponential backoff for background jobs on transient database errors (tenacity).

A django-q2 task that meets PostgreSQL restarting, failing over or briefly
out of connections would otherwise fail and wait for its next schedule or
for django-q2's retry (11 minutes). Every task is idempotent (work is claimed
with SKIP LOCKED or a conditional update, results are keyed), so running it
again from the start is safe. Only errors that say the database was
unreachable count (OperationalError, InterfaceError: connection refused or
lost, pool timeout, serialization failure, deadlock); a bug is raised at once.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, connections
from tenacity import RetryCallState, retry, retry_if_exception, stop_after_delay, wait_exponential_jitter

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def _transient(error: BaseException) -> bool:
    if not isinstance(error, (OperationalError, InterfaceError)):
        return False
    # Inside a transaction the caller's work is lost with the connection: only
    # the task as a whole can start again.
    return not any(connection.in_atomic_block for connection in connections.all(initialized_only=True))


def _before_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    logger.warning(
        "%s: database unavailable (%s), attempt %d, retrying in %.1f s",
        getattr(state.fn, "__qualname__", "job"),
        error,
        state.attempt_number,
        state.upcoming_sleep,
    )
    # A connection that saw the error is dropped; the next attempt takes a fresh one.
    for connection in connections.all(initialized_only=True):
        connection.close_if_unusable_or_obsolete()


def retry_database_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Run the job again, after 0.5, 1, 2... s (capped at 30 s, with jitter), while
    the database is unreachable, for at most JOB_RETRY_SECONDS; then raise."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        retrying = retry(
            retry=retry_if_exception(_transient),
            wait=wait_exponential_jitter(multiplier=0.5, max=30.0, jitter=0.5),
            stop=stop_after_delay(float(settings.JOB_RETRY_SECONDS)),
            before_sleep=_before_retry,
            reraise=True,
        )
        return retrying(func)(*args, **kwargs)

    return wrapper
