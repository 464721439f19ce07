"""/metrics in prometheus_client's multiprocess mode: what several processes counted, summed.

PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is imported,
so the processes are a child Python (with the test database in its
environment) and two processes it forks, as django-q2 forks its workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from memoryproject import embedded, run
from memoryproject.prometheus import reap_dead_processes
from tests.servers import run_python

# Each forked worker counts transcripts, observes a duration, records a preload
# run and holds some cache; then exits (as a recycled job worker does). The
# parent then answers GET /metrics, as a gunicorn worker would.
_SCRIPT = """
import json, os, sys, time

import django

django.setup()

from django.test import Client

from memories.cache import SIZE_BYTES
from memories.metrics import RAW_PROCESSED, RAW_PROCESSING_SECONDS
from preload.runs import MEMORIES

pids = []
for amount, memories in ((2, 10), (3, 20)):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            RAW_PROCESSED.labels("processed").inc(amount)
            RAW_PROCESSING_SECONDS.observe(0.3)
            MEMORIES.set(memories)
            SIZE_BYTES.labels("memory", "l1").set(1000)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert status == 0, status
    pids.append(pid)
    time.sleep(0.01)  # the second run is the most recent by its clock too

response = Client().get("/metrics")
assert response.status_code == 200, response.status_code
json.dump({"pids": pids, "metrics": response.content.decode()}, sys.stdout)
"""

Samples = list[tuple[str, dict[str, str], float]]


def _scrape_after_two_workers(subprocess_env: dict[str, str], directory: Path) -> tuple[list[int], str, Samples]:
    result = run_python("-c", _SCRIPT, env={**subprocess_env, "PROMETHEUS_MULTIPROC_DIR": str(directory)})
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    samples = [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(answer["metrics"])
        for sample in family.samples
    ]
    return answer["pids"], answer["metrics"], samples


def _values(samples: Samples, name: str, **labels: str) -> list[float]:
    return [value for sample, sample_labels, value in samples if sample == name and sample_labels == labels]


@pytest.mark.django_db(transaction=True)
def test_metrics_sums_what_every_process_counted(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    pids, text, samples = _scrape_after_two_workers(subprocess_env, tmp_path)

    # Counters and histograms of both (dead) workers, summed, each once.
    assert _values(samples, "raw_processed_total", status="processed") == [5.0]
    assert _values(samples, "raw_processing_seconds_count") == [2.0]
    assert text.count('raw_processed_total{status="processed"}') == 1
    # The last preload run's value, whichever worker ran it, after it exited.
    assert _values(samples, "preload_memories") == [20.0]
    # A dead process's cache is no cache: its live gauge is gone.
    cache_pids = {labels.get("pid") for name, labels, _ in samples if name == "memory_cache_size_bytes"}
    assert not cache_pids & {str(pid) for pid in pids}
    # The collectors computed at scrape time are there too, once.
    assert _values(samples, "memory_metrics_database_up") == [1.0]
    assert _values(samples, "raw_queue_depth") == [0.0]
    # django-prometheus's metrics, from the files as well.
    assert any(name.startswith("django_http_requests_") for name, _, _ in samples)


def test_a_dead_process_s_live_gauges_are_reaped_and_its_counters_kept(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = [
        f"gauge_liveall_{dead.pid}.db",
        f"gauge_livesum_{dead.pid}.db",
        f"counter_{dead.pid}.db",
        f"gauge_mostrecent_{dead.pid}.db",
        f"gauge_liveall_{os.getpid()}.db",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")

    assert reap_dead_processes(str(tmp_path)) == [dead.pid]

    left = sorted(path.name for path in tmp_path.iterdir())
    assert left == sorted(
        [f"counter_{dead.pid}.db", f"gauge_mostrecent_{dead.pid}.db", f"gauge_liveall_{os.getpid()}.db"]
    )


def test_make_run_empties_its_metrics_directory_for_the_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "DATA_DIR", tmp_path / "data")
    config = run.Config(port=8123, workers=1)
    given = tmp_path / "given"
    given.mkdir()
    (given / "counter_1.db").write_bytes(b"")
    (given / "notes.txt").write_text("the operator's")
    environ = {"PROMETHEUS_MULTIPROC_DIR": str(given)}

    assert run.prepare_metrics_directory(environ, config) == given
    # Out of the supervisor's own environment: it serves no metrics.
    assert "PROMETHEUS_MULTIPROC_DIR" not in environ
    assert sorted(path.name for path in given.iterdir()) == ["notes.txt"]

    default = run.prepare_metrics_directory({}, config)
    assert default == (tmp_path / "data").resolve() / "prometheus" / "8123"
    assert default.is_dir()
