"""Admin pages of transcript ingestion: transcripts with their status, attempts and errors, a retry
action, and the processor's heartbeat and daily statistics. Imported by memories.admin."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from memories.ingest import transcripts_reprocess, transcripts_retry
from memories.models import ProcessingDay, ProcessorHeartbeat, RawTranscript

SHORT_ERROR_CHARS = 80

if TYPE_CHECKING:
    TranscriptModelAdmin = admin.ModelAdmin[RawTranscript]
    DayModelAdmin = admin.ModelAdmin[ProcessingDay]
    HeartbeatModelAdmin = admin.ModelAdmin[ProcessorHeartbeat]
else:
    TranscriptModelAdmin = DayModelAdmin = HeartbeatModelAdmin = admin.ModelAdmin


class ReadOnlyAdminMixin:
    """Rows written by the processor only: viewable, never added or edited by hand."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(RawTranscript)
class RawTranscriptAdmin(ReadOnlyAdminMixin, TranscriptModelAdmin):
    list_display = (
        "id",
        "status",
        "attempts",
        "short_error",
        "account",
        "namespace",
        "user_id",
        "session",
        "created_at",
        "processed_at",
        "memories_created",
    )
    list_filter = ("status", "account")
    list_select_related = ("account", "session")
    search_fields = ("=id", "=user_id", "=session__external_id")
    ordering = ("-created_at",)
    actions = ("retry", "reprocess")
    show_full_result_count = False
    fields = (
        "id",
        "account",
        "namespace",
        "user_id",
        "session",
        "status",
        "attempts",
        "last_error",
        "next_attempt_at",
        "claimed_at",
        "created_at",
        "processed_at",
        "duration_seconds",
        "memories_created",
        "size_bytes",
        "metadata",
        "text",
        "messages",
    )
    readonly_fields = fields

    @admin.display(description="last error")
    def short_error(self, obj: RawTranscript) -> str:
        error = obj.last_error
        return error if len(error) <= SHORT_ERROR_CHARS else error[: SHORT_ERROR_CHARS - 1] + "…"

    @admin.action(description="Mark for retry at the next processing cycle (failed ones get a fresh set of attempts)")
    def retry(self, request: HttpRequest, queryset: QuerySet[RawTranscript]) -> None:
        self._queued(request, queryset, transcripts_retry, "at the next processing cycle (within a minute)")

    @admin.action(description="Reprocess now (a processing task for each at once)")
    def reprocess(self, request: HttpRequest, queryset: QuerySet[RawTranscript]) -> None:
        self._queued(request, queryset, transcripts_reprocess, "with a task each, now")

    def _queued(
        self,
        request: HttpRequest,
        queryset: QuerySet[RawTranscript],
        queue: Callable[..., int],
        when: str,
    ) -> None:
        count = queue(transcript_ids=list(queryset.values_list("id", flat=True)))
        skipped = queryset.count() - count
        self.message_user(request, f"Queued {count} transcripts again, {when}.", messages.SUCCESS)
        if skipped > 0:
            self.message_user(request, f"{skipped} are being processed right now; left alone.", messages.WARNING)


@admin.register(ProcessingDay)
class ProcessingDayAdmin(ReadOnlyAdminMixin, DayModelAdmin):
    list_display = ("day", "account", "namespace", "processed", "retried", "errors", "memories_created")
    list_filter = ("account", "day")
    list_select_related = ("account",)
    ordering = ("-day",)


@admin.register(ProcessorHeartbeat)
class ProcessorHeartbeatAdmin(ReadOnlyAdminMixin, HeartbeatModelAdmin):
    list_display = ("name", "beat_at", "worker", "processed_total", "errors_total")
