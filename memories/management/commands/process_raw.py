"""manage.py process_raw: the transcript processor of the spec, run by hand or as a long-lived process."""

from __future__ import annotations

import signal
import sys
import time
from argparse import ArgumentParser
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from memories.ingest import CycleResult, process_queued
from memories.models import RawTranscript, TranscriptStatus
from memories.retention import retention_apply


class Command(BaseCommand):
    help = (
        "Process queued chat transcripts (store_raw) into session summaries and discrete memories, "
        "and apply retention (as `manage.py cleanup`: processed transcripts older than --retention-days, "
        "old sessions, expired memories). Without --run-once it runs "
        "a cycle every --interval seconds until stopped (Ctrl-C or SIGTERM finish the current transcript). "
        "Safe beside the django-q2 workers and other copies of itself: each transcript is claimed by one."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--run-once", action="store_true", help="run one cycle and exit")
        parser.add_argument(
            "--interval", type=float, default=60.0, metavar="SECONDS", help="seconds between cycles (60)"
        )
        parser.add_argument(
            "--retention-days",
            type=int,
            default=None,
            metavar="N",
            help=f"delete transcripts processed more than N days ago (default {settings.INGEST['RETENTION_DAYS']})",
        )
        parser.add_argument(
            "--limit", type=int, default=None, metavar="N", help="transcripts per cycle (default: all that are due)"
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="retention only counts what it would delete; processing still runs"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        interval: float = options["interval"]
        retention_days: int = (
            options["retention_days"] if options["retention_days"] is not None else settings.INGEST["RETENTION_DAYS"]
        )
        if interval <= 0:
            raise CommandError("--interval must be above 0")
        if retention_days < 0:
            raise CommandError("--retention-days must be at least 0")
        limit = options["limit"]
        if limit is not None and limit < 1:
            raise CommandError("--limit must be at least 1")

        stopping = False

        def stop(signum: int, frame: FrameType | None) -> None:
            nonlocal stopping
            stopping = True

        if not options["run_once"]:
            signal.signal(signal.SIGTERM, stop)
            signal.signal(signal.SIGINT, stop)
        while True:
            self._cycle(
                limit=limit, retention_days=retention_days, dry_run=options["dry_run"], quiet=not options["run_once"]
            )
            if options["run_once"]:
                return
            deadline = time.monotonic() + interval
            while not stopping and time.monotonic() < deadline:
                time.sleep(min(0.5, interval))
            if stopping:
                self.stdout.write("Stopped.")
                return

    def _cycle(self, *, limit: int | None, retention_days: int, dry_run: bool, quiet: bool) -> None:
        """One cycle; `quiet` (the loop) prints nothing for a cycle that found nothing to do."""
        due = RawTranscript.objects.filter(status=TranscriptStatus.QUEUED).count()
        total = due if limit is None else min(due, limit)
        # A progress bar only where someone watches it; logs stay clean.
        with tqdm(total=total, unit="transcript", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:

            def advance(result: CycleResult) -> None:
                bar.update(1)

            # Transcripts queued during the cycle are taken too: the bound keeps one cycle finite.
            result = process_queued(limit=limit if limit is not None else max(due, 1) * 2, on_progress=advance)
        retention = retention_apply(retention_days=retention_days, dry_run=dry_run)
        idle = not (result.processed or result.retried or result.failed or result.requeued_stale)
        if quiet and idle and not retention.total:
            return
        rate = result.processed / result.seconds if result.seconds > 0 else 0.0
        verb = "would delete" if dry_run else "deleted"
        self.stdout.write(
            f"Processed {result.processed} transcripts ({result.memories_created} memories) in {result.seconds:.1f} s "
            f"({rate:.1f}/s); {result.retried} to retry, {result.failed} failed, "
            f"{result.requeued_stale} requeued from stopped workers; retention ({retention_days} days) "
            f"{verb} {retention.describe()}."
        )
        for error in result.errors[:20]:
            self.stderr.write(f"  {error}")
