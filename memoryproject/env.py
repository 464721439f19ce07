"""Typed readers of environment variables. A bad value raises
ImproperlyConfigured naming the variable, so start-up fails at once and says why.

Its own module (not in settings.py) so that `make run`'s supervisor can read
its variables without importing the settings, which would attach the embedded
servers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TypeVar

from django.core.exceptions import ImproperlyConfigured

Number = TypeVar("Number", int, float)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _raw(name: str, environ: Mapping[str, str] | None) -> str | None:
    value = (os.environ if environ is None else environ).get(name)
    return None if value is None or value.strip() == "" else value


def env_str(name: str, default: str = "", *, environ: Mapping[str, str] | None = None) -> str:
    return _raw(name, environ) or default


def env_bool(name: str, default: bool, *, environ: Mapping[str, str] | None = None) -> bool:
    raw = _raw(name, environ)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {raw!r}")


def _env_number(
    name: str,
    default: Number,
    parse: Callable[[str], Number],
    what: str,
    minimum: Number | None,
    maximum: Number | None,
    environ: Mapping[str, str] | None,
) -> Number:
    raw = _raw(name, environ)
    if raw is None:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be {what}, not {raw!r}") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ImproperlyConfigured(f"{name} must be between {minimum} and {maximum}, not {value}")
    return value


def env_int(
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    return _env_number(name, default, int, "a whole number", minimum, maximum, environ)


def env_float(
    name: str,
    default: float,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> float:
    return _env_number(name, default, float, "a number", minimum, maximum, environ)


def env_list(name: str, default: list[str], *, environ: Mapping[str, str] | None = None) -> list[str]:
    raw = _raw(name, environ)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_choice(name: str, default: str, choices: set[str], *, environ: Mapping[str, str] | None = None) -> str:
    value = env_str(name, default, environ=environ)
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {sorted(choices)}, not {value!r}")
    return value


# A rate's period, as DRF spells it ("6000/min"), in seconds.
_RATE_PERIODS = {
    **dict.fromkeys(("s", "sec", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86_400),
}


def parse_rate(text: str) -> tuple[int, int] | None:
    """`6000/min` as (6000 requests, 60 seconds); empty or zero (`0`, `0/min`) as
    None: no limit. ValueError for anything else."""
    text = text.strip()
    count, slash, period = text.partition("/")
    if not count.strip().isdigit():
        raise ValueError(f"a rate is requests/period, like 6000/min, not {text!r}")
    requests = int(count)
    if requests == 0 and not (slash and period.strip()):
        return None
    seconds = _RATE_PERIODS.get(period.strip().lower())
    if seconds is None:
        raise ValueError(f"a rate's period is s, min, hour or day, not {period.strip()!r}")
    return None if requests == 0 else (requests, seconds)


def env_rate(name: str, default: str = "", *, environ: Mapping[str, str] | None = None) -> str:
    """A rate like `6000/min`, checked; "" (no limit) when unset, empty or zero."""
    raw = env_str(name, default, environ=environ).strip()
    try:
        return "" if not raw or parse_rate(raw) is None else raw
    except ValueError as error:
        raise ImproperlyConfigured(f"{name}: {error}") from None


def env_header(name: str, *, environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """`X-Forwarded-Proto=https` as Django's SECURE_PROXY_SSL_HEADER wants it:
    ("HTTP_X_FORWARDED_PROTO", "https"). The header may also be given by its
    META name (HTTP_X_FORWARDED_PROTO). None when unset."""
    raw = _raw(name, environ)
    if raw is None:
        return None
    header, _, value = raw.partition("=")
    header, value = header.strip().upper().replace("-", "_"), value.strip()
    if not header or not value or not header.replace("_", "").isalnum():
        raise ImproperlyConfigured(f"{name} must be a header and its value, like X-Forwarded-Proto=https, not {raw!r}")
    return (header if header.startswith("HTTP_") else f"HTTP_{header}", value)
