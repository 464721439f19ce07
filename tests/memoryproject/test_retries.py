"""memoryproject.retries: background jobs wait out an unreachable database, and only that."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import OperationalError, transaction

from memories.tasks import embed_pending_task
from memoryproject.retries import retry_database_errors


class Flaky:
    """Fails with `error` the first `failures` calls, then answers."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


def test_a_job_is_run_again_until_the_database_answers() -> None:
    flaky = Flaky(2, OperationalError("connection refused"))

    assert retry_database_errors(flaky)() == "done"
    assert flaky.calls == 3


def test_any_other_error_is_raised_at_once() -> None:
    flaky = Flaky(2, ValueError("a bug"))

    with pytest.raises(ValueError, match="a bug"):
        retry_database_errors(flaky)()
    assert flaky.calls == 1


def test_it_gives_up_after_job_retry_seconds(settings: Any) -> None:
    settings.JOB_RETRY_SECONDS = 0.2
    flaky = Flaky(100, OperationalError("connection refused"))

    with pytest.raises(OperationalError):
        retry_database_errors(flaky)()
    assert flaky.calls == 2  # the first wait (0.5 s or more) already ends past the limit


@pytest.mark.django_db(transaction=True)
def test_inside_a_transaction_the_error_is_the_callers() -> None:
    flaky = Flaky(1, OperationalError("connection lost"))

    with pytest.raises(OperationalError), transaction.atomic():
        retry_database_errors(flaky)()
    assert flaky.calls == 1


def test_tasks_keep_their_dotted_path_for_django_q2() -> None:
    assert f"{embed_pending_task.__module__}.{embed_pending_task.__qualname__}" == "memories.tasks.embed_pending_task"
