"""django-q2 tasks and their schedules. Tasks are thin wrappers over services."""

from __future__ import annotations

import zlib
from dataclasses import asdict
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django_q.models import Schedule

from memories.access import flush_access_counts

ACCESS_FLUSH_SCHEDULE = "memories.flush_access_counts"


def flush_access_counts_task() -> dict[str, Any]:
    """Apply the reads counted in Redis to access_count; the result shows in the admin."""
    return asdict(flush_access_counts(batch_size=settings.ACCESS_TRACKING["FLUSH_BATCH_SIZE"]))


def ensure_access_flush_schedule(*, using: str = DEFAULT_DB_ALIAS) -> Schedule:
    """Create or update the schedule of flush_access_counts_task: one, every FLUSH_INTERVAL_MINUTES.

    Run after every `migrate`, so that a changed interval takes effect and a
    deleted schedule comes back. Copies left by hand or by an older run are removed.
    """
    minutes = settings.ACCESS_TRACKING["FLUSH_INTERVAL_MINUTES"]
    wanted = {
        "func": f"{flush_access_counts_task.__module__}.{flush_access_counts_task.__name__}",
        "schedule_type": Schedule.MINUTES,
        "minutes": minutes,
        "repeats": -1,
        "args": None,
        "kwargs": None,
    }
    with transaction.atomic(using=using):
        # Two `migrate`s at once would otherwise both find no schedule and both create one.
        with connections[using].cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [zlib.crc32(ACCESS_FLUSH_SCHEDULE.encode())])
        schedules = list(Schedule.objects.using(using).filter(name=ACCESS_FLUSH_SCHEDULE).order_by("id"))
        if not schedules:
            return Schedule.objects.using(using).create(name=ACCESS_FLUSH_SCHEDULE, **wanted)
        schedule, extra = schedules[0], schedules[1:]
        if extra:
            Schedule.objects.using(using).filter(pk__in=[s.pk for s in extra]).delete()
        changed = [name for name, value in wanted.items() if getattr(schedule, name) != value]
        for name in changed:
            setattr(schedule, name, wanted[name])
        if changed:
            schedule.save(using=using, update_fields=changed)
        return schedule
