"""Preload configuration: precedence in one query, constraints from the shared limits, and the admin."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from memories.models import Account
from preload.config import CONFIG_LIMITS, account_config, global_config, resolve_config, resolve_configs
from preload.models import MAX_RUN_ERRORS, PreloadConfig, PreloadRun, RunStatus, RunTrigger
from preload.options import CODE_DEFAULTS, Scope, Strategy, validate_options
from tests.factories import AccountWithKey

pytestmark = pytest.mark.django_db


def _global(**options: Any) -> PreloadConfig:
    return PreloadConfig.objects.create(**options)


def _account(account: Account, **options: Any) -> PreloadConfig:
    return PreloadConfig.objects.create(account=account, **options)


def _user(account: Account, user_id: str, namespace: str = "default", **options: Any) -> PreloadConfig:
    return PreloadConfig.objects.create(account=account, namespace=namespace, user_id=user_id, **options)


# -- resolution --------------------------------------------------------------------


def test_without_rows_every_option_is_its_code_default(
    account: AccountWithKey, django_assert_num_queries: Callable[..., Any]
) -> None:
    with django_assert_num_queries(1):
        config = resolve_config(account_id=account.account.id, namespace="default", user_id="u1")

    assert config.max_memories_per_user == 100
    assert config.strategies == tuple(Strategy)
    assert config.ttl_seconds(Strategy.RECENT) == 7200
    assert config.ttl_seconds(Strategy.FREQUENT) == 14400
    assert config.ttl_seconds(Strategy.IMPORTANT) == 21600
    assert config.ttl_seconds(Strategy.TRENDING) == 3600
    assert config.as_dict() == {**CODE_DEFAULTS, "strategies": list(Strategy.values)}
    assert set(dict(config.origins).values()) == {"default"}


def test_user_row_beats_account_row_beats_global_row_beats_default_in_one_query(
    account: AccountWithKey, other_account: AccountWithKey, django_assert_num_queries: Callable[..., Any]
) -> None:
    acme = account.account
    _global(max_memories_per_user=50, recent_days=3, refresh_interval_minutes=10, memory_budget_bytes=8 * 1024 * 1024)
    _account(acme, max_memories_per_user=80, recent_days=None, ttl_recent_seconds=600)
    _user(acme, "u1", strategies=[Strategy.IMPORTANT, Strategy.RECENT], ttl_recent_seconds=300)
    # Rows that must not apply to acme's u1 in "default".
    _user(acme, "u2", max_memories_per_user=1)
    _user(acme, "u1", namespace="travel", max_memories_per_user=2)
    _account(other_account.account, max_memories_per_user=3)
    _user(other_account.account, "u1", max_memories_per_user=4)

    with django_assert_num_queries(1):
        config = resolve_config(account_id=acme.id, namespace="default", user_id="u1")

    assert config.max_memories_per_user == 80  # account over global
    assert config.recent_days == 3  # the account row's NULL inherits the global value
    assert config.refresh_interval_minutes == 10
    assert config.ttl_recent_seconds == 300  # user over account
    assert config.strategies == (Strategy.RECENT, Strategy.IMPORTANT)  # in Strategy order
    assert config.memory_budget_bytes == 8 * 1024 * 1024
    assert config.frequent_min_access == CODE_DEFAULTS["frequent_min_access"]
    origins = dict(config.origins)
    assert origins["max_memories_per_user"] == "account"
    assert origins["recent_days"] == "global"
    assert origins["strategies"] == "user"
    assert origins["frequent_min_access"] == "default"


def test_batch_resolution_agrees_with_single_resolution_in_one_query(
    account: AccountWithKey, django_assert_num_queries: Callable[..., Any]
) -> None:
    acme = account.account
    _global(recent_days=2)
    _account(acme, max_memories_per_user=70)
    _user(acme, "u1", max_memories_per_user=10)
    _user(acme, "u3", enabled=False)
    users = ["u1", "u2", "u3"]

    with django_assert_num_queries(1):
        batch = resolve_configs(account_id=acme.id, namespace="default", user_ids=users)

    assert batch == {user: resolve_config(account_id=acme.id, namespace="default", user_id=user) for user in users}
    assert [batch[user].max_memories_per_user for user in users] == [10, 70, 70]
    assert [batch[user].enabled for user in users] == [True, True, False]


def test_account_and_global_configs_leave_out_the_narrower_rows(account: AccountWithKey) -> None:
    acme = account.account
    _global(trending_window_hours=6)
    _account(acme, trending_window_hours=12, strategies=[Strategy.RECENT])
    _user(acme, "u1", trending_window_hours=48)

    assert account_config(account_id=acme.id).trending_window_hours == 12
    assert not account_config(account_id=acme.id).trending_enabled
    assert global_config().trending_window_hours == 6
    assert global_config().trending_enabled


def test_trending_is_not_a_user_strategy(account: AccountWithKey) -> None:
    config = resolve_config(account_id=account.account.id, namespace="default", user_id="u1")

    assert Strategy.TRENDING in config.strategies
    assert config.user_strategies == (Strategy.RECENT, Strategy.FREQUENT, Strategy.IMPORTANT, Strategy.CONTEXT)


# -- constraints ---------------------------------------------------------------------


def _refused(create: Callable[[], object]) -> bool:
    try:
        with transaction.atomic():
            create()
    except IntegrityError:
        return True
    return False


def test_one_row_per_scope(account: AccountWithKey, other_account: AccountWithKey) -> None:
    acme = account.account
    _global()
    _account(acme)
    _user(acme, "u1")

    assert _refused(lambda: _global())
    assert _refused(lambda: _account(acme))
    assert _refused(lambda: _user(acme, "u1"))
    # The same user elsewhere is another scope.
    assert not _refused(lambda: _user(acme, "u1", namespace="travel"))
    assert not _refused(lambda: _user(other_account.account, "u1"))
    assert not _refused(lambda: _account(other_account.account))


def test_scope_column_must_match_the_key_columns(account: AccountWithKey) -> None:
    row = _user(account.account, "u1")

    assert row.scope == Scope.USER
    assert _refused(lambda: PreloadConfig.objects.filter(pk=row.pk).update(scope=Scope.GLOBAL))
    assert _refused(lambda: PreloadConfig.objects.filter(pk=row.pk).update(namespace=None))


@pytest.mark.parametrize(("name", "limits"), sorted(CONFIG_LIMITS.items()))
def test_database_ranges_are_the_shared_limits(name: str, limits: tuple[float, float]) -> None:
    low, high = limits
    step = 1 if isinstance(low, int) else 0.001
    row = _global()

    def set_to(value: float) -> Callable[[], object]:
        return lambda: PreloadConfig.objects.filter(pk=row.pk).update(**{name: value})

    assert not _refused(set_to(low))
    assert not _refused(set_to(high))
    assert _refused(set_to(high + step))
    if low - step >= 0:  # below zero, the positive integer columns refuse it anyway
        assert _refused(set_to(low - step))
    assert validate_options({name: low}, scope=Scope.GLOBAL) == {}
    assert name in validate_options({name: high + step}, scope=Scope.GLOBAL)


def test_budget_is_global_only_and_strategies_must_be_known(account: AccountWithKey) -> None:
    assert _refused(lambda: _account(account.account, memory_budget_bytes=64 * 1024 * 1024))
    assert _refused(lambda: _global(strategies=["recent", "psychic"]))
    assert not _refused(lambda: _global(strategies=[]))


def test_validation_names_each_bad_option() -> None:
    errors = validate_options(
        {
            "max_memories_per_user": 0,
            "recent_days": 2.5,
            "enabled": "yes",
            "important_min_importance": True,
            "strategies": ["recent", "recent"],
            "memory_budget_bytes": 10 * 1024 * 1024,
            "colour": "blue",
            "ttl_recent_seconds": None,
        },
        scope=Scope.USER,
    )

    assert sorted(errors) == [
        "colour",
        "enabled",
        "important_min_importance",
        "max_memories_per_user",
        "memory_budget_bytes",
        "recent_days",
        "strategies",
    ]


def test_full_clean_uses_the_shared_validation(account: AccountWithKey) -> None:
    row = PreloadConfig(account=account.account, namespace="default", user_id="u1", max_memories_per_user=0)

    with pytest.raises(ValidationError) as raised:
        row.full_clean()

    assert "max_memories_per_user" in raised.value.message_dict
    assert row.scope == Scope.USER


# -- runs -------------------------------------------------------------------------------


def test_a_run_is_finished_exactly_when_it_is_not_running(account: AccountWithKey) -> None:
    run = PreloadRun.objects.create(trigger=RunTrigger.API, account=account.account, requested_users=["u1"])

    assert _refused(lambda: PreloadRun.objects.filter(pk=run.pk).update(status=RunStatus.SUCCEEDED))
    assert _refused(lambda: PreloadRun.objects.filter(pk=run.pk).update(finished_at=timezone.now()))
    assert not _refused(
        lambda: PreloadRun.objects.filter(pk=run.pk).update(status=RunStatus.SUCCEEDED, finished_at=timezone.now())
    )
    assert _refused(lambda: PreloadRun.objects.filter(pk=run.pk).update(users_total=1, users_done=2))


def test_run_errors_are_bounded_but_all_counted() -> None:
    run = PreloadRun.objects.create(trigger=RunTrigger.COMMAND)
    for number in range(MAX_RUN_ERRORS + 5):
        run.add_error({"user_id": f"u{number}", "error": "redis down"})
    run.save()
    run.refresh_from_db()

    assert len(run.errors) == MAX_RUN_ERRORS
    assert run.errors[0]["user_id"] == "u0"
    assert run.error_count == MAX_RUN_ERRORS + 5


# -- admin ------------------------------------------------------------------------------

CONFIG_ADD = reverse("admin:preload_preloadconfig_add")


def _form(**values: Any) -> dict[str, Any]:
    """An add form as a browser posts it: every inheritable option left empty."""
    data: dict[str, Any] = {name: "" for name in CODE_DEFAULTS if name != "strategies"}
    for name in ("enabled", "startup_preload", "background_refresh"):
        data[name] = "unknown"
    data.update({"account": "", "namespace": "", "user_id": ""})
    data.update(values)
    return data


def test_admin_creates_rows_at_each_scope(admin_client: Client, account: AccountWithKey) -> None:
    acme = account.account

    responses = [
        admin_client.post(CONFIG_ADD, _form(max_memories_per_user="60", enabled="true")),
        admin_client.post(CONFIG_ADD, _form(account=acme.pk, strategies=["recent", "important"])),
        admin_client.post(CONFIG_ADD, _form(account=acme.pk, namespace="default", user_id="u1", recent_days="2")),
    ]

    assert [response.status_code for response in responses] == [302, 302, 302]
    rows = {row.scope: row for row in PreloadConfig.objects.all()}
    assert rows[Scope.GLOBAL].max_memories_per_user == 60
    assert rows[Scope.GLOBAL].enabled is True
    # Nothing ticked is "inherit", not "no strategies".
    assert rows[Scope.GLOBAL].strategies is None
    assert rows[Scope.ACCOUNT].strategies == ["recent", "important"]
    assert rows[Scope.ACCOUNT].enabled is None
    assert rows[Scope.USER].recent_days == 2
    config = resolve_config(account_id=acme.id, namespace="default", user_id="u1")
    assert (config.max_memories_per_user, config.recent_days) == (60, 2)
    assert config.strategies == (Strategy.RECENT, Strategy.IMPORTANT)


def test_admin_refuses_bad_values_and_duplicate_scopes_with_form_errors(
    admin_client: Client, account: AccountWithKey
) -> None:
    _global()

    out_of_range = admin_client.post(
        CONFIG_ADD, _form(account=account.account.pk, max_memories_per_user="0", important_min_importance="1.5")
    )
    budget_on_account = admin_client.post(CONFIG_ADD, _form(account=account.account.pk, memory_budget_bytes="2000000"))
    duplicate = admin_client.post(CONFIG_ADD, _form())
    half_user = admin_client.post(CONFIG_ADD, _form(account=account.account.pk, user_id="u1"))

    for response in (out_of_range, budget_on_account, duplicate, half_user):
        assert response.status_code == 200
        assert response.context["adminform"].form.errors
    errors = out_of_range.context["adminform"].form.errors
    assert "max_memories_per_user" in errors
    assert "important_min_importance" in errors
    assert "memory_budget_bytes" in budget_on_account.context["adminform"].form.errors
    assert PreloadConfig.objects.count() == 1


def test_admin_pages_load(admin_client: Client, account: AccountWithKey) -> None:
    config = _user(account.account, "u1", strategies=[Strategy.RECENT])
    run = PreloadRun.objects.create(trigger=RunTrigger.STARTUP, account=account.account)
    run.add_error({"user_id": "u1", "error": "boom"})
    run.save()

    pages = [
        reverse("admin:preload_preloadconfig_changelist"),
        reverse("admin:preload_preloadconfig_changelist") + "?scope=user",
        reverse("admin:preload_preloadconfig_change", args=[config.pk]),
        CONFIG_ADD,
        reverse("admin:preload_preloadrun_changelist"),
        reverse("admin:preload_preloadrun_change", args=[run.pk]),
    ]

    assert [admin_client.get(page).status_code for page in pages] == [200] * len(pages)
    _global()
    _account(account.account)
    listed = admin_client.get(reverse("admin:preload_preloadconfig_changelist")).context["cl"].result_list
    # In the order values are inherited in: global, account, user.
    assert [row.scope for row in listed] == [Scope.GLOBAL, Scope.ACCOUNT, Scope.USER]
    assert "boom" in admin_client.get(reverse("admin:preload_preloadrun_change", args=[run.pk])).content.decode()
    # Runs are read-only: the engine writes them.
    assert admin_client.get(reverse("admin:preload_preloadrun_add")).status_code == 403
