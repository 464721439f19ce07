"""The effective preload configuration of a user, an account or the platform.

Option by option, the most specific row that sets a value wins: the user's row,
then the account's, then the global row, then the code default
(preload.options). One query reads every row that can apply.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.db.models import Q

from preload.models import PreloadConfig
from preload.options import (
    CODE_DEFAULTS,
    CONFIG_LIMITS,
    OPTIONS,
    USER_STRATEGIES,
    Scope,
    Strategy,
    validate_options,
)

__all__ = [
    "CONFIG_LIMITS",
    "EffectiveConfig",
    "account_config",
    "global_config",
    "resolve_config",
    "resolve_configs",
    "validate_options",
]

# Most specific last: later rows overwrite what earlier ones set.
_PRECEDENCE = {Scope.GLOBAL: 0, Scope.ACCOUNT: 1, Scope.USER: 2}


@dataclass(frozen=True)
class EffectiveConfig:
    enabled: bool
    startup_preload: bool
    background_refresh: bool
    max_memories_per_user: int
    strategies: tuple[Strategy, ...]
    refresh_interval_minutes: int
    recent_days: int
    frequent_min_access: int
    important_min_importance: float
    context_sample_size: int
    trending_window_hours: int
    trending_max_memories: int
    ttl_recent_seconds: int
    ttl_frequent_seconds: int
    ttl_important_seconds: int
    ttl_trending_seconds: int
    memory_budget_bytes: int
    # {option: the scope its value came from, or "default"}: what a status or
    # config endpoint shows so that an operator sees why a value applies.
    origins: tuple[tuple[str, str], ...] = ()

    @property
    def user_strategies(self) -> tuple[Strategy, ...]:
        """The enabled strategies that choose from the user's own memories."""
        return tuple(strategy for strategy in self.strategies if strategy in USER_STRATEGIES)

    @property
    def trending_enabled(self) -> bool:
        return self.enabled and Strategy.TRENDING in self.strategies

    def ttl_seconds(self, strategy: Strategy) -> int:
        """The lifetime of a strategy's key. The spec names no context key: its
        picks follow the user's latest memories, so they age as fast as recent ones."""
        return {
            Strategy.RECENT: self.ttl_recent_seconds,
            Strategy.CONTEXT: self.ttl_recent_seconds,
            Strategy.FREQUENT: self.ttl_frequent_seconds,
            Strategy.IMPORTANT: self.ttl_important_seconds,
            Strategy.TRENDING: self.ttl_trending_seconds,
        }[strategy]

    def as_dict(self) -> dict[str, Any]:
        """The options as JSON-ready values (strategies as a list)."""
        values = {name: getattr(self, name) for name in OPTIONS}
        values["strategies"] = [str(strategy) for strategy in self.strategies]
        return values


def _merge(rows: Iterable[PreloadConfig]) -> EffectiveConfig:
    values: dict[str, Any] = dict(CODE_DEFAULTS)
    origins = dict.fromkeys(OPTIONS, "default")
    for row in sorted(rows, key=lambda row: _PRECEDENCE[Scope(row.scope)]):
        for name, value in row.option_values().items():
            if value is not None:
                values[name] = value
                origins[name] = row.scope
    # Stored order is the operator's; a fixed order keeps keys and logs stable.
    chosen = set(values["strategies"])
    values["strategies"] = tuple(Strategy(value) for value in Strategy.values if value in chosen)
    return EffectiveConfig(**values, origins=tuple(origins.items()))


def resolve_config(*, account_id: int, namespace: str, user_id: str) -> EffectiveConfig:
    """A user's configuration: their row over their account's over the global one, in one query."""
    rows = PreloadConfig.objects.filter(
        Q(scope=Scope.GLOBAL)
        | Q(scope=Scope.ACCOUNT, account_id=account_id)
        | Q(scope=Scope.USER, account_id=account_id, namespace=namespace, user_id=user_id)
    )
    return _merge(rows)


def resolve_configs(*, account_id: int, namespace: str, user_ids: Sequence[str]) -> dict[str, EffectiveConfig]:
    """resolve_config for a batch of one account's users, still in one query:
    a run over thousands of users must not read the config table once each."""
    rows = list(
        PreloadConfig.objects.filter(
            Q(scope=Scope.GLOBAL)
            | Q(scope=Scope.ACCOUNT, account_id=account_id)
            | Q(scope=Scope.USER, account_id=account_id, namespace=namespace, user_id__in=list(user_ids))
        )
    )
    shared = [row for row in rows if row.scope != Scope.USER]
    own: Mapping[str, list[PreloadConfig]] = {user_id: [] for user_id in user_ids}
    for row in rows:
        if row.scope == Scope.USER and row.user_id is not None:
            own[row.user_id].append(row)
    base = _merge(shared)
    return {user_id: _merge([*shared, *own[user_id]]) if own[user_id] else base for user_id in user_ids}


def account_config(*, account_id: int) -> EffectiveConfig:
    """An account's configuration without any user's row: what decides the
    account-wide trending set and, for a run over the account, its defaults."""
    return _merge(PreloadConfig.objects.filter(Q(scope=Scope.GLOBAL) | Q(scope=Scope.ACCOUNT, account_id=account_id)))


def global_config() -> EffectiveConfig:
    """The platform's configuration: the global row over the code defaults.
    Its memory_budget_bytes bounds the whole preload; its refresh interval
    drives the schedule."""
    return _merge(PreloadConfig.objects.filter(scope=Scope.GLOBAL))
