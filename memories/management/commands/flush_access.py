"""manage.py flush_access: apply the reads counted in Redis to memories now."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from redis.exceptions import RedisError

from memories.access import flush_access_counts, pending_access


class Command(BaseCommand):
    help = (
        "Apply the reads counted in Redis to memories' access_count and last_accessed_at now, "
        "as the scheduled job (memories.flush_access_counts) does every ACCESS_FLUSH_INTERVAL_MINUTES. "
        "Safe to run beside it: each read is applied once."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="only show what is waiting to be applied")
        parser.add_argument(
            "--batch-size",
            type=int,
            default=None,
            metavar="N",
            help="memories per UPDATE (default ACCESS_FLUSH_BATCH_SIZE)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size: int = options["batch_size"]
        if batch_size is None:
            batch_size = settings.ACCESS_TRACKING["FLUSH_BATCH_SIZE"]
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        try:
            self._run(batch_size=batch_size, dry_run=options["dry_run"])
        except RedisError as error:
            raise CommandError(f"Redis is unavailable: {error}") from error

    def _run(self, *, batch_size: int, dry_run: bool) -> None:
        if dry_run:
            pending = pending_access()
            claims = f", {pending.claims} of them from unfinished flushes" if pending.claims else ""
            self.stdout.write(
                f"Would apply {pending.reads} reads to {pending.memories} memories{claims} (dry run: nothing applied)."
            )
            return
        result = flush_access_counts(batch_size=batch_size)
        recovered = f" (with {result.recovered} batches left by interrupted flushes)" if result.recovered else ""
        self.stdout.write(
            f"Applied {result.reads} reads to {result.memories} memories in {result.seconds:.3f} s{recovered}."
        )
