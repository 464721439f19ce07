"""manage.py embed_pending: embed now the memories stored without a vector (async writes)."""

from __future__ import annotations

import sys
import time
from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from memories.embedder import embed_pending, pending_count
from memories.embedding import get_embedder


class Command(BaseCommand):
    help = (
        "Embed the memories still waiting for their vector (stored with ?async=true), oldest first, "
        "in batches of ASYNC_EMBED_BATCH_SIZE per model call. The background embedder and its sweeper "
        "do this by themselves; run it by hand when no job worker runs. Safe beside them: rows are "
        "claimed with FOR UPDATE SKIP LOCKED, so no memory is embedded twice."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--batch-size", type=int, metavar="N", help="memories per model call (ASYNC_EMBED_BATCH_SIZE)"
        )
        parser.add_argument("--dry-run", action="store_true", help="only count the memories waiting for a vector")

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size: int = options["batch_size"] or settings.ASYNC_WRITES["BATCH_SIZE"]
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        model = get_embedder().model_name
        total = pending_count()
        if options["dry_run"]:
            self.stdout.write(f"{total} memories wait for a vector from {model} (dry run: nothing changed).")
            return

        started = time.perf_counter()
        # A progress bar only where someone watches it; logs of cron jobs stay clean.
        with tqdm(total=total, unit="memory", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:

            def advance(rows: int) -> None:
                bar.update(rows)

            count = embed_pending(batch_size=batch_size, on_progress=advance)
        elapsed = time.perf_counter() - started
        rate = count / elapsed if elapsed > 0 else 0.0
        self.stdout.write(f"Embedded {count} pending memories with {model} in {elapsed:.1f} s ({rate:.0f}/s).")
