"""A bad environment value stops start-up with a message naming the variable (memoryproject.env, settings)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from memoryproject import env

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.parametrize(
    ("helper", "raw", "expected"),
    [
        (lambda: env.env_bool("X_TEST", False), "yes", True),
        (lambda: env.env_bool("X_TEST", True), "off", False),
        (lambda: env.env_int("X_TEST", 1, minimum=0), "42", 42),
        (lambda: env.env_float("X_TEST", 1.0, maximum=2.0), "1.5", 1.5),
        (lambda: env.env_list("X_TEST", []), "a, b,,c", ["a", "b", "c"]),
        (lambda: env.env_choice("X_TEST", "x", {"x", "y"}), "y", "y"),
        (lambda: env.env_rate("X_TEST"), " 6000/min ", "6000/min"),
        (lambda: env.env_rate("X_TEST", "10/s"), "0", ""),
        (lambda: env.env_rate("X_TEST"), "0/hour", ""),
        (lambda: env.env_header("X_TEST"), "X-Forwarded-Proto=https", ("HTTP_X_FORWARDED_PROTO", "https")),
        (lambda: env.env_header("X_TEST"), "HTTP_X_SCHEME = https", ("HTTP_X_SCHEME", "https")),
    ],
)
def test_helpers_read_good_values(monkeypatch: pytest.MonkeyPatch, helper: object, raw: str, expected: object) -> None:
    monkeypatch.setenv("X_TEST", raw)
    assert helper() == expected  # type: ignore[operator]


@pytest.mark.parametrize(
    ("helper", "raw"),
    [
        (lambda: env.env_bool("X_TEST", False), "maybe"),
        (lambda: env.env_int("X_TEST", 1), "ten"),
        (lambda: env.env_int("X_TEST", 1, minimum=0), "-1"),
        (lambda: env.env_float("X_TEST", 1.0), "fast"),
        (lambda: env.env_float("X_TEST", 1.0, maximum=1.0), "1.1"),
        (lambda: env.env_choice("X_TEST", "x", {"x"}), "z"),
        (lambda: env.env_rate("X_TEST"), "lots"),
        (lambda: env.env_rate("X_TEST"), "100"),
        (lambda: env.env_rate("X_TEST"), "100/fortnight"),
        (lambda: env.env_rate("X_TEST"), "-1/min"),
        (lambda: env.env_rate("X_TEST"), "1.5/s"),
        (lambda: env.env_header("X_TEST"), "X-Forwarded-Proto"),
        (lambda: env.env_header("X_TEST"), "=https"),
        (lambda: env.env_header("X_TEST"), "X Forwarded=https"),
    ],
)
def test_helpers_refuse_bad_values(monkeypatch: pytest.MonkeyPatch, helper: object, raw: str) -> None:
    monkeypatch.setenv("X_TEST", raw)
    with pytest.raises(ImproperlyConfigured, match="X_TEST"):
        helper()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("6000/min", (6000, 60)), ("1/s", (1, 1)), ("5/hour", (5, 3600)), ("100/day", (100, 86_400)), ("0", None)],
)
def test_rates_read_as_requests_per_period(text: str, expected: tuple[int, int] | None) -> None:
    assert env.parse_rate(text) == expected


def _load_settings(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import memoryproject.settings"],
        cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if k != "SECRET_KEY"}, "MEMORYPROJECT_EMBEDDED": "off", **env},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SECRET_KEY": "x", "DATABASE_URL": "mysql://u@h/db"}, "DATABASE_URL must be a PostgreSQL URL"),
        ({"SECRET_KEY": "x", "EMBEDDING_DIMENSIONS": "768"}, "EMBEDDING_DIMENSIONS must be 384"),
        ({"SECRET_KEY": "x", "MEMORY_DUPLICATE_SIMILARITY": "2"}, "MEMORY_DUPLICATE_SIMILARITY"),
        ({"DATABASE_URL": "postgresql://h/db", "REDIS_URL": "redis://h"}, "SECRET_KEY must be set"),
        ({"SECRET_KEY": "x", "THROTTLE_RATE": "fast"}, "THROTTLE_RATE"),
        ({"SECRET_KEY": "x", "SECURE_HSTS_SECONDS": "a year"}, "SECURE_HSTS_SECONDS"),
        ({"SECRET_KEY": "x", "SECURE_SSL_REDIRECT": "sometimes"}, "SECURE_SSL_REDIRECT"),
        ({"SECRET_KEY": "x", "SECURE_PROXY_SSL_HEADER": "https"}, "SECURE_PROXY_SSL_HEADER"),
        ({"SECRET_KEY": "x", "MEMORY_MAX_METADATA_DEPTH": "500"}, "MEMORY_MAX_METADATA_DEPTH"),
    ],
)
def test_bad_configuration_stops_start_up(env: dict[str, str], message: str) -> None:
    result = _load_settings(**env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr
