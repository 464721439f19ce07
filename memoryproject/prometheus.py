"""/metrics, in one process or summed over many (prometheus_client's multiprocess mode).

Without PROMETHEUS_MULTIPROC_DIR (tests, manage.py, a single process) the view
serves the process's default registry, as django-prometheus's own view does.

With it (`make run` sets it for gunicorn and the django-q2 cluster), every
process writes its counters, histograms and gauges to files in that directory
(prometheus_client decides that when it is first imported, so the variable must
be in the environment before the process starts). The view then reads them all
with a MultiProcessCollector, whatever process incremented them: a gunicorn
worker, a job worker, or one of either that has since exited (a dead process's
counters still count). Collectors that compute their samples at scrape time
(register_collector) have no files: they are added to that registry as well.
Metrics a process samples of itself (memoryproject.pool_metrics) are brought
up to date by register_refresh's callables before each scrape that process
answers; the other processes' files hold their own latest samples.
The default process, platform and gc collectors are left out in that mode:
they would describe only the one worker answering the scrape.

A "live" gauge (multiprocess_mode live*) must stop counting when its process
dies. gunicorn's arbiter reports its workers' deaths (child_exit in
gunicorn.conf.py); django-q2 recycles and kills its workers without telling
anyone, so each scrape also drops the live gauges of processes that no longer
exist (reap_dead_processes).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.registry import Collector

from memoryproject.processes import pid_alive

logger = logging.getLogger(__name__)

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# gauge_<live mode>_<pid>.db: the files mark_process_dead removes.
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")

_scrape_collectors: list[Collector] = []
_scrape_refreshes: list[Callable[[], None]] = []


def multiprocess_dir() -> str | None:
    """The directory of multiprocess mode, or None in single-process mode."""
    return os.environ.get(VARIABLE) or None


def register_collector(collector: Collector) -> None:
    """Register a collector that computes its samples on each scrape (no files in multiprocess mode)."""
    REGISTRY.register(collector)
    _scrape_collectors.append(collector)


def register_refresh(refresh: Callable[[], None]) -> None:
    """Run `refresh` before each scrape this process answers, to update metrics it samples of itself."""
    _scrape_refreshes.append(refresh)


def reap_dead_processes(path: str) -> list[int]:
    """Drop the live gauges of processes that no longer exist; the pids dropped."""
    dead = set()
    for name in os.listdir(path):
        match = _LIVE_GAUGE_FILE.match(name)
        if match and not pid_alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
    return sorted(dead)


def scrape_registry() -> CollectorRegistry:
    path = multiprocess_dir()
    if path is None:
        return REGISTRY
    if Path(path).is_dir():
        reap_dead_processes(path)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
    for collector in _scrape_collectors:
        registry.register(collector)
    return registry


def metrics(request: HttpRequest) -> HttpResponse:
    """GET /metrics (replaces django_prometheus.exports.ExportToDjangoView, which would leave out the collectors)."""
    for refresh in _scrape_refreshes:
        try:
            refresh()
        except Exception:  # a stale sample is better than a failed scrape
            logger.exception("metrics: %s failed", getattr(refresh, "__qualname__", refresh))
    return HttpResponse(generate_latest(scrape_registry()), content_type=CONTENT_TYPE_LATEST)
