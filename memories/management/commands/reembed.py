"""manage.py reembed: compute memories' embeddings again with the configured embedder."""

from __future__ import annotations

import sys
import time
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q
from tqdm import tqdm

from memories.embedding import get_embedder
from memories.models import Account, Memory
from memories.reembedding import memories_reembed


class Command(BaseCommand):
    help = (
        "Re-embed stored memories with the configured embedder (settings EMBEDDING) and record its model name. "
        "Without filters every memory is re-embedded. Use after changing the embedding model or provider "
        "(--model-mismatch), or to fill rows that were stored while the provider was down (--only-missing). "
        "Rows are read in primary-key batches, so the command can run while the service takes writes, "
        "and can be stopped and run again."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--account", metavar="NAME", help="only memories of the account with this name")
        parser.add_argument(
            "--user-id",
            metavar="ID",
            help="only memories of this end user (user_id; in every account unless --account)",
        )
        parser.add_argument(
            "--only-missing", action="store_true", help="only memories without an embedding (embedding IS NULL)"
        )
        parser.add_argument(
            "--model-mismatch",
            action="store_true",
            help="only memories embedded by another model than the configured one (or not at all); "
            "with --only-missing: memories matching either",
        )
        parser.add_argument(
            "--batch-size", type=int, default=64, metavar="N", help="memories per embedding call and UPDATE (64)"
        )
        parser.add_argument("--dry-run", action="store_true", help="only count the memories that would be re-embedded")

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size: int = options["batch_size"]
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        queryset = Memory.objects.all()
        if options["account"] is not None:
            account = Account.objects.filter(name=options["account"]).first()
            if account is None:
                raise CommandError(f"No account named {options['account']!r}")
            queryset = queryset.filter(account=account)
        if options["user_id"] is not None:
            queryset = queryset.filter(user_id=options["user_id"])

        embedder = get_embedder()
        model = embedder.model_name
        stale = Q()
        if options["only_missing"]:
            stale |= Q(embedding__isnull=True)
        if options["model_mismatch"]:
            stale |= ~Q(embedding_model=model)
        queryset = queryset.filter(stale)

        total = queryset.count()
        if options["dry_run"]:
            self.stdout.write(f"Would re-embed {total} memories with {model} (dry run: nothing changed).")
            return

        started = time.perf_counter()
        # A progress bar only where someone watches it; logs of cron jobs stay clean.
        with tqdm(total=total, unit="memory", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:

            def advance(rows: int) -> None:
                bar.update(rows)

            count = memories_reembed(queryset=queryset, batch_size=batch_size, on_progress=advance)
        elapsed = time.perf_counter() - started
        rate = count / elapsed if elapsed > 0 else 0.0
        self.stdout.write(f"Re-embedded {count} memories with {model} in {elapsed:.1f} s ({rate:.0f}/s).")
