"""Running test code in threads, each with its own database connection (for races and locks)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from django.db import connection


def in_threads(targets: list[Callable[[], None]]) -> None:
    """Run each target in its own thread, with its own database connection; re-raise the first error."""
    errors: list[BaseException] = []

    def run(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    if errors:
        raise errors[0]
