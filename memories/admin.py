"""Django admin: inspect, pin and fix memories; see sessions, accounts, keys and history.

Every write to a memory goes through `memories.services`, exactly as the API's
do, so that it is re-embedded, recorded in MemoryHistory and invalidated in the
caches. Vectors are never rendered: a page shows which model made one and its
size, not 384 floats.

The memory table is the big one (100,000 rows and more, each carrying a
776-byte vector), so its pages avoid what the default admin does per load: a
full COUNT(*), DISTINCT scans for filter choices, and reading the vectors.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import ShowFacets
from django.core.paginator import Paginator
from django.db import connections, transaction
from django.db.models import Count, F, Func, IntegerField, Model, OuterRef, QuerySet, Subquery, Window
from django.db.models.functions import Coalesce, RowNumber
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html

from memories.api.serializers import MemoryUpdateSerializer
from memories.embedder import embedding_failed, embedding_queue, embedding_retry
from memories.embedding import get_embedder
from memories.invalidation import auth_changed
from memories.models import Account, ApiKey, HistoryAction, Memory, MemoryHistory, Session
from memories.reembedding import memories_reembed
from memories.services import UPDATABLE_FIELDS, memory_delete, memory_update

SHORT_CONTENT_CHARS = 80

if TYPE_CHECKING:
    PaginatorBase = Paginator[Any]
    MemoryFormBase = forms.ModelForm[Memory]
    MemoryModelAdmin = admin.ModelAdmin[Memory]
    SessionModelAdmin = admin.ModelAdmin[Session]
    AccountModelAdmin = admin.ModelAdmin[Account]
    ApiKeyModelAdmin = admin.ModelAdmin[ApiKey]
    HistoryModelAdmin = admin.ModelAdmin[MemoryHistory]
    HistoryInlineBase = admin.TabularInline[MemoryHistory, Memory]
    SessionMemoryInlineBase = admin.TabularInline[Memory, Session]
    ApiKeyInlineBase = admin.TabularInline[ApiKey, Account]
else:
    # These classes are generic only in django-stubs: at run time they cannot
    # be subscripted (django-stubs-ext, which patches that, is a dev dependency).
    PaginatorBase = Paginator
    MemoryFormBase = forms.ModelForm
    MemoryModelAdmin = SessionModelAdmin = AccountModelAdmin = ApiKeyModelAdmin = HistoryModelAdmin = admin.ModelAdmin
    HistoryInlineBase = SessionMemoryInlineBase = ApiKeyInlineBase = admin.TabularInline


def _actor(request: HttpRequest) -> str:
    return f"admin:{request.user.get_username()}"


def _short(text: str, limit: int = SHORT_CONTENT_CHARS) -> str:
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat[: limit - 1]
    # End on a whole word when there is one to end on.
    if " " in cut and not flat[limit - 1].isspace():
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip() + "…"


def _as_uuid(term: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(term.strip())
    except ValueError:
        return None


class VectorDims(Func):
    function = "vector_dims"
    output_field = IntegerField()


def _vector_dims(model: type[Model], pk: Any, field: str) -> int | None:
    """The stored vector's length, read without sending the vector itself over the wire."""
    dims: int | None = (
        model._default_manager.filter(pk=pk).annotate(dims=VectorDims(F(field))).values_list("dims", flat=True).first()
    )
    return dims


class EstimatedCountPaginator(PaginatorBase):
    """A paginator that never counts a whole large table.

    Small results (up to `exact_limit` rows) are counted exactly, with a count
    that stops after `exact_limit + 1` rows. Larger ones are estimated: the
    unfiltered table from pg_class (kept current by autovacuum's ANALYZE), a
    filtered one from the planner's row estimate. A page number a little off
    at the end of 100,000 rows is worth a changelist that loads in
    milliseconds.
    """

    exact_limit = 1_000

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return super().count
        if not queryset.query.has_filters():
            estimate = self._table_estimate(queryset)
            # pg_class can be stale after mass deletes: only trust it when the
            # table really has more rows than we would count, which one
            # OFFSET probe shows without counting anything.
            if estimate > self.exact_limit and queryset.order_by()[self.exact_limit : self.exact_limit + 1].exists():
                return estimate
        exact = queryset.order_by().values("pk")[: self.exact_limit + 1].count()
        if exact <= self.exact_limit:
            return exact
        return max(exact, self._planned_rows(queryset))

    @staticmethod
    def _table_estimate(queryset: QuerySet[Any]) -> int:
        connection = connections[queryset.db]
        with connection.cursor() as cursor:
            # As the planner does: scale the rows per page seen by the last
            # ANALYZE to the table's current size, so growth since then counts.
            cursor.execute(
                """
                SELECT CASE
                    WHEN reltuples < 0 THEN -1
                    WHEN relpages = 0 THEN reltuples
                    ELSE reltuples / relpages * (pg_relation_size(oid) / current_setting('block_size')::int)
                END
                FROM pg_class WHERE oid = %s::regclass
                """,
                [connection.ops.quote_name(queryset.model._meta.db_table)],
            )
            row = cursor.fetchone()
        return int(row[0]) if row and row[0] is not None else -1

    @staticmethod
    def _planned_rows(queryset: QuerySet[Any]) -> int:
        sql, params = queryset.order_by().query.sql_with_params()
        with connections[queryset.db].cursor() as cursor:
            cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
            row = cursor.fetchone()
        if row is None:
            return 0
        plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
        return int(plan[0]["Plan"]["Plan Rows"])


class FastChangeListMixin:
    """Changelist settings for tables too large to count or facet on every page load."""

    paginator: ClassVar[type] = EstimatedCountPaginator
    show_full_result_count: ClassVar[bool] = False
    # Facets run one COUNT per filter choice over the whole result.
    show_facets: ClassVar[ShowFacets] = ShowFacets.NEVER


def _newest_per_parent(queryset: QuerySet[Any], parent: str, limit: int) -> QuerySet[Any]:
    """At most `limit` newest rows per parent; the inline's formset then picks the parent."""
    rank = Window(RowNumber(), partition_by=F(parent), order_by=(F("created_at").desc(), F("pk").desc()))
    newest: QuerySet[Any] = queryset.alias(rank=rank).filter(rank__lte=limit)
    return newest


# -- memories ---------------------------------------------------------------------------------------


class NamespaceFilter(admin.SimpleListFilter):
    title = "namespace"
    parameter_name = "namespace"
    max_choices = 200

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> Iterable[tuple[str, str]]:
        # SELECT DISTINCT namespace would read the whole table on every page
        # load. This walks the (account, namespace, ...) index instead, one
        # descent per distinct pair: a loose index scan.
        with connections[Memory.objects.db].cursor() as cursor:
            cursor.execute(
                """
                WITH RECURSIVE pairs(account_id, namespace, n) AS (
                    (SELECT account_id, namespace, 1 FROM memories_memory ORDER BY account_id, namespace LIMIT 1)
                    UNION ALL
                    SELECT next.account_id, next.namespace, pairs.n + 1
                    FROM pairs CROSS JOIN LATERAL (
                        SELECT m.account_id, m.namespace FROM memories_memory m
                        WHERE (m.account_id, m.namespace) > (pairs.account_id, pairs.namespace)
                        ORDER BY m.account_id, m.namespace LIMIT 1
                    ) AS next
                    WHERE pairs.n < %s
                )
                SELECT DISTINCT namespace FROM pairs ORDER BY namespace
                """,
                [self.max_choices],
            )
            return [(namespace, namespace) for (namespace,) in cursor.fetchall()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset if value is None else queryset.filter(namespace=value)


class EmbeddingFilter(admin.SimpleListFilter):
    """Fixed choices rather than the distinct models stored, which would take a table scan to list."""

    title = "embedding model"
    parameter_name = "embedding"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> Iterable[tuple[str, str]]:
        return [
            ("current", get_embedder().model_name),
            ("other", "another model (re-embed these)"),
            ("pending", "pending"),
            ("failed", "failed to embed"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        # The predicates of the embedder's partial indexes (memories.embedder).
        if value == "pending":
            return queryset & embedding_queue()
        if value == "failed":
            return queryset & embedding_failed()
        current = get_embedder().model_name
        if value == "current":
            return queryset.filter(embedding__isnull=False, embedding_model=current)
        if value == "other":
            return queryset.filter(embedding__isnull=False).exclude(embedding_model=current)
        return queryset


def _error_messages(errors: Any) -> list[str]:
    """DRF's error structure (lists, and dicts for list items) as flat messages."""
    if isinstance(errors, dict):
        return [f"{key}: {message}" for key, value in errors.items() for message in _error_messages(value)]
    if isinstance(errors, list):
        return [message for item in errors for message in _error_messages(item)]
    return [str(errors)]


class MemoryAdminForm(MemoryFormBase):
    """Only the fields the service lets a client change; vectors and hashes are the service's."""

    class Meta:
        model = Memory
        fields = UPDATABLE_FIELDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # What save_model hands to memory_update: the changed fields, as the API validated them.
        self.service_changes: dict[str, Any] = {}

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        changed = {name: cleaned[name] for name in self.changed_data if name in cleaned}
        if not changed:
            return cleaned
        # The admin is one more client: the API's rules (content and tag
        # limits, metadata size, no NUL characters, expiry in the future) apply.
        serializer = MemoryUpdateSerializer(data=changed)
        if not serializer.is_valid():
            for name, errors in serializer.errors.items():
                self.add_error(name if name in self.fields else None, _error_messages(errors))
            return cleaned
        self.service_changes = dict(serializer.validated_data)
        # Django skips the (account, namespace, user_id, category, key)
        # constraint because account and the rest are not form fields; without
        # this check a clash would surface as an IntegrityError page.
        key = cleaned.get("key")
        if key is not None and {"key", "category"} & set(changed):
            memory = self.instance
            clash = (
                Memory.objects.filter(
                    account_id=memory.account_id,
                    namespace=memory.namespace,
                    user_id=memory.user_id,
                    category=cleaned.get("category", ""),
                    key=key,
                )
                .exclude(pk=memory.pk)
                .exists()
            )
            if clash:
                self.add_error("key", "Another memory of this user has this category and key.")
        return cleaned


class ReadOnlyInlineMixin:
    """An inline that shows rows and never adds, changes or deletes them."""

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


class MemoryHistoryInline(ReadOnlyInlineMixin, HistoryInlineBase):
    model = MemoryHistory
    fk_name = "memory"
    fields = ("created_at", "action", "actor", "old_content", "new_content", "changes")
    readonly_fields = fields
    ordering = ("-created_at", "-id")
    extra = 0
    can_delete = False
    max_shown = 50
    verbose_name_plural = f"history (newest {max_shown})"

    def get_queryset(self, request: HttpRequest) -> QuerySet[MemoryHistory]:
        return _newest_per_parent(super().get_queryset(request), "memory_id", self.max_shown)


@admin.register(Memory)
class MemoryAdmin(FastChangeListMixin, MemoryModelAdmin):
    form = MemoryAdminForm
    list_display = (
        "user_id",
        "namespace",
        "kind",
        "category",
        "short_content",
        "importance",
        "pinned",
        "access_count",
        "created_at",
        "account",
    )
    list_display_links = ("short_content",)
    list_filter = ("kind", "pinned", NamespaceFilter, "account", "created_at", EmbeddingFilter)
    list_select_related = ("account",)
    # None of these has an index of its own: a content search reads the table.
    # A memory's id, searched alone, goes through the primary key.
    search_fields = ("=user_id", "=category", "=key", "content")
    search_help_text = "A memory id; or an exact user id, category or key; or words of the content."
    ordering = ("-created_at",)
    actions = ("pin", "unpin", "reembed", "retry_embedding")
    inlines = (MemoryHistoryInline,)
    readonly_fields = (
        "id",
        "account",
        "namespace",
        "user_id",
        "session_link",
        "embedding_info",
        "access_count",
        "last_accessed_at",
        "created_at",
        "updated_at",
    )
    fieldsets = (
        (None, {"fields": ("id", "account", "namespace", "user_id", "session_link")}),
        (
            "Memory",
            {"fields": UPDATABLE_FIELDS},
        ),
        ("Usage", {"fields": ("access_count", "last_accessed_at", "created_at", "updated_at", "embedding_info")}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Memory]:
        return super().get_queryset(request).defer("embedding", "search_vector")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Memory], bool]:
        memory_id = _as_uuid(search_term)
        if memory_id is not None:
            return queryset.filter(pk=memory_id), False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="content")
    def short_content(self, obj: Memory) -> str:
        return _short(obj.content)

    @admin.display(description="session")
    def session_link(self, obj: Memory) -> str:
        # Not the plain `session` field: that would load the session's summary vector just to print its name.
        if obj.session_id is None:
            return "-"
        session = Session.objects.only("external_id", "user_id").filter(pk=obj.session_id).first()
        url = reverse("admin:memories_session_change", args=[obj.session_id])
        return format_html('<a href="{}">{}</a>', url, session if session is not None else obj.session_id)

    @admin.display(description="embedding")
    def embedding_info(self, obj: Memory) -> str:
        dims = _vector_dims(Memory, obj.pk, "embedding")
        if dims is None:
            if obj.embedding_failed_at is not None:
                return f"failed to embed after {obj.embedding_attempts} attempts: {obj.embedding_error}"
            if obj.embedding_attempts:
                return (
                    f"pending, {obj.embedding_attempts} failed attempts (next after"
                    f" {obj.embedding_next_attempt_at:%Y-%m-%d %H:%M:%S}): {obj.embedding_error}"
                )
            return "pending"
        return f"{obj.embedding_model or 'unknown model'} · {dims} dims"

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Memories come through the API, which embeds and deduplicates them.
        return False

    def save_model(self, request: HttpRequest, obj: Memory, form: Any, change: Any) -> None:
        changes = form.service_changes
        if not changes:
            return
        # The form has already written its values into `obj`; the service
        # needs the stored row to tell old from new.
        stored = self.get_queryset(request).get(pk=obj.pk)
        memory_update(memory=stored, changes=changes, actor=_actor(request))

    def delete_model(self, request: HttpRequest, obj: Memory) -> None:
        memory_delete(memory=obj, actor=_actor(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        actor = _actor(request)
        with transaction.atomic():
            for memory in queryset.defer("embedding", "search_vector"):
                memory_delete(memory=memory, actor=actor)

    def _set_pinned(self, request: HttpRequest, queryset: QuerySet[Memory], pinned: bool) -> int:
        actor = _actor(request)
        changed = 0
        with transaction.atomic():
            # Memories already in that state are skipped: no empty history rows.
            for memory in queryset.exclude(pinned=pinned):
                memory_update(memory=memory, changes={"pinned": pinned}, actor=actor)
                changed += 1
        return changed

    @admin.action(description="Pin selected memories", permissions=["change"])
    def pin(self, request: HttpRequest, queryset: QuerySet[Memory]) -> None:
        count = self._set_pinned(request, queryset, True)
        self.message_user(request, f"Pinned {_memories(count)}.", messages.SUCCESS)

    @admin.action(description="Unpin selected memories", permissions=["change"])
    def unpin(self, request: HttpRequest, queryset: QuerySet[Memory]) -> None:
        count = self._set_pinned(request, queryset, False)
        self.message_user(request, f"Unpinned {_memories(count)}.", messages.SUCCESS)

    @admin.action(description="Re-embed selected memories", permissions=["change"])
    def reembed(self, request: HttpRequest, queryset: QuerySet[Memory]) -> None:
        count = memories_reembed(queryset=queryset)
        self.message_user(request, f"Re-embedded {_memories(count)}.", messages.SUCCESS)

    @admin.action(description="Retry embedding of selected memories (failed or waiting)", permissions=["change"])
    def retry_embedding(self, request: HttpRequest, queryset: QuerySet[Memory]) -> None:
        count = embedding_retry(queryset=queryset)
        self.message_user(request, f"{_memories(count)} queued for the background embedder.", messages.SUCCESS)


def _memories(count: int) -> str:
    return f"{count} memory" if count == 1 else f"{count} memories"


# -- sessions ---------------------------------------------------------------------------------------


class SessionMemoryInline(ReadOnlyInlineMixin, SessionMemoryInlineBase):
    model = Memory
    fk_name = "session"
    fields = ("short_content", "kind", "created_at")
    readonly_fields = fields
    ordering = ("-created_at", "-id")
    extra = 0
    can_delete = False
    show_change_link = True
    max_shown = 50
    verbose_name_plural = f"memories (newest {max_shown})"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Memory]:
        queryset = super().get_queryset(request).defer("embedding", "search_vector")
        return _newest_per_parent(queryset, "session_id", self.max_shown)

    @admin.display(description="content")
    def short_content(self, obj: Memory) -> str:
        return _short(obj.content)


@admin.register(Session)
class SessionAdmin(FastChangeListMixin, SessionModelAdmin):
    """Read-only: sessions are written by transcript processing, and a changed
    summary would no longer match its embedding."""

    list_display = ("external_id", "user_id", "namespace", "account", "created_at", "memory_count")
    list_filter = ("account", "created_at")
    list_select_related = ("account",)
    search_fields = ("=external_id", "=user_id")
    ordering = ("-created_at",)
    inlines = (SessionMemoryInline,)
    fields = (
        "id",
        "account",
        "namespace",
        "external_id",
        "user_id",
        "summary",
        "summary_embedding_info",
        "metadata",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Session]:
        # A correlated count, computed for the rows of the page only, rather
        # than a join and GROUP BY over every session's memories.
        counts = Memory.objects.filter(session=OuterRef("pk")).order_by().values("session").annotate(n=Count("*"))
        return (
            super()
            .get_queryset(request)
            .defer("summary_embedding")
            .annotate(memory_count=Coalesce(Subquery(counts.values("n")), 0))
        )

    @admin.display(description="memories")
    def memory_count(self, obj: Session) -> int:
        count: int = getattr(obj, "memory_count", 0)
        return count

    @admin.display(description="summary embedding")
    def summary_embedding_info(self, obj: Session) -> str:
        dims = _vector_dims(Session, obj.pk, "summary_embedding")
        return "pending" if dims is None else f"{dims} dims"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Session | None = None) -> bool:
        # Deleting would detach its memories behind the services' and caches' back.
        return False


# -- accounts and keys ------------------------------------------------------------------------------


class ApiKeyInline(ReadOnlyInlineMixin, ApiKeyInlineBase):
    """New keys are made on the API key page, the one place that shows a key once."""

    model = ApiKey
    fields = ("prefix", "name", "created_at", "last_used_at", "revoked_at")
    readonly_fields = fields
    ordering = ("-created_at",)
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(Account)
class AccountAdmin(AccountModelAdmin):
    list_display = ("name", "is_active", "created_at")
    list_filter = ("is_active",)
    search_fields = ("name",)
    ordering = ("name",)
    fields = ("name", "is_active", "created_at")
    readonly_fields = ("created_at",)
    inlines = (ApiKeyInline,)

    def has_delete_permission(self, request: HttpRequest, obj: Account | None = None) -> bool:
        # Deletion cascades to every memory of the account, past the services
        # and the caches; deactivate the account instead.
        return False


class KeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> Iterable[tuple[str, str]]:
        return [("active", "active"), ("revoked", "revoked")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value in ("active", "revoked"):
            return queryset.filter(revoked_at__isnull=value == "active")
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(ApiKeyModelAdmin):
    list_display = ("name", "account", "prefix", "created_at", "last_used_at", "revoked_at")
    list_filter = (KeyStatusFilter, "account")
    list_select_related = ("account",)
    search_fields = ("name", "^prefix")
    ordering = ("-created_at",)
    actions = ("revoke",)

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        if obj is None:
            return ("account", "name")
        return ("account", "name", "prefix", "created_at", "last_used_at", "revoked_at")

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        return ("account", "prefix", "created_at", "last_used_at", "revoked_at")

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: Any) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        key, raw_key = ApiKey.generate(account=obj.account, name=obj.name)
        # The admin goes on with `obj` (log entry, redirect): make it the row just created.
        for field in ApiKey._meta.concrete_fields:
            setattr(obj, field.attname, getattr(key, field.attname))
        obj._state.adding = False
        obj._state.db = key._state.db
        # Only the hash is stored: this message is the one time the key is seen.
        self.message_user(request, f"The new key, shown only this once — copy it now: {raw_key}", messages.SUCCESS)

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        # Revoke instead: a revoked key keeps the record of who had access and when it was last used.
        return False

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        # update() sends no post_save: cached authentications must be told directly.
        auth_changed()
        self.message_user(request, f"Revoked {count} keys.", messages.SUCCESS)


# -- history ----------------------------------------------------------------------------------------


@admin.register(MemoryHistory)
class MemoryHistoryAdmin(FastChangeListMixin, HistoryModelAdmin):
    """Read-only: the history is the record of what happened, written by the services alone."""

    list_display = ("created_at", "memory_link", "action", "actor", "account")
    list_filter = ("action",)
    list_select_related = ("account",)
    search_fields = ("^actor",)
    search_help_text = "A memory id, or the start of an actor (e.g. admin:)."
    ordering = ("-created_at",)
    fields = ("memory_link", "account", "action", "actor", "created_at", "old_content", "new_content", "changes")
    readonly_fields = fields

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[MemoryHistory], bool]:
        memory_id = _as_uuid(search_term)
        if memory_id is not None:
            return queryset.filter(memory_id=memory_id), False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="memory", ordering="memory_id")
    def memory_link(self, obj: MemoryHistory) -> str:
        # A deletion's memory is gone for sure; for older rows of a deleted
        # memory the link leads to the admin's "no longer exists" message.
        if obj.action == HistoryAction.DELETE:
            return str(obj.memory_id)
        url = reverse("admin:memories_memory_change", args=[obj.memory_id])
        return format_html('<a href="{}">{}</a>', url, obj.memory_id)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: MemoryHistory | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: MemoryHistory | None = None) -> bool:
        return False


# Transcript ingestion pages: their own module, registered when the admin loads this one.
from memories import ingest_admin  # noqa: E402, F401
