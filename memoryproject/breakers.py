"""Circuit breakers around what the service calls out to: Redis, the embedding
provider and the LLM extractor.

pybreaker keeps the state machine: closed; open after `fail_max` failures in
a row, when callers are refused at once instead of each waiting for a
timeout; half-open after `reset_timeout` seconds, when a trial call goes
through; closed again by a success. A process has its own breakers (a forked
child starts with fresh ones): each process finds out for itself, within a
few calls, that a dependency is back.

Callers enter a breaker through `guard()`, which uses pybreaker's
`calling()`: the guarded block runs outside pybreaker's lock. Its `call()`
would hold the lock for the whole call and queue every thread of the process
(a request and the access recorder, say) behind one slow Redis command.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pybreaker
from prometheus_client import Counter, Gauge

logger = logging.getLogger(__name__)

STATE = Gauge(
    "circuit_breaker_state",
    "A circuit breaker's state: 0 closed, 1 open, 2 half-open (the highest of the live processes)",
    ["breaker"],
    multiprocess_mode="livemax",
)
OPENED = Counter("circuit_breaker_opened_total", "Times a circuit breaker opened", ["breaker"])
REFUSED = Counter("circuit_breaker_refused_total", "Calls refused at once by an open circuit breaker", ["breaker"])

_STATE_VALUES = {pybreaker.STATE_CLOSED: 0, pybreaker.STATE_OPEN: 1, pybreaker.STATE_HALF_OPEN: 2}


class BreakerOpen(Exception):
    """The breaker is open: the dependency was not even tried."""

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"{name} is unavailable (circuit breaker open; next try in {retry_after:.0f} s)")
        self.name = name
        self.retry_after = retry_after


class Breaker:
    """A named pybreaker circuit breaker that counts only `failures` as failures
    (anything else, a bug or a bad input, neither opens nor holds it open)."""

    def __init__(
        self, name: str, *, fail_max: int, reset_timeout: float, failures: tuple[type[BaseException], ...]
    ) -> None:
        self.name = name
        self.failure_types = failures
        # How many times a success closed the breaker (and ran on_close).
        self.closings = 0
        self.on_close: Callable[[], None] | None = None
        self._resetting = False
        self._close_pending = False
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            name=name,
            exclude=[lambda error: not isinstance(error, self.failure_types)],
            listeners=[_Listener(self)],
            # The caller sees the dependency's own error, which says what failed.
            throw_new_error_on_trip=False,
        )
        STATE.labels(name).set(0)

    @property
    def threshold(self) -> int:
        return self._breaker.fail_max

    @threshold.setter
    def threshold(self, value: int) -> None:
        self._breaker.fail_max = value

    @property
    def cooldown(self) -> float:
        return self._breaker.reset_timeout

    @cooldown.setter
    def cooldown(self, value: float) -> None:
        self._breaker.reset_timeout = value

    @property
    def failures(self) -> int:
        """Failures in a row so far (reset by a success)."""
        return self._breaker.fail_counter

    @property
    def state(self) -> str:
        """closed, open or half-open (pybreaker's names)."""
        return self._breaker.current_state

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a trial call through (0 when it would now)."""
        opened_at = self._breaker._state_storage.opened_at
        if self.state != pybreaker.STATE_OPEN or opened_at is None:
            return 0.0
        left = opened_at + timedelta(seconds=self.cooldown) - datetime.now(UTC)
        return max(left.total_seconds(), 0.0)

    @property
    def is_open(self) -> bool:
        """Open and still cooling down: a call now would be refused."""
        return self.retry_after() > 0

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Run the block through the breaker; BreakerOpen, without running it, when open."""
        entered = False
        try:
            with self._breaker.calling():
                entered = True
                yield
        except pybreaker.CircuitBreakerError:
            if entered:
                raise  # another breaker's, from inside the block
            REFUSED.labels(self.name).inc()
            raise BreakerOpen(self.name, self.retry_after()) from None
        if self._close_pending:
            # The success that closed the breaker is done and pybreaker's state
            # settled: on_close may use the breaker itself now.
            self._close_pending = False
            if self.on_close is not None:
                self.on_close()

    def trip(self, *, cooled: bool = False) -> None:
        """Open the breaker now (an operator's or a test's doing); `cooled`: as if
        its cooldown had passed, so that the next call is the half-open trial."""
        self._breaker.open()
        if cooled:
            self._breaker._state_storage.opened_at = datetime.now(UTC) - timedelta(seconds=self.cooldown)

    def reset(self) -> None:
        """Close the breaker and forget its failures, without running on_close."""
        self._resetting = True
        try:
            self._breaker.close()
        finally:
            self._resetting = False

    def _changed(self, old: str | None, new: str) -> None:
        STATE.labels(self.name).set(_STATE_VALUES.get(new, 0))
        if new == pybreaker.STATE_OPEN and old != pybreaker.STATE_OPEN:
            OPENED.labels(self.name).inc()
            if old == pybreaker.STATE_CLOSED:
                logger.warning("%s unavailable: circuit breaker open for %.0f s", self.name, self.cooldown)
        elif new == pybreaker.STATE_CLOSED and old in (pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN):
            if self._resetting:
                return
            self.closings += 1
            logger.warning("%s is back: circuit breaker closed", self.name)
            # Not from here: pybreaker calls listeners before its own state has
            # changed, and on_close going through the breaker would recurse.
            self._close_pending = True


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, breaker: Breaker) -> None:
        self.breaker = breaker

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        self.breaker._changed(old_state.name if old_state is not None else None, new_state.name)


# -- the process's breakers of outbound calls (Redis's belongs to the cache) -----------------

_breakers: dict[str, Breaker] = {}
_lock = threading.Lock()


def breaker(name: str, *, fail_max: int, reset_timeout: float, failures: tuple[type[BaseException], ...]) -> Breaker:
    """The process's breaker called `name`, built on first use with these settings."""
    found = _breakers.get(name)
    if found is not None:
        return found
    with _lock:
        if name not in _breakers:
            _breakers[name] = Breaker(name, fail_max=fail_max, reset_timeout=reset_timeout, failures=failures)
        return _breakers[name]


def reset_breakers() -> None:
    """Forget every named breaker: the next use builds it anew from settings."""
    with _lock:
        _breakers.clear()


def _forget_in_child() -> None:
    # A parent thread may have held a lock at fork time; the child's dependencies
    # are its own to find out about.
    global _lock
    _lock = threading.Lock()
    _breakers.clear()


os.register_at_fork(after_in_child=_forget_in_child)
