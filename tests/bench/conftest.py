"""What the benchmarks' tests share: an environment whose servers are their own."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import free_port, own_environ, stop_embedded


@pytest.fixture
def environ() -> Iterator[dict[str, str]]:
    """A child's environment with its own data directory (and so its own embedded servers) and a free
    port for the server bench/http_load.py starts (BENCH_HTTP_PORT); its servers are stopped after."""
    # Under /tmp, whose short paths keep the Valkey socket inside the AF_UNIX limit.
    data_dir = Path(tempfile.mkdtemp(prefix="mp-bench-"))
    environ = own_environ(data_dir)
    environ.update(BENCH_HTTP_PORT=str(free_port()), PYTHONUNBUFFERED="1")
    yield environ
    for stack in (data_dir, data_dir / "bench-http"):
        if (stack / "handles").exists():
            stop_embedded(stack, environ)
    shutil.rmtree(data_dir, ignore_errors=True)
