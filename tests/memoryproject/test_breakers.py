"""memoryproject.breakers: pybreaker's state machine, entered without holding its lock."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import REGISTRY

from memoryproject.breakers import Breaker, BreakerOpen


class Down(Exception):
    pass


def _breaker(**options: float) -> Breaker:
    return Breaker(
        "test",
        fail_max=int(options.get("fail_max", 2)),
        reset_timeout=options.get("reset_timeout", 60.0),
        failures=(Down,),
    )


def _fail(breaker: Breaker) -> None:
    with pytest.raises(Down), breaker.guard():
        raise Down


def _opened() -> float:
    return REGISTRY.get_sample_value("circuit_breaker_opened_total", {"breaker": "test"}) or 0.0


def test_opens_after_fail_max_failures_in_a_row_and_then_refuses_without_calling() -> None:
    breaker = _breaker(fail_max=2)
    opened = _opened()
    _fail(breaker)
    assert not breaker.is_open
    _fail(breaker)
    ran = False

    with pytest.raises(BreakerOpen) as refused, breaker.guard():
        ran = True

    assert not ran
    assert breaker.is_open
    assert 59 < refused.value.retry_after <= 60
    assert _opened() == opened + 1


def test_a_success_between_failures_starts_the_count_again() -> None:
    breaker = _breaker(fail_max=2)
    _fail(breaker)
    with breaker.guard():
        pass
    _fail(breaker)

    assert not breaker.is_open
    assert breaker.failures == 1


def test_other_errors_neither_count_nor_open_it() -> None:
    breaker = _breaker(fail_max=1)

    for _ in range(3):
        with pytest.raises(ValueError, match="not the dependency"), breaker.guard():
            raise ValueError("a bug or a bad input, not the dependency")

    assert breaker.failures == 0
    assert not breaker.is_open


def test_after_the_cooldown_one_success_closes_it_and_runs_on_close_once() -> None:
    breaker = _breaker(fail_max=1)
    closed: list[str] = []
    breaker.on_close = lambda: closed.append(breaker.state)
    breaker.trip(cooled=True)

    with breaker.guard():
        pass

    assert closed == ["closed"]  # run once the state has settled, not during the change
    assert breaker.closings == 1
    with breaker.guard():
        pass
    assert closed == ["closed"]


def test_on_close_may_use_the_breaker_itself() -> None:
    breaker = _breaker(fail_max=1)
    inside: list[bool] = []

    def replay() -> None:
        with breaker.guard():
            inside.append(True)

    breaker.on_close = replay
    breaker.trip(cooled=True)
    with breaker.guard():
        pass

    assert inside == [True]


def test_a_failed_trial_opens_it_for_another_cooldown() -> None:
    breaker = _breaker(fail_max=1, reset_timeout=60.0)
    breaker.trip(cooled=True)

    _fail(breaker)

    assert breaker.is_open
    assert breaker.retry_after() > 59


def test_reset_closes_it_without_running_on_close() -> None:
    breaker = _breaker(fail_max=1)
    closed: list[bool] = []
    breaker.on_close = lambda: closed.append(True)
    breaker.trip()

    breaker.reset()

    assert not breaker.is_open
    assert breaker.state == "closed"
    assert closed == []
    assert breaker.closings == 0


def test_the_guarded_block_runs_outside_the_breakers_lock() -> None:
    """pybreaker's call() holds its lock for the whole call: one slow Redis
    command would queue every thread of the process behind it."""
    breaker = _breaker()
    inside, release = threading.Event(), threading.Event()

    def slow_call() -> None:
        with breaker.guard():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=slow_call)
    thread.start()
    try:
        assert inside.wait(10)
        done = threading.Event()

        def quick_call() -> None:
            with breaker.guard():
                done.set()

        other = threading.Thread(target=quick_call)
        other.start()
        assert done.wait(5), "a second caller waited for the first one's call to end"
        other.join()
    finally:
        release.set()
        thread.join()
