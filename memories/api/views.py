"""Memory endpoints. Thin: an input serializer validates, a service or selector
acts, an output serializer answers. Every lookup is scoped to the caller's account."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import NotFound
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from memories import selectors, services
from memories.access import record_access_later
from memories.api.auth import caller
from memories.api.errors import PayloadTooLarge, ServiceUnavailable, error_response
from memories.api.renderers import RenderedJSON
from memories.api.serializers import (
    AsyncBatchOutputSerializer,
    AsyncQuerySerializer,
    AsyncWriteOutputSerializer,
    BatchCreateSerializer,
    BatchOutputSerializer,
    CacheStatsSerializer,
    ErrorSerializer,
    HistoryPageSerializer,
    ListQuerySerializer,
    MemoryCreateSerializer,
    MemoryOutputSerializer,
    MemoryPageSerializer,
    MemoryUpdateSerializer,
    SearchOutputSerializer,
    SearchSerializer,
)
from memories.cache import CacheUnavailable, tiered_cache
from memories.models import Memory
from memories.records import memory_output


def _reject_query_params(request: Request) -> None:
    if request.query_params:
        raise serializers.ValidationError({name: ["Unknown query parameter."] for name in request.query_params})


_ASYNC_VALUES = {"true": True, "1": True, "false": False, "0": False}


def _async_requested(request: Request) -> bool:
    """The writes' one query parameter, `async`; any other is refused as unknown."""
    errors: dict[str, list[str]] = {
        name: ["Unknown query parameter."] for name in request.query_params if name != "async"
    }
    values = request.query_params.getlist("async")
    if len(values) > 1 or (values and values[0].lower() not in _ASYNC_VALUES):
        errors["async"] = ["Must be one of true, false, 1 or 0."]
    if errors:
        raise serializers.ValidationError(errors)
    return bool(values) and _ASYNC_VALUES[values[0].lower()]


def _get_memory(request: Request, memory_id: uuid.UUID) -> Memory:
    try:
        return selectors.memory_get(account=caller(request).account, memory_id=memory_id)
    except Memory.DoesNotExist:
        raise NotFound("No such memory.") from None


class MemoryCollectionView(APIView):
    @extend_schema(operation_id="memories_list", parameters=[ListQuerySerializer], responses=MemoryPageSerializer)
    def get(self, request: Request) -> Response:
        params = ListQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        try:
            page = selectors.memory_list(
                account=caller(request).account,
                filters=params.filters(),
                limit=params.validated_data["limit"],
                cursor=params.validated_data.get("cursor"),
            )
        except selectors.InvalidCursor as error:
            raise serializers.ValidationError({"cursor": [str(error)]}) from None
        record_access_later(memory_ids=page.ids)
        return Response({"results": RenderedJSON(page.results), "next_cursor": page.next_cursor})

    @extend_schema(
        operation_id="memory_create",
        parameters=[AsyncQuerySerializer],
        request=MemoryCreateSerializer,
        responses={201: MemoryOutputSerializer, 200: MemoryOutputSerializer, 202: AsyncWriteOutputSerializer},
    )
    def post(self, request: Request) -> Response:
        run_async = _async_requested(request)
        data = MemoryCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        who = caller(request)
        if run_async:
            (pending,) = services.memory_batch_create_pending(
                account=who.account, items=[data.to_input()], actor=who.actor
            )
            return Response(AsyncWriteOutputSerializer(pending).data, status=status.HTTP_202_ACCEPTED)
        result = services.memory_create(account=who.account, item=data.to_input(), actor=who.actor)
        # 200 says "stored by updating one you already had" (same key, or a duplicate).
        return Response(
            MemoryOutputSerializer(result.memory).data,
            status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK,
        )


class MemoryBatchView(APIView):
    @extend_schema(
        operation_id="memories_batch_create",
        parameters=[AsyncQuerySerializer],
        request=BatchCreateSerializer,
        responses={
            201: BatchOutputSerializer,
            202: AsyncBatchOutputSerializer,
            400: ErrorSerializer,
            413: ErrorSerializer,
        },
    )
    def post(self, request: Request) -> Response:
        run_async = _async_requested(request)
        envelope = BatchCreateSerializer(data=request.data)
        envelope.is_valid(raise_exception=True)
        raw_items = envelope.validated_data["memories"]
        limit = settings.MEMORY["MAX_BATCH_ITEMS"]
        if len(raw_items) > limit:
            raise PayloadTooLarge(f"A batch holds at most {limit} memories; this one has {len(raw_items)}.")
        items = [MemoryCreateSerializer(data=raw) for raw in raw_items]
        errors = {str(index): item.errors for index, item in enumerate(items) if not item.is_valid()}
        if errors:
            return error_response(
                status.HTTP_400_BAD_REQUEST,
                "invalid",
                f"{len(errors)} of {len(items)} memories are invalid; nothing was stored.",
                {"memories": errors},
            )
        who = caller(request)
        if run_async:
            pending = services.memory_batch_create_pending(
                account=who.account, items=[item.to_input() for item in items], actor=who.actor
            )
            return Response(AsyncBatchOutputSerializer.from_results(pending), status=status.HTTP_202_ACCEPTED)
        results = services.memory_batch_create(
            account=who.account, items=[item.to_input() for item in items], actor=who.actor
        )
        body = {
            "created": sum(result.created for result in results),
            "updated": sum(not result.created for result in results),
            "results": [
                {"created": result.created, "matched_by": result.matched_by or None, "memory": result.memory}
                for result in results
            ],
        }
        return Response(BatchOutputSerializer(body).data, status=status.HTTP_201_CREATED)


class MemoryDetailView(APIView):
    @extend_schema(operation_id="memory_get", responses=MemoryOutputSerializer)
    def get(self, request: Request, memory_id: uuid.UUID) -> Response:
        _reject_query_params(request)
        try:
            record = selectors.memory_get_record(account=caller(request).account, memory_id=memory_id)
        except Memory.DoesNotExist:
            raise NotFound("No such memory.") from None
        record_access_later(memory_ids=[record["id"]])
        return Response(memory_output(record))

    @extend_schema(
        operation_id="memory_update",
        request=MemoryUpdateSerializer,
        responses={200: MemoryOutputSerializer, 409: ErrorSerializer},
    )
    def patch(self, request: Request, memory_id: uuid.UUID) -> Response:
        _reject_query_params(request)
        memory = _get_memory(request, memory_id)
        data = MemoryUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        who = caller(request)
        try:
            updated = services.memory_update(memory=memory, changes=data.validated_data, actor=who.actor)
        except services.KeyConflict as error:
            return error_response(status.HTTP_409_CONFLICT, "conflict", str(error))
        return Response(MemoryOutputSerializer(updated).data)

    @extend_schema(operation_id="memory_delete", responses={204: None, 404: ErrorSerializer})
    def delete(self, request: Request, memory_id: uuid.UUID) -> Response:
        _reject_query_params(request)
        memory = _get_memory(request, memory_id)
        services.memory_delete(memory=memory, actor=caller(request).actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MemoryHistoryView(APIView):
    @extend_schema(operation_id="memory_history", responses={200: HistoryPageSerializer, 404: ErrorSerializer})
    def get(self, request: Request, memory_id: uuid.UUID) -> Response:
        _reject_query_params(request)
        history = selectors.memory_history(account=caller(request).account, memory_id=memory_id)
        if not history:
            raise NotFound("No such memory.")
        return Response(HistoryPageSerializer({"memory_id": memory_id, "history": history}).data)


class RelevantView(APIView):
    """Relevance search: GET with query parameters or POST with a JSON body, same fields."""

    def _search(self, request: Request, data: Any) -> Response:
        params = SearchSerializer(data=data)
        params.is_valid(raise_exception=True)
        found = selectors.memory_search(
            account=caller(request).account,
            filters=params.filters(),
            query=params.validated_data["query"],
            limit=params.validated_data["limit"],
            min_score=params.validated_data["min_score"],
        )
        record_access_later(memory_ids=[hit.record["id"] for hit in found.hits])
        return Response(
            SearchOutputSerializer(
                {"query": params.validated_data["query"], "mode": found.mode, "results": found.hits}
            ).data
        )

    @extend_schema(
        operation_id="memories_relevant",
        parameters=[SearchSerializer],
        responses={200: SearchOutputSerializer, 400: ErrorSerializer},
    )
    def get(self, request: Request) -> Response:
        return self._search(request, request.query_params)

    @extend_schema(
        operation_id="memories_relevant_post",
        request=SearchSerializer,
        responses={200: SearchOutputSerializer, 400: ErrorSerializer},
    )
    def post(self, request: Request) -> Response:
        _reject_query_params(request)
        return self._search(request, request.data)


class CacheStatsView(APIView):
    """Service-wide cache numbers (every process's hits and misses, added up in Redis)."""

    @extend_schema(operation_id="cache_stats", responses={200: CacheStatsSerializer, 503: ErrorSerializer})
    def get(self, request: Request) -> Response:
        _reject_query_params(request)
        try:
            stats = tiered_cache().stats()
        except CacheUnavailable:
            raise ServiceUnavailable("Redis is unavailable: reads are served from PostgreSQL meanwhile.") from None
        return Response(stats)


class CacheClearView(APIView):
    """Empty both tiers. Staff only (a logged-in admin session): it slows every tenant down for a while."""

    authentication_classes = [SessionAuthentication]
    permission_classes = [IsAdminUser]

    @extend_schema(
        operation_id="cache_clear", request=None, responses={204: None, 403: ErrorSerializer, 503: ErrorSerializer}
    )
    def post(self, request: Request) -> Response:
        _reject_query_params(request)
        try:
            tiered_cache().clear()
        except CacheUnavailable:
            raise ServiceUnavailable("Redis is unavailable; nothing to clear there.") from None
        return Response(status=status.HTTP_204_NO_CONTENT)
