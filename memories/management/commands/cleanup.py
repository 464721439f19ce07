"""manage.py cleanup: apply retention now, as the daily job does."""

from __future__ import annotations

import sys
import time
from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from memories.ingest_tasks import RETENTION_SCHEDULE
from memories.retention import retention_apply


class Command(BaseCommand):
    help = (
        f"Apply retention now, as the daily job ({RETENTION_SCHEDULE}) does. It DELETES, at once: memories past "
        "their expiry (their history stays); transcripts processed more than --retention-days ago (their "
        "memories stay); and sessions last updated more than --session-retention-days ago whose transcripts "
        "are all processed, with their summary memory (their other memories stay, detached from the session). "
        "Queued, processing and failed transcripts are never deleted. Give --dry-run to only count. Safe beside "
        "the job workers: rows are deleted in batches, each its own transaction, skipping rows in use."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        ingest = settings.INGEST
        parser.add_argument(
            "--retention-days",
            type=int,
            metavar="N",
            help=f"delete transcripts processed more than N days ago (default {ingest['RETENTION_DAYS']})",
        )
        parser.add_argument(
            "--session-retention-days",
            type=int,
            metavar="N",
            help=f"delete sessions idle for more than N days (default {ingest['SESSION_RETENTION_DAYS']})",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            metavar="N",
            help=f"rows per transaction (default {ingest['RETENTION_BATCH_SIZE']})",
        )
        parser.add_argument("--dry-run", action="store_true", help="only count what would be deleted; delete nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        ingest = settings.INGEST
        days: int = ingest["RETENTION_DAYS"] if options["retention_days"] is None else options["retention_days"]
        session_days: int = (
            ingest["SESSION_RETENTION_DAYS"]
            if options["session_retention_days"] is None
            else options["session_retention_days"]
        )
        batch_size: int = ingest["RETENTION_BATCH_SIZE"] if options["batch_size"] is None else options["batch_size"]
        if days < 0:
            raise CommandError("--retention-days must be at least 0")
        if session_days < 0:
            raise CommandError("--session-retention-days must be at least 0")
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        policy = f"transcripts {days} days after processing, idle sessions {session_days} days"
        if options["dry_run"]:
            plan = retention_apply(retention_days=days, session_retention_days=session_days, dry_run=True)
            self.stdout.write(f"Would delete {plan.describe()} ({policy}; dry run: nothing deleted).")
            return

        started = time.perf_counter()
        # A progress bar only where someone watches it; logs of cron jobs stay clean (and skip the counting).
        watched = sys.stderr.isatty()
        total = (
            retention_apply(retention_days=days, session_retention_days=session_days, dry_run=True).total
            if watched
            else None
        )
        with tqdm(total=total, unit="row", file=sys.stderr, disable=not watched) as bar:

            def advance(rows: int) -> None:
                bar.update(rows)

            result = retention_apply(
                retention_days=days, session_retention_days=session_days, batch_size=batch_size, on_progress=advance
            )
        elapsed = time.perf_counter() - started
        self.stdout.write(f"Deleted {result.describe()} ({policy}) in {elapsed:.1f} s.")
