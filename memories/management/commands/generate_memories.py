"""manage.py generate_memories: realistic synthetic memories for benchmarks and demos."""

from __future__ import annotations

import os
import sys
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from memories.generate import REBUILD_MIN_ROWS, GenerateError, default_cache_path, generate_memories
from memories.models import Account


class ProgressBars:
    """One tqdm bar per phase, on stderr, only where someone watches."""

    def __init__(self) -> None:
        self._bar: tqdm[Any] | None = None

    def begin(self, phase: str, total: int | None) -> None:
        self.close()
        unit = "memory" if phase == "memories" else "row"
        self._bar = tqdm(total=total, desc=phase, unit=unit, file=sys.stderr, disable=not sys.stderr.isatty())

    def advance(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class Command(BaseCommand):
    help = (
        "Generate realistic memories with real embeddings: --users users with a Zipf-like spread of "
        "--memories memories (a few heavy users, most with tens), each a distinct fact, preference or event "
        "with tags, metadata, importance, pinning, access counts and timestamps over the last year. The same "
        "--seed gives the same memories. Written with COPY in one transaction into a namespace of the account "
        "that must be empty (the account is created if missing). Vectors are kept in an on-disk cache, so a "
        f"second run embeds nothing. A load of {REBUILD_MIN_ROWS:,} memories or more that at least doubles the "
        "table drops the HNSW index and builds it again afterwards (concurrently: writers are not blocked; "
        "large users' searches run exactly, and slower, meanwhile)."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--users", type=int, required=True, metavar="N", help="end users to spread them over")
        parser.add_argument("--memories", type=int, required=True, metavar="M", help="memories in all")
        parser.add_argument(
            "--account", default="generated", metavar="NAME", help="account name, created if missing (generated)"
        )
        parser.add_argument("--namespace", default="default", metavar="NS", help="namespace, must be empty (default)")
        parser.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (0)")
        parser.add_argument(
            "--batch-size", type=int, default=1_000, metavar="N", help="memories per embedding call and COPY (1000)"
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=os.cpu_count() or 1,
            metavar="N",
            help=f"processes that embed, one core each ({os.cpu_count() or 1}: the cores)",
        )
        parser.add_argument(
            "--vector-cache",
            type=Path,
            default=default_cache_path(),
            metavar="PATH",
            help="the on-disk cache of vectors by model and text, shared by runs (%(default)s)",
        )
        parser.add_argument(
            "--no-vector-cache",
            action="store_true",
            help="embed every text, without reading or writing the vector cache",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        account, _ = Account.objects.get_or_create(name=options["account"])
        bars = ProgressBars()
        try:
            result = generate_memories(
                account=account,
                users=options["users"],
                memories=options["memories"],
                namespace=options["namespace"],
                seed=options["seed"],
                batch_size=options["batch_size"],
                cache_path=None if options["no_vector_cache"] else options["vector_cache"],
                workers=options["workers"],
                progress=bars,
            )
        except GenerateError as error:
            raise CommandError(str(error)) from None
        finally:
            bars.close()
        rate = result.memories / result.seconds if result.seconds > 0 else 0.0
        index = f"HNSW index rebuilt in {result.index_seconds:.1f} s" if result.index_rebuilt else "HNSW index kept"
        self.stdout.write(
            f"Generated {result.memories} memories of {result.users} users in account {account.name!r} "
            f"(namespace {options['namespace']!r}) in {result.seconds:.1f} s ({rate:.0f}/s): "
            f"{result.embedded} texts embedded, {result.cached} vectors from the cache; {index}."
        )
