"""Admin for preloading: edit configurations at every scope, inspect runs.

Configuration values are checked by preload.options (the same table the API
will use) before the database's CheckConstraints would refuse them, so a bad
value is a form error rather than a 500.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin
from django.db.models import F, Model, QuerySet
from django.http import HttpRequest

from preload.models import PreloadConfig, PreloadRun
from preload.options import OPTIONS, Scope, Strategy

if TYPE_CHECKING:
    ConfigFormBase = forms.ModelForm[PreloadConfig]
    ConfigModelAdmin = admin.ModelAdmin[PreloadConfig]
    RunModelAdmin = admin.ModelAdmin[PreloadRun]
else:
    # Generic only in django-stubs: at run time these cannot be subscripted.
    ConfigFormBase = forms.ModelForm
    ConfigModelAdmin = RunModelAdmin = admin.ModelAdmin


class InheritBooleanSelect(forms.NullBooleanSelect):
    """Yes / No / Inherit: the default widget calls NULL "Unknown", which here means inherit."""

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__(attrs)
        self.choices = [("unknown", "Inherit"), ("true", "Yes"), ("false", "No")]


class PreloadConfigForm(ConfigFormBase):
    # Checkboxes rather than a comma-separated text. None ticked means inherit:
    # a text field's empty value would store [] and silently switch every
    # strategy off; to preload nothing, set "enabled" to No.
    strategies = forms.TypedMultipleChoiceField(
        choices=Strategy.choices,
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text=OPTIONS["strategies"].help + " None ticked: inherit.",
    )

    class Meta:
        model = PreloadConfig
        fields = ("account", "namespace", "user_id", *OPTIONS)
        widgets = {name: InheritBooleanSelect for name, option in OPTIONS.items() if option.kind == "bool"}

    def clean_strategies(self) -> list[str] | None:
        chosen: list[str] = self.cleaned_data.get("strategies") or []
        return chosen or None

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        # The form leaves out `scope` (derived, not edited), and Django skips
        # every constraint that names a field left out: the one-row-per-scope
        # rule is checked here, else a duplicate would reach the database as an IntegrityError.
        account = cleaned.get("account")
        namespace = cleaned.get("namespace") or None
        user_id = cleaned.get("user_id") or None
        cleaned["namespace"], cleaned["user_id"] = namespace, user_id
        same = PreloadConfig.objects.exclude(pk=self.instance.pk)
        if account is None:
            same = same.filter(scope=Scope.GLOBAL)
        elif namespace is None and user_id is None:
            same = same.filter(scope=Scope.ACCOUNT, account=account)
        else:
            same = same.filter(scope=Scope.USER, account=account, namespace=namespace, user_id=user_id)
        if same.exists():
            raise forms.ValidationError("A configuration for this scope already exists; edit that one.")
        return cleaned


@admin.register(PreloadConfig)
class PreloadConfigAdmin(ConfigModelAdmin):
    form = PreloadConfigForm
    list_display = (
        "__str__",
        "scope",
        "account",
        "namespace",
        "user_id",
        "enabled",
        "max_memories_per_user",
        "strategies",
        "updated_at",
    )
    list_filter = ("scope", "enabled")
    list_select_related = ("account",)
    search_fields = ("user_id", "account__name", "namespace")
    readonly_fields = ("scope", "created_at", "updated_at")
    fieldsets = (
        (
            "Scope",
            {
                "fields": ("scope", "account", "namespace", "user_id"),
                "description": "No account: the global default. An account alone: that account's default. "
                "Account, namespace and user id: one user. Empty options inherit from the scope above.",
            },
        ),
        (
            "Preloading",
            {"fields": ("enabled", "startup_preload", "background_refresh", "refresh_interval_minutes")},
        ),
        (
            "Selection",
            {
                "fields": (
                    "strategies",
                    "max_memories_per_user",
                    "recent_days",
                    "frequent_min_access",
                    "important_min_importance",
                    "context_sample_size",
                    "trending_window_hours",
                    "trending_max_memories",
                )
            },
        ),
        (
            "Lifetimes and budget",
            {
                "fields": (
                    "ttl_recent_seconds",
                    "ttl_frequent_seconds",
                    "ttl_important_seconds",
                    "ttl_trending_seconds",
                    "memory_budget_bytes",
                ),
            },
        ),
        ("Record", {"fields": ("created_at", "updated_at")}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[PreloadConfig]:
        # The global row first, then accounts, then their users: the order values
        # are inherited in. (The changelist appends a queryset's own ordering;
        # `ordering` itself only takes field names, which cannot put NULLs first.)
        return (
            super()
            .get_queryset(request)
            .order_by(
                F("account__name").asc(nulls_first=True),
                F("namespace").asc(nulls_first=True),
                F("user_id").asc(nulls_first=True),
            )
        )


@admin.register(PreloadRun)
class PreloadRunAdmin(RunModelAdmin):
    """Runs are written by the preload engine only: the admin shows them."""

    list_display = (
        "started_at",
        "trigger",
        "status",
        "account",
        "users_done",
        "users_total",
        "memories",
        "bytes",
        "error_count",
        "duration",
    )
    list_filter = ("status", "trigger")
    list_select_related = ("account",)
    ordering = ("-started_at",)
    date_hierarchy = "started_at"
    fields = (
        "id",
        "trigger",
        "status",
        "account",
        "namespace",
        "requested_users",
        "requested_strategies",
        "dry_run",
        "started_at",
        "finished_at",
        "heartbeat_at",
        "duration",
        "users_done",
        "users_total",
        "memories",
        "bytes",
        "error_count",
        "errors",
        "last_user_cursor",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False
