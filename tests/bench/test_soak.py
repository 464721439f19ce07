"""bench/soak.py runs: a few seconds of every operation of the mix against the real server, on its own stack.

Speed and flatness are the soak's business at its real length: here only that
it reports every field, that nothing failed, and that its check of the
acknowledged writes found each of them in PostgreSQL once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.servers import run_python

pytestmark = pytest.mark.live_server_process

# The mix's operations (--mix names) and their rows' names.
OPERATIONS = {
    "get": "get by id",
    "list": "list 20 newest",
    "search_new": "search, new query",
    "search_repeated": "search, repeated query",
    "store": "store one",
    "store_async": "store one, async=true",
    "batch": "batch store",
    "transcript": "store_raw transcript",
}

# Tiny: every operation a dozen times or so, on a data set that generates in a few seconds.
ARGUMENTS = (
    *("--duration", "10", "--rate", "10", "--clients", "2", "--interval", "4"),
    *("--memories", "100", "--users", "8", "--batch-size", "5"),
    *("--mix", ",".join(f"{operation}=1" for operation in OPERATIONS)),
)


def test_a_short_soak_reports_and_finds_every_acknowledged_write(environ: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "soak.json"

    soak = run_python("bench/soak.py", *ARGUMENTS, "--out", str(out), env=environ, timeout=300)

    assert soak.returncode == 0, soak.stderr[-5000:]
    report = json.loads(out.read_text())
    assert report["errors"] == {"total": 0, "by_status": {}, "examples": []}
    assert report["requests"] == report["sent"] == 100
    assert report["throughput"] > 0
    rows = {row["operation"]: row for row in report["operations"]}
    assert set(rows) == set(OPERATIONS.values())
    for row in rows.values():
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"], row
    assert len(report["intervals"]) >= 2
    assert all(interval["memory"]["rss"]["total"] > 0 for interval in report["intervals"])

    sample = report["memory"]["samples"][-1]
    assert sample["processes"]["gunicorn master"] == 1
    assert sample["processes"]["gunicorn workers"] >= 1
    assert sample["processes"]["job cluster"] >= 1
    assert sample["rss"]["gunicorn workers"] > 0
    assert sample["rss"]["job cluster"] > 0
    assert sample["rss"]["total"] == sum(value for kind, value in sample["rss"].items() if kind != "total")
    assert sample["redis_used_memory"] > 0
    assert sample["database_bytes"] > 0
    flat = report["memory"]["flat"]
    assert {"rule", "growth_percent", "limit_percent", "flat"} <= set(flat)

    memories, transcripts = report["writes"]["memories"], report["writes"]["transcripts"]
    assert memories["acknowledged"] > 0
    assert transcripts["acknowledged"] > 0
    assert memories["missing"] == memories["duplicates"] == 0
    assert transcripts["missing"] == transcripts["duplicates"] == 0
    assert "error" not in transcripts["by_status"]

    verdict = report["verdict"]
    assert verdict["no_errors"] is True
    assert soak.stdout.strip().splitlines()[-1] == verdict["line"]
    assert verdict["line"].startswith(("verdict: PASS", "verdict: FAIL"))
