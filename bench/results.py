"""What every part of the bench suite reports: one Result per measured
operation, so that `make bench` (bench/suite.py) prints them in one table,
writes them to bench/results/latest.json and draws them.

A part is a module with `run(options: SuiteOptions) -> list[Result]`; it can
also be run alone as a script, which prints its own table. `machine()` says
what the numbers were measured on, for every report that keeps them (the
suite's, bench/soak.py's).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SuiteOptions:
    """The sizes a suite run works at (`make bench` uses the defaults)."""

    # Memories and users of the generated data set (issue 7: 100,000 over 1,000).
    memories: int = 100_000
    users: int = 1_000
    # Requests per measured operation (per client at saturation).
    repeat: int = 300
    # Clients at saturation.
    clients: int = 8
    # Also measure at 1,000,000 memories where a part supports it (search quality).
    large: bool = False


@dataclass(frozen=True)
class Result:
    # Which part measured it ("micro", "http", "recall", ...).
    group: str
    # What was measured, e.g. "get by id, cache hit".
    operation: str
    # Latency in milliseconds; None where the operation is not a latency (recall@10).
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    # Requests (or operations) per second, where measured.
    throughput: float | None = None
    # Anything else worth keeping: a ratio to a baseline, recall, queries per request, sizes.
    value: float | None = None
    unit: str = ""
    # The target in words ("p50 <= 1.5 ms, p99 <= 5 ms") and whether it was met (None: no target).
    target: str = ""
    met: bool | None = None
    # What it was compared with and how it compared ("sequential: 812 ms; 7.9x").
    baseline: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentiles(samples: Sequence[float]) -> tuple[float, float, float]:
    """p50, p95 and p99 of samples (nearest rank)."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    return statistics.median(ordered), at(0.95), at(0.99)


def latency(
    group: str,
    operation: str,
    samples_ms: Sequence[float],
    *,
    throughput: float | None = None,
    target: str = "",
    met: bool | None = None,
    baseline: str = "",
    **extra: Any,
) -> Result:
    p50, p95, p99 = percentiles(samples_ms)
    return Result(
        group=group,
        operation=operation,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        throughput=throughput,
        target=target,
        met=met,
        baseline=baseline,
        extra=dict(extra),
    )


def _cell(value: float | None, digits: int = 2) -> str:
    if value is None:
        return ""
    if 0 < abs(value) < 10**-digits * 10:
        # Two significant digits: an L1 cache hit (a few microseconds) would print as 0.00.
        return f"{value:.2g}"
    return f"{value:.{digits}f}"


def table(results: Sequence[Result]) -> str:
    """One plain-text table: operation, p50, p95, p99, throughput, value, target, met?"""
    header = ("group", "operation", "p50 ms", "p95 ms", "p99 ms", "req/s", "value", "target", "met?", "baseline")
    rows = [header]
    for result in results:
        rows.append(
            (
                result.group,
                result.operation,
                _cell(result.p50_ms),
                _cell(result.p95_ms),
                _cell(result.p99_ms),
                _cell(result.throughput, 0),
                f"{_cell(result.value, 3)} {result.unit}".strip(),
                result.target,
                {True: "yes", False: "NO", None: ""}[result.met],
                result.baseline,
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.rjust(width) if 2 <= column <= 6 else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What the numbers were measured on: they mean little without it."""
    import psutil  # type: ignore[import-untyped]  # no stubs in requirements/dev.txt

    model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = ""
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "commit": commit,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
