"""manage.py preload: warm users' hot memories into Redis now."""

from __future__ import annotations

import sys
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from memories.models import Account
from preload.models import RunStatus, RunTrigger
from preload.options import USER_STRATEGIES, Strategy
from preload.runs import preload_run, users_of


class Command(BaseCommand):
    help = (
        "Preload users' hot memories (recent, frequent, important, context) into Redis, where the API's reads "
        "find them. Give --user (repeatable) or --all; --account limits to one account. Each run is recorded "
        "(admin: Preloading → Preload runs). Preloading only adds cache entries: it changes no memory."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--account", metavar="NAME", help="only this account (by name)")
        parser.add_argument("--namespace", metavar="NS", help="only this namespace (default: all)")
        parser.add_argument("--user", action="append", default=[], metavar="ID", help="a user id; repeatable")
        parser.add_argument("--all", action="store_true", help="every user with memories")
        parser.add_argument(
            "--strategy",
            action="append",
            choices=[str(s) for s in USER_STRATEGIES],
            metavar="NAME",
            help=f"only these strategies; repeatable ({', '.join(USER_STRATEGIES)})",
        )
        parser.add_argument("--dry-run", action="store_true", help="choose the memories, write nothing to Redis")

    def handle(self, *args: Any, **options: Any) -> None:
        if bool(options["user"]) == bool(options["all"]):
            raise CommandError("Give --user ID (one or more) or --all.")
        accounts = list(Account.objects.filter(is_active=True))
        if options["account"]:
            accounts = [a for a in accounts if a.name == options["account"]]
            if not accounts:
                raise CommandError(f"No active account named {options['account']!r}.")
        users = list(users_of(accounts=accounts, namespace=options["namespace"], user_ids=options["user"]))
        if not users:
            raise CommandError("No such users with memories.")
        strategies = [Strategy(s) for s in options["strategy"]] if options["strategy"] else None
        with tqdm(total=len(users), unit="user", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
            run = preload_run(
                users=iter(users),
                trigger=RunTrigger.COMMAND,
                users_total=len(users),
                strategies=strategies,
                dry_run=options["dry_run"],
                account=accounts[0] if options["account"] else None,
                requested_users=options["user"],
                on_user=bar.update,
            )
        seconds = (run.finished_at - run.started_at).total_seconds() if run.finished_at else 0.0
        verb = "Would preload" if run.dry_run else "Preloaded"
        self.stdout.write(
            f"{verb} {run.memories} memories ({run.bytes} bytes) for {run.users_done} users in {seconds:.1f} s "
            f"(run {run.id}, {run.status})."
        )
        if run.status == RunStatus.FAILED:
            raise CommandError("; ".join(str(error.get("message", error)) for error in run.errors))
