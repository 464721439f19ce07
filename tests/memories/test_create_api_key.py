"""`manage.py create_api_key`: prints only a key, and that key authenticates."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from memories.api.auth import ApiKeyAuthentication
from memories.models import Account, ApiKey, hash_api_key
from tests.factories import make_account


def _create_api_key(*args: str) -> tuple[str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    call_command("create_api_key", *args, stdout=stdout, stderr=stderr)
    return stdout.getvalue(), stderr.getvalue()


@pytest.mark.django_db
def test_prints_only_a_key_that_authenticates() -> None:
    out, err = _create_api_key("demo")

    raw_key = out.strip()
    assert out == raw_key + "\n", "stdout must hold the key alone, for KEY=$(manage.py create_api_key demo)"
    key = ApiKey.objects.select_related("account").get(key_hash=hash_api_key(raw_key))
    assert key.name == "demo"
    assert key.account.name == "demo"
    assert raw_key not in err
    assert "demo" in err

    request = Request(APIRequestFactory().get("/", HTTP_AUTHORIZATION=f"Bearer {raw_key}"))
    result = ApiKeyAuthentication().authenticate(request)
    assert result is not None
    assert result[0].account == key.account


@pytest.mark.django_db
def test_reuses_an_existing_account() -> None:
    existing = make_account("acme")
    accounts_before = Account.objects.count()

    out, _ = _create_api_key("support-bot", "--account", "acme")

    key = ApiKey.objects.get(key_hash=hash_api_key(out.strip()))
    assert key.account == existing.account
    assert key.name == "support-bot"
    assert Account.objects.count() == accounts_before


@pytest.mark.django_db
def test_each_call_makes_a_new_key() -> None:
    first, _ = _create_api_key("demo")
    second, _ = _create_api_key("demo")
    assert first != second
    assert ApiKey.objects.filter(account__name="demo").count() == 2


@pytest.mark.django_db
def test_refuses_a_deactivated_account() -> None:
    Account.objects.create(name="gone", is_active=False)
    with pytest.raises(CommandError, match="deactivated"):
        _create_api_key("demo", "--account", "gone")
    assert not ApiKey.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
def test_refuses_bad_names(name: str) -> None:
    with pytest.raises(CommandError):
        _create_api_key(name)
    assert not Account.objects.exists()
