"""django-q2 tasks of preloading: thin wrappers that take ids."""

from __future__ import annotations

from preload.models import PreloadRun, RunStatus
from preload.runs import run_execute


def execute_preload_run(run_id: str) -> str:
    """Execute a recorded run (queued by POST /memory/preload/trigger); its status when done."""
    run = PreloadRun.objects.get(pk=run_id)
    if run.status != RunStatus.RUNNING or run.finished_at is not None:
        return str(run.status)  # a retried task finds the run already done
    return str(run_execute(run=run).status)
