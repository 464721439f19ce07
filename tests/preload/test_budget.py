from __future__ import annotations

import pytest
from django.db import connection
from django_redis import get_redis_connection

from preload.budget import Budget
from preload.models import PreloadConfig, RunTrigger
from preload.runs import preload_run, users_of
from tests.factories import AccountWithKey


def test_budget_gives_back_the_least_valuable_first() -> None:
    budget = Budget(max_bytes=100)
    first, evicted = budget.admit([(0.5, 40, "a", 1), (0.2, 40, "b", 1)])
    assert (first, evicted) == (["a", "b"], [])

    second, evicted = budget.admit([(0.9, 40, "c", 1), (0.1, 40, "d", 1)])

    assert second == ["c"]
    assert evicted == ["b"]
    assert (budget.total, budget.count) == (80, 2)


def test_budget_never_admits_past_its_size() -> None:
    budget = Budget(max_bytes=50)
    admitted, _ = budget.admit([(1.0, 60, "too big", 1), (0.5, 30, "fits", 1)])
    assert admitted == ["fits"]
    assert budget.total <= 50


@pytest.mark.django_db
def test_a_run_stays_within_the_budget_and_keeps_the_most_valuable(account: AccountWithKey) -> None:
    PreloadConfig.objects.create(memory_budget_bytes=1024 * 1024, max_memories_per_user=1000)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO memories_memory (id, account_id, namespace, user_id, kind, category, content, content_hash,
                tags, metadata, importance, pinned, access_count, created_at, updated_at, embedding_model)
            SELECT gen_random_uuid(), %s, 'default', u, 'fact', '', repeat('x', 2000) || g, md5(u || g), '{}', '{}',
                CASE u WHEN 'high' THEN 0.95 WHEN 'mid' THEN 0.8 ELSE 0.75 END, false, 0, now(), now(), ''
            FROM generate_series(1, 300) g, unnest(ARRAY['low', 'mid', 'high']) u
            """,
            [account.account.id],
        )

    run = preload_run(users=users_of(accounts=[account.account], namespace=None), trigger=RunTrigger.COMMAND)

    redis = get_redis_connection("default")
    held = [redis.get(key) for key in redis.scan_iter(match="c:memory:*")]
    assert run.bytes <= 1024 * 1024
    assert sum(len(value) for value in held if value) <= 1024 * 1024
    assert run.memories == len(held)
    contents = [value.decode() for value in held if value]
    assert sum('"user_id":"high"' in text for text in contents) == 300  # all of the best user's
    assert sum('"user_id":"low"' in text for text in contents) == 0  # none of the least valuable
