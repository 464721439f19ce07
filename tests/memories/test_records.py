from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from django.db import connection

from memories.records import iso_utc, iso_utc_sql

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "instant",
    [
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, 1, tzinfo=UTC),
        datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    ],
)
def test_sql_writes_a_timestamp_as_python_does(instant: datetime) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {iso_utc_sql('%s::timestamptz')}, {iso_utc_sql('NULL::timestamptz')}", [instant])
        written, null = cursor.fetchone()

    assert written == iso_utc(instant)
    assert null is None
