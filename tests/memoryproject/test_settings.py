"""Production settings pass `manage.py check --deploy`, and `make run` keeps
its plain http (memoryproject.settings: PRODUCTION and the HTTPS settings)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator

import pytest

from memoryproject.run import prepare_environment, qcluster_environ
from tests.servers import run_python

# What the environment of the test run must not decide for these children.
_DECIDED_HERE = {
    "DEBUG",
    "SECRET_KEY",
    "DATABASE_URL",
    "REDIS_URL",
    "MEMORYPROJECT_EMBEDDED",
    "MEMORYPROJECT_PRODUCTION",
    "SECURE_SSL_REDIRECT",
    "SECURE_PROXY_SSL_HEADER",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
}
_SHOW = (
    "import json; from django.conf import settings as s; print(json.dumps({name: getattr(s, name) for name in ["
    "'PRODUCTION', 'SECURE_SSL_REDIRECT', 'SECURE_PROXY_SSL_HEADER', 'SECURE_HSTS_SECONDS', "
    "'SECURE_HSTS_INCLUDE_SUBDOMAINS', 'SECURE_HSTS_PRELOAD', 'SESSION_COOKIE_SECURE', 'CSRF_COOKIE_SECURE']}))"
)


@pytest.fixture(scope="module")
def nothing_listens() -> Iterator[tuple[str, str]]:
    """Database and Redis URLs where nothing answers: a check that connected would fail."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        yield f"postgresql://memory:secret@127.0.0.1:{port}/memory", f"redis://127.0.0.1:{port}/0"


def _production(urls: tuple[str, str], **env: str) -> dict[str, str]:
    """A production deployment's environment: its own servers by URL, a strong secret, no DEBUG."""
    database_url, redis_url = urls
    return {
        **{name: value for name, value in os.environ.items() if name not in _DECIDED_HERE},
        "DJANGO_SETTINGS_MODULE": "memoryproject.settings",
        "MEMORYPROJECT_EMBEDDED": "off",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": secrets.token_urlsafe(50),
        **env,
    }


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_python(*args, env=env)


def _check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return _run(env, "manage.py", "check", "--deploy", "--fail-level", "WARNING")


def _settings(env: dict[str, str]) -> dict[str, object]:
    result = _run(env, "-c", f"import django; django.setup(); {_SHOW}")
    assert result.returncode == 0, result.stderr
    values: dict[str, object] = json.loads(result.stdout)
    return values


def test_check_deploy_passes_with_production_settings(nothing_listens: tuple[str, str]) -> None:
    result = _check_deploy(_production(nothing_listens))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout
    assert "WARNING" not in result.stdout + result.stderr


@pytest.mark.parametrize("secret", ["change-me", "x" * 60, "django-insecure-" + secrets.token_urlsafe(50)])
def test_check_deploy_fails_with_a_weak_secret_key(nothing_listens: tuple[str, str], secret: str) -> None:
    result = _check_deploy(_production(nothing_listens, SECRET_KEY=secret))

    assert result.returncode != 0
    assert "security.W009" in result.stderr


def test_production_refuses_to_start_without_a_secret_key(nothing_listens: tuple[str, str]) -> None:
    env = _production(nothing_listens)
    del env["SECRET_KEY"]

    result = _check_deploy(env)

    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_production_defaults_are_https_only(nothing_listens: tuple[str, str]) -> None:
    assert _settings(_production(nothing_listens)) == {
        "PRODUCTION": True,
        "SECURE_SSL_REDIRECT": True,
        "SECURE_PROXY_SSL_HEADER": None,
        "SECURE_HSTS_SECONDS": 31_536_000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": True,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
    }


def test_each_https_setting_can_be_changed(nothing_listens: tuple[str, str]) -> None:
    env = _production(
        nothing_listens,
        SECURE_SSL_REDIRECT="false",
        SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto=https",
        SECURE_HSTS_SECONDS="3600",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="false",
        SECURE_HSTS_PRELOAD="false",
        SESSION_COOKIE_SECURE="false",
        CSRF_COOKIE_SECURE="false",
    )

    assert _settings(env) == {
        "PRODUCTION": True,
        "SECURE_SSL_REDIRECT": False,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "SECURE_HSTS_SECONDS": 3600,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": False,
        "SECURE_HSTS_PRELOAD": False,
        "SESSION_COOKIE_SECURE": False,
        "CSRF_COOKIE_SECURE": False,
    }


def test_make_runs_children_serve_plain_http(nothing_listens: tuple[str, str]) -> None:
    """`make run` gives its children the servers' URLs, which alone would mean
    production: its children must still take plain http (the admin's login)."""
    environ = {name: value for name, value in _production(nothing_listens).items() if name != "MEMORYPROJECT_EMBEDDED"}
    prepare_environment(environ)  # both URLs and a SECRET_KEY given: nothing embedded is attached

    values = _settings(environ)

    assert values["PRODUCTION"] is False
    assert not any(value for name, value in values.items() if name != "PRODUCTION")


def test_debug_is_not_production(nothing_listens: tuple[str, str]) -> None:
    values = _settings(_production(nothing_listens, DEBUG="true"))

    assert values["PRODUCTION"] is False
    assert values["SESSION_COOKIE_SECURE"] is False


def test_the_job_cluster_embeds_on_one_thread_unless_told_otherwise() -> None:
    assert qcluster_environ({"PATH": "/bin"}) == {"PATH": "/bin", "EMBEDDING_THREADS": "1"}
    assert qcluster_environ({"EMBEDDING_THREADS": "2"})["EMBEDDING_THREADS"] == "2"
