"""`make bench` runs on a fresh machine: the whole suite at a tiny size, on its own embedded servers.

Numbers are not checked (speed is the benchmarks' business, not the tests'):
only that every part runs and reports, and that the table and the JSON come out.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.servers import run_python

pytestmark = pytest.mark.live_server_process

# Tiny: the test proves the suite runs, the numbers mean nothing at this size.
SIZES = ("--memories", "300", "--users", "15", "--repeat", "4", "--clients", "2")


def test_the_suite_runs_every_part_and_writes_its_results(environ: dict[str, str], tmp_path: Path) -> None:
    # No `manage.py migrate` first: the suite brings a fresh database's schema up to date itself.
    out = tmp_path / "results"

    suite = run_python("bench/suite.py", *SIZES, "--out", str(out), env=environ, timeout=900)

    assert suite.returncode == 0, suite.stderr[-5000:]
    report = json.loads((out / "latest.json").read_text())
    groups = {result["group"] for result in report["results"]}
    assert groups == {"micro", "preload", "recall", "http"}
    operations = {result["operation"] for result in report["results"]}
    assert {"retain_batch 100", "get by id, cache hit, 1 client", "list 20 newest, 1 client"} <= operations
    assert any(operation.startswith("recall@10 per user") for operation in operations)
    assert report["machine"]["cores"] == os.cpu_count()
    assert "targets met:" in suite.stdout
    assert "p50 ms" in suite.stdout
