"""Memory endpoints. Thin: an input serializer validates, a service or selector
acts, an output serializer answers. Every lookup is scoped to the caller's account."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from memories import selectors, services
from memories.api.auth import caller
from memories.api.errors import PayloadTooLarge, error_response
from memories.api.serializers import (
    BatchCreateSerializer,
    HistoryOutputSerializer,
    ListQuerySerializer,
    MemoryCreateSerializer,
    MemoryOutputSerializer,
    MemoryUpdateSerializer,
    SearchSerializer,
)
from memories.models import Memory


def _reject_query_params(request: Request) -> None:
    if request.query_params:
        raise serializers.ValidationError({name: ["Unknown query parameter."] for name in request.query_params})


def _get_memory(request: Request, memory_id: uuid.UUID) -> Memory:
    try:
        return selectors.memory_get(account=caller(request).account, memory_id=memory_id)
    except Memory.DoesNotExist:
        raise NotFound("No such memory.") from None


class MemoryCollectionView(APIView):
    @extend_schema(parameters=[ListQuerySerializer], responses=MemoryOutputSerializer(many=True))
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
        return Response(
            {"results": MemoryOutputSerializer(page.items, many=True).data, "next_cursor": page.next_cursor}
        )

    @extend_schema(request=MemoryCreateSerializer, responses={201: MemoryOutputSerializer, 200: MemoryOutputSerializer})
    def post(self, request: Request) -> Response:
        _reject_query_params(request)
        data = MemoryCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        who = caller(request)
        result = services.memory_create(account=who.account, item=data.to_input(), actor=who.actor)
        # 200 says "stored by updating one you already had" (same key, or a duplicate).
        return Response(
            MemoryOutputSerializer(result.memory).data,
            status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK,
        )


class MemoryBatchView(APIView):
    @extend_schema(request=BatchCreateSerializer)
    def post(self, request: Request) -> Response:
        _reject_query_params(request)
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
        results = services.memory_batch_create(
            account=who.account, items=[item.to_input() for item in items], actor=who.actor
        )
        return Response(
            {
                "created": sum(result.created for result in results),
                "updated": sum(not result.created for result in results),
                "results": [
                    {
                        "created": result.created,
                        "matched_by": result.matched_by or None,
                        "memory": MemoryOutputSerializer(result.memory).data,
                    }
                    for result in results
                ],
            },
            status=status.HTTP_201_CREATED,
        )


class MemoryDetailView(APIView):
    @extend_schema(responses=MemoryOutputSerializer)
    def get(self, request: Request, memory_id: uuid.UUID) -> Response:
        _reject_query_params(request)
        return Response(MemoryOutputSerializer(_get_memory(request, memory_id)).data)

    @extend_schema(request=MemoryUpdateSerializer, responses=MemoryOutputSerializer)
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

    def delete(self, request: Request, memory_id: uuid.UUID) -> Response:
        _reject_query_params(request)
        memory = _get_memory(request, memory_id)
        services.memory_delete(memory=memory, actor=caller(request).actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MemoryHistoryView(APIView):
    @extend_schema(responses=HistoryOutputSerializer(many=True))
    def get(self, request: Request, memory_id: uuid.UUID) -> Response:
        _reject_query_params(request)
        history = selectors.memory_history(account=caller(request).account, memory_id=memory_id)
        if not history:
            raise NotFound("No such memory.")
        return Response({"memory_id": str(memory_id), "history": HistoryOutputSerializer(history, many=True).data})


class RelevantView(APIView):
    """Relevance search: GET with query parameters or POST with a JSON body, same fields."""

    def _search(self, request: Request, data: Any) -> Response:
        params = SearchSerializer(data=data)
        params.is_valid(raise_exception=True)
        hits = selectors.memory_search(
            account=caller(request).account,
            filters=params.filters(),
            query=params.validated_data["query"],
            limit=params.validated_data["limit"],
            min_score=params.validated_data["min_score"],
        )
        return Response(
            {
                "query": params.validated_data["query"],
                "results": [
                    {
                        **MemoryOutputSerializer(hit.memory).data,
                        "score": hit.score.total,
                        "score_parts": hit.score.parts,
                    }
                    for hit in hits
                ],
            }
        )

    @extend_schema(parameters=[OpenApiParameter("query", str, required=True), SearchSerializer])
    def get(self, request: Request) -> Response:
        return self._search(request, request.query_params)

    @extend_schema(request=SearchSerializer)
    def post(self, request: Request) -> Response:
        _reject_query_params(request)
        return self._search(request, request.data)
