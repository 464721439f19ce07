"""The preload options: their kinds, code defaults and allowed ranges.

One table, read by the model's CheckConstraints, the admin form, the resolver
(preload.config) and the future API serializer, so that a range is written
once. Kept free of model imports so that preload.models can import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from django.db import models

MB = 1024 * 1024


class Strategy(models.TextChoices):
    RECENT = "recent", "Recent"
    FREQUENT = "frequent", "Frequent"
    IMPORTANT = "important", "Pinned or important"
    CONTEXT = "context", "Context-relevant"
    TRENDING = "trending", "Trending in the account"


# Strategies that pick from one user's own memories; trending picks across the
# account and is warmed under its own account-wide key, never into a user's set.
USER_STRATEGIES = (Strategy.RECENT, Strategy.FREQUENT, Strategy.IMPORTANT, Strategy.CONTEXT)


class Scope(models.TextChoices):
    GLOBAL = "global", "Global"
    ACCOUNT = "account", "Account"
    USER = "user", "User"


Kind = Literal["bool", "int", "float", "strategies"]


@dataclass(frozen=True)
class Option:
    kind: Kind
    default: bool | int | float | tuple[str, ...]
    minimum: int | float | None = None
    maximum: int | float | None = None
    # Where the option may be set: the budget bounds the whole preload, so a
    # per-account or per-user value would have nothing to bound.
    scopes: frozenset[Scope] = frozenset(Scope)
    help: str = ""


_HOUR = 3600
_DAY = 24 * _HOUR

OPTIONS: Mapping[str, Option] = {
    "enabled": Option("bool", True, help="Preload at all."),
    "startup_preload": Option("bool", True, help="Warm when the service starts."),
    "background_refresh": Option("bool", True, help="Re-warm every refresh interval."),
    "max_memories_per_user": Option("int", 100, 1, 10_000, help="The most memories one user's preload holds."),
    "strategies": Option("strategies", tuple(Strategy.values), help="Which strategies choose memories."),
    "refresh_interval_minutes": Option("int", 30, 1, 1440, help="Minutes between background refreshes."),
    "recent_days": Option("int", 7, 1, 365, help="Recent: memories created in the last N days."),
    "frequent_min_access": Option("int", 5, 1, 1_000_000_000, help="Frequent: read at least N times."),
    "important_min_importance": Option(
        "float", 0.7, 0.0, 1.0, help="Important: pinned, or importance strictly above this."
    ),
    "context_sample_size": Option(
        "int", 10, 1, 100, help="Context: how many of the user's newest memories define their current context."
    ),
    "trending_window_hours": Option("int", 24, 1, 720, help="Trending: reads in the last N hours."),
    "trending_max_memories": Option("int", 100, 1, 10_000, help="Trending: the most memories of an account's set."),
    "ttl_recent_seconds": Option("int", 2 * _HOUR, 60, 7 * _DAY, help="Lifetime of preload:{user}:recent."),
    "ttl_frequent_seconds": Option("int", 4 * _HOUR, 60, 7 * _DAY, help="Lifetime of preload:{user}:frequent."),
    "ttl_important_seconds": Option("int", 6 * _HOUR, 60, 7 * _DAY, help="Lifetime of preload:{user}:important."),
    "ttl_trending_seconds": Option("int", 1 * _HOUR, 60, 7 * _DAY, help="Lifetime of preload:global:trending."),
    "memory_budget_bytes": Option(
        "int",
        256 * MB,
        1 * MB,
        64 * 1024 * MB,
        scopes=frozenset({Scope.GLOBAL}),
        help="Bytes the whole preload may hold in Redis; the least valuable entries are dropped first.",
    ),
}

# {name: (minimum, maximum)} of the numeric options: what an API serializer
# declares as min_value / max_value.
CONFIG_LIMITS: Mapping[str, tuple[int | float, int | float]] = {
    name: (option.minimum, option.maximum)
    for name, option in OPTIONS.items()
    if option.minimum is not None and option.maximum is not None
}

CODE_DEFAULTS: Mapping[str, bool | int | float | tuple[str, ...]] = {
    name: option.default for name, option in OPTIONS.items()
}


def validate_options(values: Mapping[str, object], *, scope: Scope) -> dict[str, str]:
    """Errors of these option values, by option name; empty when all are valid.

    None means "inherit" and is always valid. Unknown names are errors, so a
    misspelt option in an API body is refused rather than ignored.
    """
    errors: dict[str, str] = {}
    for name, value in values.items():
        option = OPTIONS.get(name)
        if option is None:
            errors[name] = "Unknown option."
            continue
        if value is None:
            continue
        if scope not in option.scopes:
            allowed = ", ".join(sorted(option.scopes))
            errors[name] = f"Can only be set on the {allowed} configuration."
            continue
        error = _check(option, value)
        if error:
            errors[name] = error
    return errors


def _check(option: Option, value: object) -> str | None:
    if option.kind == "bool":
        return None if isinstance(value, bool) else "Must be true or false."
    if option.kind == "strategies":
        if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
            return "Must be a list of strategy names."
        unknown = [item for item in value if item not in Strategy.values]
        if unknown:
            return f"Unknown strategies: {', '.join(unknown)}; choose from {', '.join(Strategy.values)}."
        if len(set(value)) != len(value):
            return "Each strategy may appear once."
        return None
    # bool is an int in Python; True is not a count of anything.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "Must be a number."
    if option.kind == "int" and not isinstance(value, int):
        return "Must be a whole number."
    assert option.minimum is not None
    assert option.maximum is not None
    if not option.minimum <= value <= option.maximum:
        return f"Must be between {option.minimum} and {option.maximum}."
    return None
