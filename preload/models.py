"""Preload configuration and the record of each preload run.

PreloadConfig rows come in three scopes, most specific winning option by
option (preload.config.resolve_config): the global default (no account), an
account's row (account, no user) and a user's row (account, namespace,
user_id). Every option is nullable: NULL means "inherit from the next scope
out", and on the global row "the code default" (preload.options).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any, ClassVar

from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from memories.models import Account
from preload.options import CONFIG_LIMITS, OPTIONS, Scope, Strategy, validate_options


def _help(name: str) -> str:
    return OPTIONS[name].help + " Empty: inherit."


def _range_checks() -> list[models.CheckConstraint]:
    checks = [
        models.CheckConstraint(
            condition=Q(**{f"{name}__isnull": True}) | Q(**{f"{name}__gte": low, f"{name}__lte": high}),
            name=f"preloadconfig_{name}_range",
        )
        for name, (low, high) in CONFIG_LIMITS.items()
    ]
    checks.append(
        models.CheckConstraint(
            condition=Q(strategies__isnull=True) | Q(strategies__contained_by=list(Strategy.values)),
            name="preloadconfig_strategies_known",
        )
    )
    return checks


class PreloadConfig(models.Model):
    # Derived from which of account / user_id are set (see save()); stored so
    # that the unique constraints and the admin's filter can name a scope.
    scope = models.CharField(max_length=10, choices=Scope.choices, editable=False)
    account = models.ForeignKey(
        Account, on_delete=models.CASCADE, null=True, blank=True, related_name="preload_configs"
    )
    # NULL on global and account rows: an account's row covers all its namespaces.
    namespace = models.CharField(max_length=100, null=True, blank=True)  # noqa: DJ001
    user_id = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001

    enabled = models.BooleanField(null=True, blank=True, help_text=_help("enabled"))
    startup_preload = models.BooleanField(null=True, blank=True, help_text=_help("startup_preload"))
    background_refresh = models.BooleanField(null=True, blank=True, help_text=_help("background_refresh"))
    max_memories_per_user = models.PositiveIntegerField(null=True, blank=True, help_text=_help("max_memories_per_user"))
    strategies = ArrayField(
        models.CharField(max_length=20, choices=Strategy.choices),
        null=True,
        blank=True,
        help_text=_help("strategies"),
    )
    refresh_interval_minutes = models.PositiveIntegerField(
        null=True, blank=True, help_text=_help("refresh_interval_minutes")
    )
    recent_days = models.PositiveIntegerField(null=True, blank=True, help_text=_help("recent_days"))
    frequent_min_access = models.PositiveBigIntegerField(null=True, blank=True, help_text=_help("frequent_min_access"))
    important_min_importance = models.FloatField(null=True, blank=True, help_text=_help("important_min_importance"))
    context_sample_size = models.PositiveIntegerField(null=True, blank=True, help_text=_help("context_sample_size"))
    trending_window_hours = models.PositiveIntegerField(null=True, blank=True, help_text=_help("trending_window_hours"))
    trending_max_memories = models.PositiveIntegerField(null=True, blank=True, help_text=_help("trending_max_memories"))
    ttl_recent_seconds = models.PositiveIntegerField(null=True, blank=True, help_text=_help("ttl_recent_seconds"))
    ttl_frequent_seconds = models.PositiveIntegerField(null=True, blank=True, help_text=_help("ttl_frequent_seconds"))
    ttl_important_seconds = models.PositiveIntegerField(null=True, blank=True, help_text=_help("ttl_important_seconds"))
    ttl_trending_seconds = models.PositiveIntegerField(null=True, blank=True, help_text=_help("ttl_trending_seconds"))
    memory_budget_bytes = models.PositiveBigIntegerField(null=True, blank=True, help_text=_help("memory_budget_bytes"))

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "preload configuration"
        constraints: ClassVar = [
            # The scope column agrees with the key columns, whoever wrote the row
            # (a queryset update bypasses save()).
            models.CheckConstraint(
                condition=(
                    Q(scope=Scope.GLOBAL, account__isnull=True, namespace__isnull=True, user_id__isnull=True)
                    | Q(scope=Scope.ACCOUNT, account__isnull=False, namespace__isnull=True, user_id__isnull=True)
                    | Q(scope=Scope.USER, account__isnull=False, namespace__isnull=False, user_id__isnull=False)
                ),
                name="preloadconfig_scope_shape",
            ),
            # One row per scope. Their unique indexes also serve resolve_config's
            # three-row lookup: the global row, (account) and (account, namespace, user_id).
            models.UniqueConstraint(fields=["scope"], condition=Q(scope=Scope.GLOBAL), name="preloadconfig_one_global"),
            models.UniqueConstraint(
                fields=["account"], condition=Q(scope=Scope.ACCOUNT), name="preloadconfig_one_per_account"
            ),
            models.UniqueConstraint(
                fields=["account", "namespace", "user_id"],
                condition=Q(scope=Scope.USER),
                name="preloadconfig_one_per_user",
            ),
            # The budget bounds the whole preload: only the global row sets it.
            models.CheckConstraint(
                condition=Q(scope=Scope.GLOBAL) | Q(memory_budget_bytes__isnull=True),
                name="preloadconfig_budget_global_only",
            ),
            *_range_checks(),
        ]

    def __str__(self) -> str:
        if self.scope == Scope.USER:
            return f"user {self.user_id} ({self.namespace}) of {self.account}"
        if self.scope == Scope.ACCOUNT:
            return f"account {self.account}"
        return "global default"

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.scope = self.derive_scope()
        super().save(*args, **kwargs)

    def derive_scope(self) -> Scope:
        if self.account_id is None:
            return Scope.GLOBAL
        if self.user_id is None and self.namespace is None:
            return Scope.ACCOUNT
        return Scope.USER

    def option_values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in OPTIONS}

    def clean(self) -> None:
        self.scope = self.derive_scope()
        if self.account_id is None and (self.namespace is not None or self.user_id is not None):
            raise ValidationError({"account": "A user's configuration belongs to an account."})
        if self.scope == Scope.USER and not (self.namespace and self.user_id):
            raise ValidationError("A user's configuration needs both a namespace and a user id.")
        errors = validate_options(self.option_values(), scope=self.scope)
        if errors:
            raise ValidationError(errors)


class RunTrigger(models.TextChoices):
    STARTUP = "startup", "Start-up"
    SCHEDULE = "schedule", "Schedule"
    API = "api", "API"
    COMMAND = "command", "Command"


class RunStatus(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


# A run that fails for every user of a large account must not grow a
# megabyte-sized row: the first errors are kept, the rest only counted.
MAX_RUN_ERRORS = 50


class PreloadRun(models.Model):
    """One preload: what it was asked to do, how far it got, what it cost."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    trigger = models.CharField(max_length=20, choices=RunTrigger.choices)
    status = models.CharField(max_length=20, choices=RunStatus.choices, default=RunStatus.RUNNING)
    # NULL: every account.
    account = models.ForeignKey(Account, on_delete=models.CASCADE, null=True, blank=True, related_name="preload_runs")
    # NULL: every namespace of the account(s).
    namespace = models.CharField(max_length=100, null=True, blank=True)  # noqa: DJ001
    # Empty: every user in scope.
    requested_users = ArrayField(models.CharField(max_length=255), default=list, blank=True)
    # Empty: the strategies each user's configuration enables.
    requested_strategies = ArrayField(
        models.CharField(max_length=20, choices=Strategy.choices), default=list, blank=True
    )
    dry_run = models.BooleanField(default=False)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Refreshed by the worker while it runs: a running row whose heartbeat is
    # old belongs to a dead worker and may be resumed from its cursor.
    heartbeat_at = models.DateTimeField(default=timezone.now)
    users_total = models.PositiveIntegerField(null=True, blank=True)
    users_done = models.PositiveIntegerField(default=0)
    memories = models.PositiveBigIntegerField(default=0)
    bytes = models.PositiveBigIntegerField(default=0)
    # The first MAX_RUN_ERRORS errors, each {"user_id", "account_id", "error", "at"}; error_count counts all.
    errors = models.JSONField(default=list, blank=True)
    error_count = models.PositiveIntegerField(default=0)
    # The last (account_id, namespace, user_id) finished, in the order users are
    # walked: a resumed run starts after it.
    last_user_cursor = models.JSONField(null=True, blank=True)

    class Meta:
        constraints: ClassVar = [
            # A finished run has an end; a running one does not.
            models.CheckConstraint(
                condition=Q(status=RunStatus.RUNNING, finished_at__isnull=True)
                | (~Q(status=RunStatus.RUNNING) & Q(finished_at__isnull=False)),
                name="preloadrun_finished_iff_not_running",
            ),
            models.CheckConstraint(
                condition=Q(users_total__isnull=True) | Q(users_done__lte=models.F("users_total")),
                name="preloadrun_done_within_total",
            ),
        ]
        indexes: ClassVar = [
            # Status's "current runs" and the stale-heartbeat sweep: only running rows, a handful.
            models.Index(fields=["heartbeat_at"], name="preloadrun_running", condition=Q(status=RunStatus.RUNNING)),
            # Status's "last runs" and the admin list, newest first.
            models.Index(fields=["-started_at"], name="preloadrun_started"),
            # An account's last runs (the status endpoint answers per account).
            models.Index(fields=["account", "-started_at"], name="preloadrun_account_started"),
        ]

    def __str__(self) -> str:
        return f"{self.trigger} run {self.id} ({self.status})"

    @property
    def duration(self) -> timedelta | None:
        end = self.finished_at or (timezone.now() if self.status == RunStatus.RUNNING else None)
        return None if end is None else end - self.started_at

    def add_error(self, error: dict[str, Any]) -> None:
        """Record an error in memory (the caller saves): bounded list, exact count."""
        self.error_count += 1
        if len(self.errors) < MAX_RUN_ERRORS:
            self.errors.append(error)
