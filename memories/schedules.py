"""Idempotent django-q2 schedules: create or update one by name."""

from __future__ import annotations

import zlib
from collections.abc import Callable

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django_q.models import Schedule


def ensure_schedule(*, name: str, func: Callable[..., object], minutes: int, using: str = DEFAULT_DB_ALIAS) -> Schedule:
    """The one schedule called `name`, running the task function `func` every `minutes`, created or updated.

    Run after every `migrate`, so that a changed interval takes effect and a
    deleted schedule comes back. Copies left by hand or by an older run are removed.
    """
    wanted = {
        # django-q2 stores the dotted path and imports it in the worker.
        "func": f"{func.__module__}.{func.__qualname__}",
        "schedule_type": Schedule.MINUTES,
        "minutes": minutes,
        "repeats": -1,
        "args": None,
        "kwargs": None,
    }
    with transaction.atomic(using=using):
        # Two `migrate`s at once would otherwise both find no schedule and both create one.
        with connections[using].cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [zlib.crc32(name.encode())])
        schedules = list(Schedule.objects.using(using).filter(name=name).order_by("id"))
        if not schedules:
            return Schedule.objects.using(using).create(name=name, **wanted)
        schedule, extra = schedules[0], schedules[1:]
        if extra:
            Schedule.objects.using(using).filter(pk__in=[s.pk for s in extra]).delete()
        changed = [field for field, value in wanted.items() if getattr(schedule, field) != value]
        for field in changed:
            setattr(schedule, field, wanted[field])
        if changed:
            schedule.save(using=using, update_fields=changed)
        return schedule
