from __future__ import annotations

from io import StringIO

import orjson
import pytest
from django.core.management import CommandError, call_command
from django_redis import get_redis_connection

from preload.models import PreloadRun, RunStatus
from tests.factories import AccountWithKey, make_memory

pytestmark = pytest.mark.django_db


def _preload(*args: str) -> str:
    out = StringIO()
    call_command("preload", *args, stdout=out)
    return out.getvalue()


def test_preload_a_user_records_a_run(account: AccountWithKey) -> None:
    make_memory(account.account, "User likes tea", importance=0.9)
    make_memory(account.account, "Other user's", user_id="u2", importance=0.9)

    output = _preload("--user", "u1", "--account", "acme")

    assert "Preloaded 1 memories" in output
    assert "for 1 users" in output
    run = PreloadRun.objects.get()
    assert (run.status, run.users_done, run.memories, run.trigger) == (RunStatus.SUCCEEDED, 1, 1, "command")
    keys = get_redis_connection("default").keys("preload:*:recent")
    assert len(keys) == 1
    assert len(orjson.loads(get_redis_connection("default").get(keys[0]))) == 1


def test_all_users_and_strategy_filter(account: AccountWithKey, other_account: AccountWithKey) -> None:
    make_memory(account.account, "a", importance=0.9)
    make_memory(account.account, "b", user_id="u2")
    make_memory(other_account.account, "c")

    output = _preload("--all", "--strategy", "important")

    assert "for 3 users" in output
    assert PreloadRun.objects.get().memories == 1  # only the important one


def test_dry_run_writes_nothing(account: AccountWithKey) -> None:
    make_memory(account.account, "User likes tea")

    output = _preload("--all", "--dry-run")

    assert output.startswith("Would preload 1 memories")
    assert get_redis_connection("default").keys("preload:*") == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "Give --user"),
        (("--all", "--user", "u1"), "Give --user"),
        (("--all", "--account", "nobody"), "No active account"),
        (("--user", "ghost"), "No such users"),
    ],
)
def test_bad_arguments_say_what_to_do(account: AccountWithKey, args: tuple[str, ...], message: str) -> None:
    make_memory(account.account, "User likes tea")
    with pytest.raises(CommandError, match=message):
        _preload(*args)


def test_help_explains_the_options() -> None:
    from preload.management.commands.preload import Command

    text = Command().create_parser("manage.py", "preload").format_help()
    assert "--dry-run" in text
    assert "--strategy" in text
