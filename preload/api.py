"""The preload endpoints: trigger a run, see runs, read and change configuration.

Every one is scoped to the caller's account: a run or a configuration of
another account is never shown or changed.
"""

from __future__ import annotations

from typing import Any

import orjson
from django.db.models import Q
from django.urls import path
from django_q.tasks import async_task
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from memories.api.auth import caller
from memories.api.errors import ServiceUnavailable
from memories.api.serializers import NAMESPACE_PATTERN, StrictSerializer
from memories.cache import CacheUnavailable, tiered_cache
from preload.config import account_config, resolve_config
from preload.engine import strategy_key
from preload.models import PreloadConfig, PreloadRun, RunStatus, RunTrigger
from preload.options import OPTIONS, USER_STRATEGIES, Scope, validate_options
from preload.runs import run_create

MAX_TRIGGER_USERS = 1_000


class TriggerSerializer(StrictSerializer):
    user_id = serializers.CharField(max_length=255, required=False)
    user_ids = serializers.ListField(
        child=serializers.CharField(max_length=255), max_length=MAX_TRIGGER_USERS, required=False, allow_empty=False
    )
    all = serializers.BooleanField(default=False, help_text="every user of your account with memories")
    namespace = serializers.RegexField(NAMESPACE_PATTERN, required=False)
    strategies = serializers.ListField(
        child=serializers.ChoiceField(choices=[str(s) for s in USER_STRATEGIES]), required=False
    )
    dry_run = serializers.BooleanField(default=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        given = [name for name in ("user_id", "user_ids") if name in attrs] + (["all"] if attrs["all"] else [])
        if len(given) != 1:
            raise serializers.ValidationError("Give exactly one of user_id, user_ids or all=true.")
        return attrs


class RunSerializer(serializers.ModelSerializer[PreloadRun]):
    duration_seconds = serializers.SerializerMethodField()
    covers = serializers.SerializerMethodField(
        help_text="account: your account's run; service: a run over every account"
    )

    class Meta:
        model = PreloadRun
        fields = [
            "id",
            "trigger",
            "status",
            "namespace",
            "requested_users",
            "requested_strategies",
            "dry_run",
            "started_at",
            "finished_at",
            "heartbeat_at",
            "users_total",
            "users_done",
            "memories",
            "bytes",
            "error_count",
            "errors",
            "duration_seconds",
            "covers",
        ]
        read_only_fields = fields

    def get_covers(self, run: PreloadRun) -> str:
        return "service" if run.account_id is None else "account"

    def get_duration_seconds(self, run: PreloadRun) -> float | None:
        duration = run.duration
        return None if duration is None else round(duration.total_seconds(), 3)


class TriggerView(APIView):
    @extend_schema(operation_id="preload_trigger", request=TriggerSerializer, responses={202: RunSerializer})
    def post(self, request: Request) -> Response:
        data = TriggerSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        users = [values["user_id"]] if "user_id" in values else values.get("user_ids", [])
        run = run_create(
            trigger=RunTrigger.API,
            account=caller(request).account,
            namespace=values.get("namespace"),
            requested_users=users,
            strategies=values.get("strategies"),
            dry_run=values["dry_run"],
        )
        # The queue carries the id; the row is the truth (and the status).
        async_task("preload.tasks.execute_preload_run", str(run.id), task_name=f"preload-{run.id}")
        return Response(RunSerializer(run).data, status=status.HTTP_202_ACCEPTED)


class StatusQuerySerializer(StrictSerializer):
    user_id = serializers.CharField(max_length=255, required=False)
    namespace = serializers.RegexField(NAMESPACE_PATTERN, default="default")


class StrategyKeySerializer(serializers.Serializer[Any]):
    memories = serializers.IntegerField()
    ttl_seconds = serializers.IntegerField()


class UserStatusSerializer(serializers.Serializer[Any]):
    user_id = serializers.CharField()
    namespace = serializers.CharField()
    strategies = serializers.DictField(child=StrategyKeySerializer())


class HitRateSerializer(serializers.Serializer[Any]):
    hits = serializers.IntegerField()
    misses = serializers.IntegerField()
    hit_rate = serializers.FloatField(allow_null=True)


class StatusSerializer(serializers.Serializer[Any]):
    current = RunSerializer(many=True)
    hit_rate = HitRateSerializer(
        allow_null=True, help_text="service-wide: of reads by id of preloaded users, how many a preloaded entry served"
    )
    last = RunSerializer(many=True, help_text="the last 10 finished runs")
    user = UserStatusSerializer(required=False, help_text="with user_id: the user's preload keys now")


class ConfigSerializer(serializers.Serializer[Any]):
    scope = serializers.ChoiceField(choices=["account", "user"])
    set = serializers.DictField(help_text="options set at this scope")
    effective = serializers.DictField(help_text="every option as it applies after inheritance")
    origins = serializers.DictField(help_text="where each effective value comes from: user, account, global, default")
    options = serializers.ListField(child=serializers.CharField())


class StatusView(APIView):
    @extend_schema(operation_id="preload_status", parameters=[StatusQuerySerializer], responses=StatusSerializer)
    def get(self, request: Request) -> Response:
        params = StatusQuerySerializer(data=request.query_params.dict())
        params.is_valid(raise_exception=True)
        account = caller(request).account
        # Runs for every account (start-up, schedule) covered this one too.
        runs = PreloadRun.objects.filter(Q(account=account) | Q(account__isnull=True))
        body: dict[str, Any] = {
            "current": RunSerializer(
                runs.filter(status=RunStatus.RUNNING).order_by("-started_at")[:10], many=True
            ).data,
            "last": RunSerializer(runs.exclude(status=RunStatus.RUNNING).order_by("-started_at")[:10], many=True).data,
        }
        try:
            body["hit_rate"] = tiered_cache().preload_hit_rate()
        except CacheUnavailable:
            body["hit_rate"] = None
        if "user_id" in params.validated_data:
            body["user"] = _user_status(
                account.id, params.validated_data["namespace"], params.validated_data["user_id"]
            )
        return Response(body)


def _user_status(account_id: int, namespace: str, user_id: str) -> dict[str, Any]:
    """How many memories each strategy key of the user holds now, and for how long still."""
    keys = {
        str(strategy): strategy_key(account_id=account_id, namespace=namespace, user_id=user_id, strategy=strategy)
        for strategy in USER_STRATEGIES
    }
    try:
        with tiered_cache().guarded("preload") as redis:
            pipeline = redis.pipeline(transaction=False)
            for key in keys.values():
                pipeline.get(key)
                pipeline.ttl(key)
            answers = pipeline.execute()
    except CacheUnavailable:
        raise ServiceUnavailable("Redis is unavailable: preload keys cannot be read now.") from None
    strategies = {}
    for index, name in enumerate(keys):
        raw, ttl = answers[index * 2], answers[index * 2 + 1]
        strategies[name] = {"memories": len(orjson.loads(raw)) if raw else 0, "ttl_seconds": max(int(ttl), 0)}
    return {"user_id": user_id, "namespace": namespace, "strategies": strategies}


class ConfigQuerySerializer(StrictSerializer):
    user_id = serializers.CharField(max_length=255, required=False, help_text="a user's own configuration")
    namespace = serializers.RegexField(NAMESPACE_PATTERN, default="default")


class ConfigWriteSerializer(ConfigQuerySerializer):
    options = serializers.DictField(help_text="option: value; null returns an option to its inherited value")


class ConfigView(APIView):
    """Your account's preload configuration, or one user's (with user_id): what is set
    at that scope, what applies after inheritance, and where each value comes from."""

    @extend_schema(operation_id="preload_config", parameters=[ConfigQuerySerializer], responses=ConfigSerializer)
    def get(self, request: Request) -> Response:
        params = ConfigQuerySerializer(data=request.query_params.dict())
        params.is_valid(raise_exception=True)
        return Response(_config_body(caller(request).account.id, params.validated_data))

    @extend_schema(operation_id="preload_config_update", request=ConfigWriteSerializer, responses=ConfigSerializer)
    def post(self, request: Request) -> Response:
        data = ConfigWriteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        scope = Scope.USER if "user_id" in values else Scope.ACCOUNT
        errors = validate_options(values["options"], scope=scope)
        if errors:
            raise serializers.ValidationError({"options": errors})
        account_id = caller(request).account.id
        key = {"account_id": account_id, "namespace": None, "user_id": None}
        if scope == Scope.USER:
            key.update(namespace=values["namespace"], user_id=values["user_id"])
        row = PreloadConfig.objects.filter(**key).first() or PreloadConfig(**key)
        for name, value in values["options"].items():
            setattr(row, name, value)
        row.full_clean()
        row.save()
        return Response(_config_body(account_id, values))


def _config_body(account_id: int, values: dict[str, Any]) -> dict[str, Any]:
    if "user_id" in values:
        key = {"account_id": account_id, "namespace": values["namespace"], "user_id": values["user_id"]}
        effective = resolve_config(account_id=account_id, namespace=values["namespace"], user_id=values["user_id"])
    else:
        key = {"account_id": account_id, "namespace": None, "user_id": None}
        effective = account_config(account_id=account_id)
    row = PreloadConfig.objects.filter(**key).first()
    set_here = {name: value for name, value in (row.option_values() if row else {}).items() if value is not None}
    return {
        "scope": "user" if "user_id" in values else "account",
        "set": set_here,
        "effective": effective.as_dict(),
        "origins": dict(effective.origins),
        "options": sorted(OPTIONS),
    }


urlpatterns = [
    path("trigger", TriggerView.as_view(), name="preload-trigger"),
    path("status", StatusView.as_view(), name="preload-status"),
    path("config", ConfigView.as_view(), name="preload-config"),
]
