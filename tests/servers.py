"""What tests that start the real servers in subprocesses share: a free port,
an environment of their own, and the clean-up of embedded servers left behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

_ATTACH = "from memoryproject import embedded; embedded.attach(postgres=True, valkey=True)"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def own_environ(data_dir: Path) -> dict[str, str]:
    """This process's environment for a child with embedded servers of its own in data_dir."""
    environ = {
        name: value
        for name, value in os.environ.items()
        if name not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "MEMORYPROJECT_EMBEDDED"}
    }
    environ["MEMORYPROJECT_DATA_DIR"] = str(data_dir)
    return environ


def stop_embedded(data_dir: Path, environ: Mapping[str, str]) -> None:
    """Stop the embedded servers a failed test left running in data_dir:
    attaching and exiting does it (the last process attached stops them)."""
    subprocess.run(
        [sys.executable, "-c", _ATTACH],
        cwd=BASE_DIR,
        env={**environ, "MEMORYPROJECT_DATA_DIR": str(data_dir)},
        timeout=60,
        check=False,
    )
