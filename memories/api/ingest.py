"""The transcript ingestion endpoints: `/api/memory/{vectorstore_name}/...` of the contract.

store_raw queues a transcript (202 once its row is committed); the others read
the hierarchy it becomes (raw transcript -> session summary -> discrete
memories) and apply retention. The vectorstore name is the namespace; every
read and write is scoped to the caller's account and that namespace.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from memories import ingest, ingest_selectors
from memories.api.auth import caller
from memories.api.errors import error_response
from memories.api.serializers import (
    NAMESPACE_PATTERN,
    ErrorSerializer,
    MetadataField,
    StrictSerializer,
    _check_json_value,
)
from memories.extraction import parse_transcript
from memories.models import Session
from memories.retention import retention_apply

_NAMESPACE = re.compile(NAMESPACE_PATTERN)
# Every view here takes it; the schema says what _namespace() accepts.
_VECTORSTORE = OpenApiParameter(
    "vectorstore_name", str, OpenApiParameter.PATH, pattern=NAMESPACE_PATTERN, description="the namespace"
)
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _namespace(vectorstore_name: str) -> str:
    if not _NAMESPACE.match(vectorstore_name):
        raise serializers.ValidationError(
            {"vectorstore_name": ["1 to 100 characters: letters, digits, '_', '.' and '-'."]}
        )
    return vectorstore_name


def _bad_text(text: str) -> str | None:
    """What PostgreSQL refuses in text: NUL, or a lone UTF-16 surrogate."""
    if "\x00" in text:
        return "NUL characters"
    if any("\ud800" <= char <= "\udfff" for char in text):
        return "unpaired surrogate characters"
    return None


# -- input -------------------------------------------------------------------------------------------


# What validate_session_data and validate_metadata accept, for the schema: some text
# (not only blanks), and a user_id.
_SOME_TEXT = {"type": "string", "pattern": r"\S"}
_SESSION_DATA_SCHEMA = {
    "oneOf": [
        _SOME_TEXT,
        {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "role": {"type": "string", "enum": ["user", "assistant", "system"]},
                    "content": _SOME_TEXT,
                },
                "required": ["role", "content"],
            },
        },
    ]
}
_METADATA_SCHEMA = {
    "type": "object",
    "properties": {"user_id": {**_SOME_TEXT, "maxLength": 255}},
    "required": ["user_id"],
}


@extend_schema_field(_SESSION_DATA_SCHEMA)
class SessionDataField(serializers.JSONField):
    """session_data: any JSON here, checked by StoreRawSerializer.validate_session_data."""


@extend_schema_field(_METADATA_SCHEMA)
class TranscriptMetadataField(MetadataField):
    """A transcript's metadata: an object with user_id, checked by StoreRawSerializer.validate_metadata."""


class StoreRawSerializer(StrictSerializer):
    session_data = SessionDataField(
        help_text="the whole chat: text with 'User:'/'Assistant:' turns, or a list of {role, content} messages"
    )
    session_id = serializers.RegexField(
        r"^[^/\x00-\x1f]{1,255}$",
        required=False,
        help_text="your id of the session (no '/'); a new one is made when omitted",
    )
    metadata = TranscriptMetadataField(help_text="must hold user_id: the end user the transcript is about")

    def validate_session_data(self, value: Any) -> Any:
        config = settings.INGEST
        if isinstance(value, str):
            if len(value) > config["MAX_TRANSCRIPT_CHARS"]:
                raise serializers.ValidationError(f"At most {config['MAX_TRANSCRIPT_CHARS']} characters.")
            problem = _bad_text(value)
            if problem:
                raise serializers.ValidationError(f"Cannot contain {problem}.")
        elif isinstance(value, list):
            if len(value) > config["MAX_MESSAGES"]:
                raise serializers.ValidationError(f"At most {config['MAX_MESSAGES']} messages.")
            for position, item in enumerate(value):
                content = item.get("content") if isinstance(item, dict) else None
                problem = _bad_text(content) if isinstance(content, str) else None
                if problem:
                    raise serializers.ValidationError(f"session_data[{position}].content cannot contain {problem}.")
            # The rest of each message is stored (jsonb) and measured (orjson) as it came.
            _check_json_value(value, "session_data")
            total = sum(
                len(item["content"])
                for item in value
                if isinstance(item, dict) and isinstance(item.get("content"), str)
            )
            if total > config["MAX_TRANSCRIPT_CHARS"]:
                raise serializers.ValidationError(f"At most {config['MAX_TRANSCRIPT_CHARS']} characters in all.")
        try:
            messages = parse_transcript(value)
        except ValueError as error:
            raise serializers.ValidationError(str(error)) from None
        if not messages:
            raise serializers.ValidationError("The transcript holds no messages.")
        return value

    def validate_metadata(self, value: dict[str, Any]) -> dict[str, Any]:
        user_id = value.get("user_id")
        if user_id is None:
            raise serializers.ValidationError("metadata.user_id is required: the end user this transcript is about.")
        if not isinstance(user_id, str) or not user_id.strip() or len(user_id) > 255:
            raise serializers.ValidationError("metadata.user_id must be a non-empty string of at most 255 characters.")
        return value


class _DateBound(serializers.DateTimeField):
    """An ISO date or date-time. A bare date means its whole day: as an end bound, the next midnight."""

    def __init__(self, *, end: bool, **kwargs: Any) -> None:
        self.end = end
        super().__init__(**kwargs)

    def to_internal_value(self, value: Any) -> datetime:
        parsed = super().to_internal_value(value)
        if self.end and isinstance(value, str) and _DATE_ONLY.match(value.strip()):
            parsed += timedelta(days=1)
        return parsed


class HierarchyQuerySerializer(StrictSerializer):
    session_id = serializers.CharField(max_length=255, required=False)
    user_id = serializers.CharField(max_length=255, required=False)
    memory_type = serializers.ChoiceField(choices=["discrete", "summary", "raw", "all"], default="all")
    start_date = _DateBound(end=False, required=False, help_text="ISO date or date-time: created at or after")
    end_date = _DateBound(end=True, required=False, help_text="ISO date (whole day included) or date-time: before")
    limit = serializers.IntegerField(min_value=1, max_value=1000, default=50, help_text="per level, 1-1000")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        start, end = attrs.get("start_date"), attrs.get("end_date")
        if start is not None and end is not None and start >= end:
            raise serializers.ValidationError({"end_date": ["Must be after start_date."]})
        return attrs

    def to_query(self) -> ingest_selectors.HierarchyQuery:
        data = self.validated_data
        return ingest_selectors.HierarchyQuery(
            memory_type=data["memory_type"],
            session_id=data.get("session_id"),
            user_id=data.get("user_id"),
            start=data.get("start_date"),
            end=data.get("end_date"),
            limit=data["limit"],
        )


class CleanupSerializer(StrictSerializer):
    retention_days = serializers.IntegerField(
        min_value=0, max_value=36_500, required=False, help_text="days processed transcripts are kept (30)"
    )
    session_retention_days = serializers.IntegerField(
        min_value=0,
        max_value=36_500,
        required=False,
        help_text="days an idle session whose transcripts are all processed is kept (INGEST_SESSION_RETENTION_DAYS)",
    )
    dry_run = serializers.BooleanField(default=False)


# -- output (for the schema; the selectors build the dicts) ------------------------------------------


class StoreRawOutputSerializer(serializers.Serializer[Any]):
    success = serializers.BooleanField()
    raw_memory_id = serializers.UUIDField()
    session_id = serializers.CharField()
    status = serializers.CharField()
    queued_at = serializers.DateTimeField()
    queue_position = serializers.IntegerField(help_text="queued transcripts that will be processed before this one")
    estimated_processing_time = serializers.FloatField(
        help_text="seconds: mean duration of recently processed transcripts x (queue_position + 1)"
    )
    estimate_basis = serializers.ChoiceField(choices=["measured", "default"])


class HierarchyMemorySerializer(serializers.Serializer[Any]):
    id = serializers.UUIDField()
    user_id = serializers.CharField()
    kind = serializers.CharField()
    level = serializers.CharField()
    category = serializers.CharField()
    content = serializers.CharField()
    importance = serializers.FloatField()
    session_id = serializers.CharField(allow_null=True)
    raw_memory_id = serializers.UUIDField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class TranscriptItemSerializer(serializers.Serializer[Any]):
    raw_memory_id = serializers.UUIDField()
    session_id = serializers.CharField()
    user_id = serializers.CharField()
    status = serializers.CharField()
    attempts = serializers.IntegerField()
    last_error = serializers.CharField(allow_blank=True)
    queued_at = serializers.DateTimeField()
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    processed_at = serializers.DateTimeField(allow_null=True)
    processing_seconds = serializers.FloatField(allow_null=True)
    memories_created = serializers.IntegerField()
    size_bytes = serializers.IntegerField()
    metadata = serializers.JSONField()
    preview = serializers.CharField(required=False)


class HierarchyOutputSerializer(serializers.Serializer[Any]):
    vectorstore_name = serializers.CharField()
    memory_type = serializers.CharField()
    summaries = HierarchyMemorySerializer(many=True, required=False)
    discrete = HierarchyMemorySerializer(many=True, required=False)
    raw = TranscriptItemSerializer(many=True, required=False)
    count = serializers.IntegerField()


class SessionOutputSerializer(serializers.Serializer[Any]):
    session_id = serializers.CharField()
    vectorstore_name = serializers.CharField()
    user_id = serializers.CharField()
    status = serializers.ChoiceField(choices=["pending", "error", "processed", "empty"])
    summary = serializers.CharField(allow_blank=True)
    summary_embedded = serializers.BooleanField()
    summary_memory = HierarchyMemorySerializer(allow_null=True)
    metadata = serializers.JSONField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    memories = HierarchyMemorySerializer(many=True)
    transcripts = TranscriptItemSerializer(many=True)


class DailyStatsSerializer(serializers.Serializer[Any]):
    date = serializers.DateField()
    processed = serializers.IntegerField()
    retried = serializers.IntegerField()
    failed = serializers.IntegerField(help_text="transcripts given up on (status error)")
    memories_created = serializers.IntegerField()
    mean_processing_seconds = serializers.FloatField(allow_null=True)


class ProcessingStatusSerializer(serializers.Serializer[Any]):
    vectorstore_name = serializers.CharField()
    queue_size = serializers.IntegerField()
    processing = serializers.IntegerField()
    processed = serializers.IntegerField()
    failed = serializers.IntegerField(help_text="transcripts given up on (status error)")
    retry_pending = serializers.IntegerField(help_text="queued again after a failed attempt")
    counts = serializers.DictField(child=serializers.IntegerField())
    processor = serializers.DictField(help_text="heartbeat of the shared background processor")
    daily_stats = DailyStatsSerializer(many=True)


class CleanupOutputSerializer(serializers.Serializer[Any]):
    success = serializers.BooleanField()
    retention_days = serializers.IntegerField()
    session_retention_days = serializers.IntegerField()
    cutoff = serializers.DateTimeField(help_text="transcripts processed before it are deleted")
    session_cutoff = serializers.DateTimeField(help_text="sessions last updated before it are deleted")
    dry_run = serializers.BooleanField()
    transcripts_deleted = serializers.IntegerField(help_text="with dry_run: how many would be (and so below)")
    sessions_deleted = serializers.IntegerField()
    summaries_deleted = serializers.IntegerField(help_text="summary memories deleted with their sessions")
    memories_detached = serializers.IntegerField(help_text="other memories of those sessions: kept, session_id null")
    expired_memories_deleted = serializers.IntegerField()


# -- views -------------------------------------------------------------------------------------------


class StoreRawView(APIView):
    @extend_schema(
        operation_id="transcript_store_raw",
        parameters=[_VECTORSTORE],
        request=StoreRawSerializer,
        responses={202: StoreRawOutputSerializer, 409: ErrorSerializer},
    )
    def post(self, request: Request, vectorstore_name: str) -> Response:
        namespace = _namespace(vectorstore_name)
        data = StoreRawSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        try:
            transcript = ingest.transcript_store(
                account=caller(request).account,
                namespace=namespace,
                user_id=values["metadata"]["user_id"],
                session_data=values["session_data"],
                session_id=values.get("session_id"),
                metadata=values["metadata"],
            )
        except ingest.SessionConflict as error:
            return error_response(status.HTTP_409_CONFLICT, "conflict", str(error))
        position = ingest_selectors.queue_position(transcript=transcript)
        estimate = ingest_selectors.processing_estimate(position=position)
        body = {
            "success": True,
            "raw_memory_id": transcript.id,
            "session_id": transcript.session.external_id,
            "status": transcript.status,
            "queued_at": transcript.created_at,
            "queue_position": position,
            "estimated_processing_time": estimate.seconds,
            "estimate_basis": estimate.basis,
        }
        return Response(StoreRawOutputSerializer(body).data, status=status.HTTP_202_ACCEPTED)


class ProcessingStatusView(APIView):
    @extend_schema(
        operation_id="transcript_processing_status", parameters=[_VECTORSTORE], responses=ProcessingStatusSerializer
    )
    def get(self, request: Request, vectorstore_name: str) -> Response:
        namespace = _namespace(vectorstore_name)
        StrictSerializer(data=request.query_params).is_valid(raise_exception=True)
        body = ingest_selectors.processing_status(account=caller(request).account, namespace=namespace)
        return Response(ProcessingStatusSerializer(body).data)


class HierarchyView(APIView):
    @extend_schema(
        operation_id="transcript_hierarchy",
        parameters=[_VECTORSTORE, HierarchyQuerySerializer],
        responses=HierarchyOutputSerializer,
    )
    def get(self, request: Request, vectorstore_name: str) -> Response:
        namespace = _namespace(vectorstore_name)
        params = HierarchyQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        body = ingest_selectors.hierarchy(account=caller(request).account, namespace=namespace, query=params.to_query())
        return Response(HierarchyOutputSerializer(body).data)


class SessionView(APIView):
    @extend_schema(
        operation_id="transcript_session",
        parameters=[_VECTORSTORE, OpenApiParameter("session_id", str, OpenApiParameter.PATH)],
        responses=SessionOutputSerializer,
    )
    def get(self, request: Request, vectorstore_name: str, session_id: str) -> Response:
        namespace = _namespace(vectorstore_name)
        StrictSerializer(data=request.query_params).is_valid(raise_exception=True)
        # No session can have such an id (PostgreSQL would refuse even to compare it).
        if _bad_text(session_id) or len(session_id) > 255:
            raise NotFound("No such session.")
        try:
            body = ingest_selectors.session_detail(
                account=caller(request).account, namespace=namespace, session_id=session_id
            )
        except Session.DoesNotExist:
            raise NotFound("No such session.") from None
        return Response(SessionOutputSerializer(body).data)


class StatsView(APIView):
    @extend_schema(operation_id="transcript_stats", parameters=[_VECTORSTORE], responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request, vectorstore_name: str) -> Response:
        namespace = _namespace(vectorstore_name)
        StrictSerializer(data=request.query_params).is_valid(raise_exception=True)
        return Response(ingest_selectors.namespace_stats(account=caller(request).account, namespace=namespace))


class CleanupView(APIView):
    @extend_schema(
        operation_id="transcript_cleanup",
        request=CleanupSerializer,
        parameters=[_VECTORSTORE, CleanupSerializer],
        responses=CleanupOutputSerializer,
    )
    def post(self, request: Request, vectorstore_name: str) -> Response:
        namespace = _namespace(vectorstore_name)
        # The spec passes retention_days as a query parameter; a JSON body works too.
        if not isinstance(request.data, dict):
            raise serializers.ValidationError({"non_field_errors": ["Expected a JSON object."]})
        data = CleanupSerializer(data={**request.query_params.dict(), **request.data})
        data.is_valid(raise_exception=True)
        days = data.validated_data.get("retention_days", settings.INGEST["RETENTION_DAYS"])
        session_days = data.validated_data.get("session_retention_days", settings.INGEST["SESSION_RETENTION_DAYS"])
        result = retention_apply(
            retention_days=days,
            session_retention_days=session_days,
            account=caller(request).account,
            namespace=namespace,
            dry_run=data.validated_data["dry_run"],
        )
        answer = {
            **asdict(result),
            "success": True,
            "retention_days": days,
            "session_retention_days": session_days,
            "cutoff": result.transcript_cutoff,
        }
        return Response(CleanupOutputSerializer(answer).data)


urlpatterns = [
    path("store_raw", StoreRawView.as_view(), name="transcript-store-raw"),
    path("processing_status", ProcessingStatusView.as_view(), name="transcript-processing-status"),
    path("hierarchy", HierarchyView.as_view(), name="transcript-hierarchy"),
    path("session/<str:session_id>", SessionView.as_view(), name="transcript-session"),
    path("stats", StatsView.as_view(), name="transcript-stats"),
    path("cleanup", CleanupView.as_view(), name="transcript-cleanup"),
]
