"""`make bench`: the benchmark suite in one run, one table, one JSON, one chart.

    .venv/bin/python bench/suite.py [--parts micro,recall,http] [--memories 100000] [--users 1000]
                                    [--repeat 300] [--clients 8] [--large] [--out bench/results]

Runs each part's `run(options)` (bench/results.py) in turn against the
configured servers (DATABASE_URL / REDIS_URL, or the embedded stack), prints
one table (operation, p50, p95, p99, throughput, target, met?), and writes
<out>/latest.json (the results and the machine they ran on) and
<out>/latest.png (the latencies drawn beside their targets; needs
requirements/bench.txt, which `make bench` installs).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import support  # noqa: F401  (sets Django up before any part imports the project)
from results import Result, SuiteOptions, machine, table

BENCH = Path(__file__).resolve().parent
PARTS = ("micro", "preloading", "recall", "http_load")


def draw(results: Sequence[Result], path: Path, title: str) -> bool:
    """The latencies as bars (p50, p99; log scale) with each target's bound marked.
    False when matplotlib is missing (it is in requirements/bench.txt, not in the service's)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    timed = [result for result in results if result.p50_ms is not None]
    if not timed:
        return False
    labels = [f"{result.group}: {result.operation}" for result in timed]
    positions = list(range(len(timed)))
    height = 0.38
    figure, axes = plt.subplots(figsize=(11, 0.42 * len(timed) + 1.6))
    axes.barh([p - height / 2 for p in positions], [r.p50_ms or 0 for r in timed], height, label="p50")
    axes.barh([p + height / 2 for p in positions], [r.p99_ms or 0 for r in timed], height, label="p99")
    for position, result in zip(positions, timed, strict=True):
        colour = {True: "tab:green", False: "tab:red", None: "tab:gray"}[result.met]
        if result.target:
            axes.annotate(
                f"{result.target}{'' if result.met is None else ('  met' if result.met else '  NOT MET')}",
                (max(result.p99_ms or 0, result.p50_ms or 0), position),
                xytext=(6, -3),
                textcoords="offset points",
                fontsize=7,
                color=colour,
            )
    axes.set_yticks(positions, labels, fontsize=8)
    axes.invert_yaxis()
    axes.set_xscale("log")
    # Room on the right for the targets' notes.
    longest = max(max(r.p99_ms or 0, r.p50_ms or 0) for r in timed)
    axes.set_xlim(right=longest * 30)
    axes.set_xlabel("milliseconds (log scale)")
    axes.set_title(title, fontsize=10)
    axes.legend(loc="upper right")
    axes.grid(axis="x", which="both", alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    defaults = SuiteOptions()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--memories", type=int, default=defaults.memories, help="memories of the generated data set")
    parser.add_argument("--users", type=int, default=defaults.users, help="users they are spread over (Zipf-like)")
    parser.add_argument("--repeat", type=int, default=defaults.repeat, help="requests per measured operation")
    parser.add_argument("--clients", type=int, default=defaults.clients, help="concurrent clients at saturation")
    parser.add_argument("--large", action="store_true", help="also measure search quality at 1,000,000 memories")
    parser.add_argument("--out", type=Path, default=BENCH / "results", help="where latest.json and latest.png go")
    args = parser.parse_args(argv)
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    options = SuiteOptions(
        memories=args.memories, users=args.users, repeat=args.repeat, clients=args.clients, large=args.large
    )

    started = time.perf_counter()
    results: list[Result] = []
    seconds: dict[str, float] = {}
    for part in parts:
        print(f"== {part} ==", file=sys.stderr, flush=True)
        part_started = time.perf_counter()
        results += importlib.import_module(part).run(options)
        seconds[part] = round(time.perf_counter() - part_started, 1)
    elapsed = time.perf_counter() - started

    about = machine()
    print(table(results))
    missed = [f"{r.group}: {r.operation}" for r in results if r.met is False]
    print(
        f"\n{len(results)} results in {elapsed / 60:.1f} min on {about['cores']} cores ({about['cpu']});"
        f" targets met: {sum(r.met is True for r in results)}, missed: {len(missed)}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": about,
        "options": vars(options),
        "seconds": {**seconds, "total": round(elapsed, 1)},
        "results": [result.as_dict() for result in results],
    }
    (args.out / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    title = f"memoryproject bench, {about['date'][:10]}, {about['cores']} cores, {options.memories:,} memories"
    drew = draw(results, args.out / "latest.png", title)
    chart = f" and {args.out / 'latest.png'}" if drew else " (no chart: pip install -r requirements/bench.txt)"
    print(f"wrote {args.out / 'latest.json'}{chart}")
    # Missed targets are results, not failures: the table says which.
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
