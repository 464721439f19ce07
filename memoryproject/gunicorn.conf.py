"""gunicorn settings of `make run`; memoryproject.run passes bind, workers and logs on the command line.

No --preload: each worker imports the application itself, so no database
connection, pool thread or lock held by the arbiter is ever inherited by a fork.
"""

from __future__ import annotations

import os
from typing import Protocol


class _Worker(Protocol):
    pid: int


proc_name = "memoryproject"
# A worker loads the embedding model on its first request that needs it; that,
# plus a 1,000-memory batch, must fit well inside this.
timeout = 60
# Stopping must fit in run.py's own deadline, after which it kills the group.
graceful_timeout = 10
keepalive = 5
# Every worker touches a heartbeat file each second; on a disk-backed /tmp that
# can stall a worker (gunicorn's "blocking os.fchmod" note), on tmpfs it cannot.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
# gunicorn >= 25.1 opens a control socket at one fixed path per user
# ($HOME/.gunicorn/gunicorn.ctl): two servers (two checkouts, or the end-to-end
# test beside `make run`) would fight over it. run.py controls gunicorn with signals.
control_socket_disable = True


def child_exit(server: object, worker: _Worker) -> None:
    """In the arbiter, after a worker exited: its live gauges stop counting in
    /metrics (PROMETHEUS_MULTIPROC_DIR); its counters' files stay, and keep counting."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
