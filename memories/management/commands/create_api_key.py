"""`manage.py create_api_key NAME [--account ACCOUNT]`: print a new API key, and only the key.

Only the key goes to stdout, so that `KEY=$(python manage.py create_api_key demo)`
works; what was done is reported on stderr.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from memories.models import Account, ApiKey

_MAX_NAME = 200  # both Account.name and ApiKey.name are CharField(max_length=200)


def _name(value: str) -> str:
    name = value.strip()
    if not name:
        raise CommandError("Names cannot be empty.")
    if len(name) > _MAX_NAME:
        raise CommandError(f"Names are at most {_MAX_NAME} characters; {name[:20]!r}… has {len(name)}.")
    return name


class Command(BaseCommand):
    help = (
        "Create an API key and print it (only it) on stdout; the key is shown this once. "
        "The account is created if it does not exist."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="The key's name, shown in the admin (e.g. the agent that uses it).")
        parser.add_argument(
            "--account",
            metavar="ACCOUNT_NAME",
            help="The account the key authenticates as (default: an account named NAME).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        key_name = _name(options["name"])
        account_name = _name(options["account"] or key_name)
        with transaction.atomic():
            account, created = Account.objects.get_or_create(name=account_name)
            if not account.is_active:
                raise CommandError(f"Account {account_name!r} is deactivated; reactivate it in the admin first.")
            key, raw_key = ApiKey.generate(account=account, name=key_name)
        self.stdout.write(raw_key)
        account_state = "new account" if created else "existing account"
        self.stderr.write(
            f"Created API key {key.name!r} ({key.prefix}…) for {account_state} {account.name!r}.",
            style_func=self.style.SUCCESS,
        )
