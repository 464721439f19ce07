"""Input serializers validate (and reject anything unknown); output serializers answer."""

from __future__ import annotations

import functools
import json
import math
from datetime import timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.utils import timezone
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field, inline_serializer
from rest_framework import serializers

from memories.models import Memory, MemoryHistory, MemoryKind
from memories.records import memory_output, memory_to_record
from memories.selectors import MemoryFilters, SearchHit
from memories.services import MemoryInput, WriteResult

F = TypeVar("F", bound=serializers.Field[Any, Any, Any, Any])

NAMESPACE_PATTERN = r"^[A-Za-z0-9_.\-]{1,100}$"
KIND_FILTER_CHOICES = [*MemoryKind.values, "discrete"]


def _limits() -> dict[str, Any]:
    return dict(settings.MEMORY)


def _unbound_copy(field: F) -> F:
    """A declared field's copy for one serializer instance.

    DRF deep-copies every declared field for each instance, which re-runs the
    field's __init__ (~8 us a field: 70-200 us a request, 20 ms for a batch of
    100 memories). The fields declared here keep nothing of a request: what
    an instance changes, bind() sets on the copy; what they share (validators,
    choices, a ListField's child) is only read while validating.
    """
    copied = object.__new__(type(field))
    copied.__dict__.update(field.__dict__)
    return copied


class StrictSerializer(serializers.Serializer[Any]):
    """Rejects fields it does not know: a typo must not be silently ignored."""

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        return {name: _unbound_copy(field) for name, field in self._declared_fields.items()}

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                {"non_field_errors": [f"Expected a JSON object, got {type(data).__name__}."]}
            )
        errors: dict[str, list[str]] = {name: ["Unknown field."] for name in sorted(set(data) - set(self.fields))}
        # DRF's CharField turns 42 into "42"; a client sending a number where text belongs has a bug to hear about.
        for name, value in data.items():
            field = self.fields.get(name)
            is_text = type(field) in (serializers.CharField, serializers.RegexField)
            if is_text and value is not None and not isinstance(value, str):
                errors[name] = ["Must be a string."]
        if errors:
            raise serializers.ValidationError(errors)
        return super().to_internal_value(data)


class StrictSerializerScheme(OpenApiSerializerExtension):  # type: ignore[no-untyped-call]
    """Tells the OpenAPI schema what StrictSerializer enforces: no field it does not know."""

    target_class = StrictSerializer
    match_subclasses = True

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema: dict[str, Any] = auto_schema._map_basic_serializer(self.target, direction)
        schema["additionalProperties"] = False
        return schema


def _bad_text(text: str) -> str | None:
    """What PostgreSQL would refuse in a jsonb string: NUL, or a lone UTF-16 surrogate."""
    if "\x00" in text:
        return "NUL characters"
    if any("\ud800" <= char <= "\udfff" for char in text):
        return "unpaired surrogate characters"
    return None


# The integers orjson writes: signed and unsigned 64-bit.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def _check_json_value(value: Any, path: str = "metadata") -> None:
    """PostgreSQL's jsonb refuses NUL characters, lone surrogates and non-finite numbers: catch them here as a 400.

    Nesting is bounded too (MEMORY_MAX_METADATA_DEPTH): orjson, which writes
    cache entries and cache keys, refuses more than 255 levels, and this very
    check would run out of Python's stack long before PostgreSQL's limit."""
    _check_json_levels(value, path, _limits()["MAX_METADATA_DEPTH"])


def _check_json_levels(value: Any, path: str, levels_left: int) -> None:
    if isinstance(value, dict | list) and levels_left <= 0:
        limit = _limits()["MAX_METADATA_DEPTH"]
        raise serializers.ValidationError(f"metadata: objects and arrays nest at most {limit} levels deep.")
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _bad_text(key)
            if problem:
                raise serializers.ValidationError(f"{path}: keys cannot contain {problem}.")
            _check_json_levels(item, f"{path}.{key}", levels_left - 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_levels(item, f"{path}[{index}]", levels_left - 1)
    elif isinstance(value, str) and _bad_text(value):
        raise serializers.ValidationError(f"{path}: strings cannot contain {_bad_text(value)}.")
    elif isinstance(value, float) and not math.isfinite(value):
        raise serializers.ValidationError(f"{path}: numbers must be finite.")
    elif isinstance(value, int) and not _INT_MIN <= value <= _INT_MAX:
        # orjson, which writes cache entries and cache keys, refuses integers beyond 64 bits.
        raise serializers.ValidationError(f"{path}: integers must fit in 64 bits.")


def _check_metadata_size(value: dict[str, Any]) -> None:
    limit = _limits()["MAX_METADATA_BYTES"]
    if len(json.dumps(value, separators=(",", ":")).encode()) > limit:
        raise serializers.ValidationError(f"Must be at most {limit} bytes as JSON.")


@extend_schema_field(OpenApiTypes.OBJECT)  # not any JSON: only an object is accepted
class MetadataField(serializers.JSONField):
    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        _check_json_value(value)
        _check_metadata_size(value)
        return value


class FiniteFloatField(serializers.FloatField):
    def to_internal_value(self, data: Any) -> float:
        value = super().to_internal_value(data)
        if not math.isfinite(value):
            raise serializers.ValidationError("Must be a finite number.")
        return value


class MemoryFieldsSerializer(StrictSerializer):
    """The fields of a memory a client writes (create and PATCH)."""

    kind = serializers.ChoiceField(choices=MemoryKind.choices, default=MemoryKind.FACT)
    category = serializers.CharField(max_length=100, allow_blank=True, default="")
    key = serializers.CharField(max_length=255, allow_null=True, default=None)
    metadata = MetadataField(default=dict)
    importance = FiniteFloatField(min_value=0.0, max_value=1.0, default=0.5)
    pinned = serializers.BooleanField(default=False)
    expires_at = serializers.DateTimeField(allow_null=True, default=None)
    ttl_seconds = serializers.IntegerField(min_value=1, max_value=10 * 365 * 86_400, required=False)

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        # Chosen per instance so that limits changed in settings apply at once.
        fields = super().get_fields()
        limits = _limits()
        content, tags = _limited_fields(limits["MAX_CONTENT_CHARS"], limits["MAX_TAG_CHARS"], limits["MAX_TAGS"])
        fields["content"] = _unbound_copy(content)
        fields["tags"] = _unbound_copy(tags)
        return fields

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        ttl = attrs.pop("ttl_seconds", None)
        if ttl is not None:
            if attrs.get("expires_at") is not None:
                raise serializers.ValidationError("Give expires_at or ttl_seconds, not both.")
            attrs["expires_at"] = timezone.now() + timedelta(seconds=ttl)
        elif attrs.get("expires_at") is not None and attrs["expires_at"] <= timezone.now():
            raise serializers.ValidationError({"expires_at": ["Must be in the future."]})
        if "tags" in attrs:
            attrs["tags"] = list(dict.fromkeys(attrs["tags"]))
        if attrs.get("key") is not None and not attrs["key"]:
            raise serializers.ValidationError({"key": ["Must not be blank; omit it or send null."]})
        return attrs


@functools.lru_cache(maxsize=8)
def _limited_fields(
    content_chars: int, tag_chars: int, tags: int
) -> tuple[serializers.CharField, serializers.ListField]:
    return (
        serializers.CharField(max_length=content_chars),
        serializers.ListField(child=serializers.CharField(max_length=tag_chars), max_length=tags, default=list),
    )


class MemoryCreateSerializer(MemoryFieldsSerializer):
    user_id = serializers.CharField(max_length=255)
    namespace = serializers.RegexField(NAMESPACE_PATTERN, default="default")

    def to_input(self) -> MemoryInput:
        data = dict(self.validated_data)
        return MemoryInput(**data)


class MemoryUpdateSerializer(MemoryFieldsSerializer):
    """PATCH: only the fields sent change; user_id and namespace are fixed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["partial"] = True
        super().__init__(*args, **kwargs)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        if not attrs and "ttl_seconds" not in self.initial_data:
            raise serializers.ValidationError("Send at least one field to change.")
        return attrs


# Items are validated one by one (to report errors by index): the schema says what each must be.
@extend_schema_field({"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/MemoryCreate"}})
class BatchItemsField(serializers.ListField):
    """A batch's memories: any JSON each, checked one by one by MemoryCreateSerializer."""


class BatchCreateSerializer(StrictSerializer):
    memories = BatchItemsField(child=serializers.JSONField(), allow_empty=False)


class CommaListField(serializers.CharField):
    """`a,b,c` in a query string."""

    def to_internal_value(self, data: Any) -> list[str]:  # type: ignore[override]
        # A JSON body may send a real list; a query string sends `a,b`.
        items = data if isinstance(data, list) else super().to_internal_value(data).split(",")
        if not all(isinstance(item, str) for item in items):
            raise serializers.ValidationError("Must be a list of strings.")
        return [item.strip() for item in items if item.strip()]


_KINDS = "|".join(KIND_FILTER_CHOICES)


@extend_schema_field({"type": "string", "pattern": f"^({_KINDS})(,({_KINDS}))*$", "example": "fact,preference"})
class KindListField(CommaListField):
    def to_internal_value(self, data: Any) -> list[str]:  # type: ignore[override]
        kinds = super().to_internal_value(data)
        unknown = [kind for kind in kinds if kind not in KIND_FILTER_CHOICES]
        if unknown:
            raise serializers.ValidationError(f"Unknown kind {unknown[0]!r}; use one of {KIND_FILTER_CHOICES}.")
        return kinds


class MetadataQueryField(serializers.CharField):
    """A JSON object in a query string (or an object in a JSON body): metadata containment.

    Nothing in it is syntax: it is one jsonb value, and the filter is
    PostgreSQL's `metadata @> value` (Django's `metadata__contains`, which takes
    the object whole). A key like `a__b`, `$.a` or `a->b` is that very key, and
    a nested object or array is contained as jsonb containment says. Bounded
    like stored metadata: no larger, no deeper.
    """

    def to_internal_value(self, data: Any) -> dict[str, Any]:  # type: ignore[override]
        if isinstance(data, dict):
            value: Any = data
        elif not isinstance(data, str):
            raise serializers.ValidationError("Must be a JSON object.")
        else:
            try:
                value = json.loads(super().to_internal_value(data))
            except ValueError:
                raise serializers.ValidationError('Must be a JSON object, e.g. {"topic": "travel"}.') from None
            except RecursionError:
                limit = _limits()["MAX_METADATA_DEPTH"]
                raise serializers.ValidationError(
                    f"metadata: objects and arrays nest at most {limit} levels deep."
                ) from None
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        _check_json_value(value)
        _check_metadata_size(value)
        return value


class FilterSerializer(StrictSerializer):
    user_id = serializers.CharField(max_length=255)
    namespace = serializers.RegexField(NAMESPACE_PATTERN, default="default")
    kind = KindListField(required=False)
    category = serializers.CharField(max_length=100, required=False, allow_blank=True)
    tags = CommaListField(required=False)
    tags_all = CommaListField(required=False)
    metadata = MetadataQueryField(required=False)
    pinned = serializers.BooleanField(required=False, allow_null=True, default=None)
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)

    def to_internal_value(self, data: Any) -> Any:
        # Query strings arrive as a QueryDict: one value per name, a repeated name is a mistake.
        if hasattr(data, "lists"):
            repeated = [name for name, values in data.lists() if len(values) > 1]
            if repeated:
                raise serializers.ValidationError({name: ["Give this parameter once."] for name in repeated})
            data = data.dict()
        return super().to_internal_value(data)

    def filters(self) -> MemoryFilters:
        data = self.validated_data
        return MemoryFilters(
            user_id=data["user_id"],
            namespace=data["namespace"],
            kinds=data.get("kind", []),
            category=data.get("category"),
            tags_any=data.get("tags", []),
            tags_all=data.get("tags_all", []),
            metadata=data.get("metadata", {}),
            pinned=data.get("pinned"),
            since=data.get("since"),
            until=data.get("until"),
        )


class ListQuerySerializer(FilterSerializer):
    cursor = serializers.CharField(max_length=500, required=False)

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        fields = super().get_fields()
        limits = _limits()
        fields["limit"] = _unbound_copy(_page_limit_field(limits["MAX_PAGE_SIZE"], limits["DEFAULT_PAGE_SIZE"]))
        return fields


@functools.lru_cache(maxsize=8)
def _page_limit_field(maximum: int, default: int) -> serializers.IntegerField:
    return serializers.IntegerField(min_value=1, max_value=maximum, default=default)


class SearchSerializer(FilterSerializer):
    query = serializers.CharField(max_length=2_000)
    limit = serializers.IntegerField(min_value=1, max_value=1_000, default=10)
    min_score = FiniteFloatField(min_value=0.0, max_value=1.0, default=0.0)


class EmbeddingInfoSerializer(serializers.Serializer[Any]):
    model = serializers.CharField()
    dimensions = serializers.IntegerField()


@extend_schema_field(EmbeddingInfoSerializer(allow_null=True))
class EmbeddingInfoField(serializers.Field[Any, Any, Any, Any]):
    def __init__(self) -> None:
        super().__init__(source="*", read_only=True)

    def to_representation(self, memory: Memory) -> dict[str, Any] | None:
        info: dict[str, Any] | None = memory_output(memory_to_record(memory))["embedding"]
        return info


class MemoryOutputSerializer(serializers.ModelSerializer[Memory]):
    session_id = serializers.UUIDField(allow_null=True, read_only=True)
    embedding = EmbeddingInfoField()

    class Meta:
        model = Memory
        fields = [
            "id",
            "user_id",
            "namespace",
            "session_id",
            "kind",
            "category",
            "key",
            "content",
            "tags",
            "metadata",
            "importance",
            "pinned",
            "access_count",
            "last_accessed_at",
            "created_at",
            "updated_at",
            "expires_at",
            "embedding",
        ]
        read_only_fields = fields

    def to_representation(self, instance: Memory) -> dict[str, Any]:
        # The generic path builds and walks 18 field objects (~1.6 ms for the
        # first memory, ~0.12 ms for each next): more than a cached read costs
        # otherwise. The same output, written out; a test compares the two.
        return memory_output(memory_to_record(instance))


class HistoryOutputSerializer(serializers.ModelSerializer[MemoryHistory]):
    class Meta:
        model = MemoryHistory
        fields = ["action", "actor", "old_content", "new_content", "changes", "created_at"]
        read_only_fields = fields


class MemoryPageSerializer(serializers.Serializer[Any]):
    results = MemoryOutputSerializer(many=True)
    next_cursor = serializers.CharField(
        allow_null=True, help_text="Pass as `cursor` for the next page; null at the end."
    )


class BatchResultSerializer(serializers.Serializer[Any]):
    created = serializers.BooleanField(help_text="False when the item updated an existing memory.")
    matched_by = serializers.ChoiceField(choices=["key", "duplicate"], allow_null=True)
    memory = MemoryOutputSerializer()


class BatchOutputSerializer(serializers.Serializer[Any]):
    created = serializers.IntegerField()
    updated = serializers.IntegerField()
    results = BatchResultSerializer(many=True, help_text="In the order of the request's items.")


class AsyncQuerySerializer(serializers.Serializer[Any]):
    """The writes' query parameter (for the schema; the view parses it)."""

    # `async` is a keyword: the field is declared under another name and renamed.
    async_ = serializers.BooleanField(
        required=False,
        default=False,
        help_text="true: answer 202 once the rows are stored, and embed them in the background.",
    )

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        fields = super().get_fields()
        fields["async"] = fields.pop("async_")
        return fields


def _embedding_status(memory: Memory) -> str:
    return "pending" if memory.embedding is None else "embedded"


class AsyncWriteOutputSerializer(serializers.Serializer[Any]):
    """A fire-and-forget write's answer: the memory is stored; its vector may not be yet."""

    id = serializers.UUIDField(source="memory.id")
    status = serializers.ChoiceField(
        choices=["pending", "embedded"],
        help_text="pending: stored, readable and found by keyword; found by similarity once embedded.",
    )
    created = serializers.BooleanField(help_text="False when it updated an existing memory (same key or content).")
    matched_by = serializers.ChoiceField(choices=["key", "duplicate"], allow_null=True)

    def to_representation(self, instance: WriteResult) -> dict[str, Any]:
        return {
            "id": str(instance.memory.id),
            "status": _embedding_status(instance.memory),
            "created": instance.created,
            "matched_by": instance.matched_by or None,
        }


class AsyncBatchOutputSerializer(serializers.Serializer[Any]):
    ids = serializers.ListField(
        child=serializers.UUIDField(),
        help_text="In the order of the request's items; an item that updated a memory has that memory's id.",
    )
    created = serializers.IntegerField()
    updated = serializers.IntegerField()
    pending = serializers.IntegerField(help_text="Memories of this batch waiting for their vector.")

    @staticmethod
    def from_results(results: list[WriteResult]) -> dict[str, Any]:
        return {
            "ids": [str(result.memory.id) for result in results],
            "created": sum(result.created for result in results),
            "updated": sum(not result.created for result in results),
            "pending": len({result.memory.id for result in results if result.memory.embedding is None}),
        }


class ScorePartsSerializer(serializers.Serializer[Any]):
    similarity = serializers.FloatField()
    keyword = serializers.FloatField()
    recency = serializers.FloatField()
    importance = serializers.FloatField()
    frequency = serializers.FloatField()
    pinned = serializers.FloatField()


class SearchHitSerializer(MemoryOutputSerializer):
    """A memory with its relevance: the total and the parts it is blended from."""

    score = serializers.FloatField(read_only=True)
    score_parts = ScorePartsSerializer(read_only=True)

    class Meta(MemoryOutputSerializer.Meta):
        fields = [*MemoryOutputSerializer.Meta.fields, "score", "score_parts"]
        read_only_fields = fields

    def to_representation(self, instance: SearchHit) -> dict[str, Any]:  # type: ignore[override]
        return {**memory_output(instance.record), "score": instance.score.total, "score_parts": instance.score.parts}


class SearchOutputSerializer(serializers.Serializer[Any]):
    query = serializers.CharField()
    mode = serializers.ChoiceField(
        choices=["hybrid", "keyword"],
        help_text="hybrid: vector similarity and keyword match blended. keyword: the embedding provider is"
        " unavailable, so these results come from keyword match alone (similarity 0); a later search"
        " will have vectors again.",
    )
    results = SearchHitSerializer(many=True)


class HistoryPageSerializer(serializers.Serializer[Any]):
    memory_id = serializers.UUIDField()
    history = HistoryOutputSerializer(many=True)


class ErrorSerializer(serializers.Serializer[Any]):
    # Built inline: a field called `fields` cannot be declared on a serializer class.
    error = inline_serializer(
        name="ErrorDetail",
        fields={
            "code": serializers.CharField(),
            "message": serializers.CharField(),
            "fields": serializers.DictField(
                required=False, help_text="Per-field messages; for a batch, by item index."
            ),
        },
    )


class CacheTierSerializer(serializers.Serializer[Any]):
    hits = serializers.IntegerField()
    misses = serializers.IntegerField()
    hit_rate = serializers.FloatField(allow_null=True)
    entries = serializers.IntegerField(help_text="L1: this process's; L2: all of Redis.")
    bytes = serializers.IntegerField()


class CacheTypeSerializer(serializers.Serializer[Any]):
    tiers = serializers.DictField(child=CacheTierSerializer(), help_text="l1 and l2")
    invalidations = serializers.IntegerField()


class CacheStatsSerializer(serializers.Serializer[Any]):
    types = serializers.DictField(child=CacheTypeSerializer(), help_text="memory, list, search, embedding, auth")
    user_invalidations = serializers.IntegerField(help_text="Generation tokens replaced by writes.")
    redis = serializers.ChoiceField(choices=["ok", "open"], help_text="open: the circuit breaker bypasses Redis.")
