"""`make run`: the whole service in one terminal.

Attaches the embedded PostgreSQL and Valkey (for whichever of DATABASE_URL and
REDIS_URL is not set), migrates, collects static files, makes sure there is an
admin user and an API key, then runs gunicorn and the django-q cluster as
children and watches them. Ctrl-C stops the children, then this process exits,
which stops the embedded servers unless another process is still attached.

The children get DATABASE_URL, REDIS_URL and SECRET_KEY in their environment,
so they use the servers attached here instead of attaching themselves, and
PROMETHEUS_MULTIPROC_DIR (emptied at each start), so that /metrics sums the
metrics of every gunicorn and job worker (memoryproject.prometheus).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from django.core.exceptions import ImproperlyConfigured

from memoryproject.env import env_bool, env_int

BASE_DIR = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
ADMIN_USERNAME = "admin"
ACCOUNT_NAME = "default"
API_KEY_NAME = "default"
# gunicorn's graceful_timeout (10 s) fits inside; after this the children's process groups are killed.
STOP_TIMEOUT = 20.0
START_TIMEOUT = 60.0
POLL_INTERVAL = 0.2
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

EPILOG = """\
environment:
  PORT                    port to listen on, on 127.0.0.1 (default 8000)
  WEB_CONCURRENCY         gunicorn worker processes (default 2)
  EMBEDDING_THREADS       the model's threads per process (default 2; 1 in the job cluster)
  DATABASE_URL            PostgreSQL with pgvector; unset: the embedded server
  REDIS_URL               Redis or Valkey; unset: the embedded server
  SECRET_KEY              unset: one generated once and kept in the data directory
  MEMORYPROJECT_DATA_DIR  the embedded servers' data and credentials.json (default .data/)
  SERVE_STATIC            serve the admin's static files from Django (default true)
  PROMETHEUS_MULTIPROC_DIR  the children's metrics files, emptied at start
                          (default <data directory>/prometheus/<port>)
"""


class StartupError(Exception):
    """Something the user can fix, said in one line: no traceback."""


# -- configuration --------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    port: int
    workers: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def read_config(environ: Mapping[str, str]) -> Config:
    try:
        return Config(
            port=env_int("PORT", 8000, minimum=1, maximum=65535, environ=environ),
            workers=env_int("WEB_CONCURRENCY", 2, minimum=1, maximum=64, environ=environ),
        )
    except ImproperlyConfigured as error:
        raise StartupError(str(error)) from None


def ensure_port_free(config: Config) -> None:
    """Fail in a second with a clear message, rather than after gunicorn's five bind retries."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, config.port))
        except OSError as error:
            raise StartupError(
                f"Port {config.port} is in use ({error.strerror}): is `make run` already running? "
                "Stop it, or choose another port with PORT=8001 make run."
            ) from None


def prepare_environment(environ: MutableMapping[str, str]) -> None:
    """Attach the embedded servers the URLs do not replace, and put the URLs and SECRET_KEY in `environ`."""
    from memoryproject import embedded

    environ.setdefault("DJANGO_SETTINGS_MODULE", "memoryproject.settings")
    database_url = environ.get("DATABASE_URL", "")
    redis_url = environ.get("REDIS_URL", "")
    try:
        embedded_allowed = env_bool("MEMORYPROJECT_EMBEDDED", True, environ=environ)
    except ImproperlyConfigured as error:
        raise StartupError(str(error)) from None
    if embedded_allowed and not (database_url and redis_url):
        stack = embedded.attach(postgres=not database_url, valkey=not redis_url)
        environ["DATABASE_URL"] = database_url or stack.database_url or ""
        environ["REDIS_URL"] = redis_url or stack.redis_url or ""
    if not environ.get("SECRET_KEY"):
        environ["SECRET_KEY"] = embedded.secret_key()
    # The URLs given above would make the children's settings take this for
    # production (memoryproject.settings.PRODUCTION): HTTPS redirects and secure
    # cookies, with which the admin's login over this plain http could not work.
    environ.setdefault("MEMORYPROJECT_PRODUCTION", "false")


def prepare_metrics_directory(environ: MutableMapping[str, str], config: Config) -> Path:
    """The children's PROMETHEUS_MULTIPROC_DIR, created and emptied of the last run's files.

    Taken out of `environ` before anything here imports prometheus_client: this
    process only supervises, and its own metrics (migrations...) would be noise.
    By default one directory per port, so that a second `make run` on another
    port, on the same data directory, does not empty the first one's.
    """
    from memoryproject import embedded

    given = environ.pop(METRICS_DIR_VARIABLE, "")
    directory = Path(given).resolve() if given else embedded.DATA_DIR.resolve() / "prometheus" / str(config.port)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # Only prometheus_client's files: the directory may be the operator's.
        for stale in directory.glob("*.db"):
            stale.unlink()
    except OSError as error:
        raise StartupError(
            f"Cannot prepare the metrics directory {directory} ({error.strerror}); "
            f"set {METRICS_DIR_VARIABLE} to a writable directory."
        ) from None
    return directory


# -- one-time preparation (in this process, with Django set up) ------------------


def migrate() -> str:
    from django.core.management import call_command
    from django.db import DEFAULT_DB_ALIAS, connections
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
    pending = len(executor.migration_plan(executor.loader.graph.leaf_nodes()))
    if not pending:
        # Still run it: it also runs the system checks, which catch a broken
        # URLconf here rather than in every gunicorn worker.
        call_command("migrate", interactive=False, verbosity=0)
        return "up to date"
    print(f"Applying {pending} migrations…", flush=True)
    call_command("migrate", interactive=False, verbosity=0)
    return f"applied {pending} migrations"


def collect_static() -> str:
    from django.core.management import call_command

    output = io.StringIO()
    call_command("collectstatic", interactive=False, verbosity=1, stdout=output)
    return " ".join(output.getvalue().split())


@dataclass
class Credentials:
    username: str
    # None when the password was changed after it was generated: it is not ours to reset.
    password: str | None
    # The hash the password had when generated: while it is unchanged, the
    # stored password is still right, without paying for a PBKDF2 check.
    password_hash: str | None
    account: str
    api_key: str
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        data = {
            "username": self.username,
            "password": self.password,
            "password_hash": self.password_hash,
            "account": self.account,
            "api_key": self.api_key,
        }
        return json.dumps(data, indent=2) + "\n"


def load_credentials(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        print(f"Ignoring unreadable {path}: {error}", file=sys.stderr)
        return {}
    return data if isinstance(data, dict) else {}


def write_credentials(path: Path, credentials: Credentials) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    # Created 0600 from the start: the password is never readable by others, not even briefly.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(credentials.to_json())
    os.replace(temporary, path)


def _stored_str(stored: Mapping[str, object], key: str) -> str | None:
    value = stored.get(key)
    return value if isinstance(value, str) and value else None


def ensure_admin(stored: Mapping[str, object]) -> tuple[str | None, str | None, str | None]:
    """(password, password hash, note): create the admin on the first run, reuse what is stored after."""
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    user = user_model.objects.filter(username=ADMIN_USERNAME).first()
    if user is None:
        password = secrets.token_urlsafe(12)
        user = user_model.objects.create_superuser(username=ADMIN_USERNAME, email="", password=password)
        return password, user.password, f"created the superuser {ADMIN_USERNAME!r}"
    saved = _stored_str(stored, "password")
    if saved is not None and user.password == _stored_str(stored, "password_hash"):
        return saved, user.password, None
    if saved is not None and user.check_password(saved):
        # Same password, new hash (Django re-hashes when its hasher's cost rises).
        return saved, user.password, None
    note = (
        f"the password of {ADMIN_USERNAME!r} is not the one saved (changed, or the user was made elsewhere); "
        f"set one with `python manage.py changepassword {ADMIN_USERNAME}`"
    )
    return None, None, note


def ensure_api_key(stored: Mapping[str, object]) -> tuple[str, str | None]:
    """(key, note): reuse the stored key while it still authenticates, or make a new one."""
    from memories.models import Account, ApiKey, hash_api_key

    key = _stored_str(stored, "api_key")
    if key is not None:
        usable = ApiKey.objects.filter(
            key_hash=hash_api_key(key), revoked_at__isnull=True, account__is_active=True
        ).exists()
        if usable:
            return key, None
    account, _ = Account.objects.get_or_create(name=ACCOUNT_NAME)
    if not account.is_active:
        raise StartupError(f"The account {ACCOUNT_NAME!r} is deactivated; reactivate it in the admin.")
    _, key = ApiKey.generate(account=account, name=API_KEY_NAME)
    reason = "the stored one was revoked or is gone" if stored.get("api_key") else "first run"
    return key, f"created an API key for account {ACCOUNT_NAME!r} ({reason})"


def ensure_credentials(path: Path) -> Credentials:
    stored = load_credentials(path)
    password, password_hash, admin_note = ensure_admin(stored)
    api_key, key_note = ensure_api_key(stored)
    credentials = Credentials(
        username=ADMIN_USERNAME,
        password=password,
        password_hash=password_hash,
        account=ACCOUNT_NAME,
        api_key=api_key,
        notes=[note for note in (admin_note, key_note) if note],
    )
    if json.loads(credentials.to_json()) != stored:
        write_credentials(path, credentials)
    else:
        path.chmod(0o600)
    return credentials


def queue_startup_preload() -> str:
    """Queued for the job workers, so that serving starts before preloading ends."""
    from preload.tasks import enqueue_startup_preload

    run_id = enqueue_startup_preload()
    return f"queued run {run_id}" if run_id else "start-up preloading is off"


def close_database_connections() -> None:
    """Leave no connection, and no pool thread, behind: this process only supervises from now on."""
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        connection.close()
        # Only a pool that exists: the `pool` property would open one to close it.
        pools = getattr(connection, "_connection_pools", {})
        if connection.alias in pools:
            connection.close_pool()  # type: ignore[attr-defined]


def prepare(credentials_path: Path) -> Credentials:
    import django

    django.setup()
    print(f"Database: {migrate()}", flush=True)
    print(f"Static files: {collect_static()}", flush=True)
    credentials = ensure_credentials(credentials_path)
    for note in credentials.notes:
        print(f"Credentials: {note}", flush=True)
    print(f"Preload: {queue_startup_preload()}", flush=True)
    close_database_connections()
    return credentials


# -- children -------------------------------------------------------------------


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]

    def kill_group(self) -> None:
        # Each child leads its own process group: this reaches gunicorn's and
        # django-q's worker processes too. Only for killing: a graceful stop is
        # asked of the leader alone, which stops its workers in order (django-q's
        # workers die at once on a SIGTERM of their own, and the cluster then
        # waits for them until its task timeout).
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
            os.killpg(self.process.pid, signal.SIGKILL)


def _exit_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook that has the kernel send SIGTERM to the child if this process dies (even by SIGKILL)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the prctl took effect
            os._exit(1)

    return hook


def spawn(name: str, argv: Sequence[str], environ: Mapping[str, str]) -> Child:
    process = subprocess.Popen(
        list(argv),
        cwd=BASE_DIR,
        env={**environ, "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL,
        # Out of the terminal's process group: Ctrl-C reaches only this
        # process, which then stops the children in order, once.
        start_new_session=True,
        # Safe: by now this process runs no other thread (the database pool is closed).
        preexec_fn=_exit_with_parent(),
    )
    return Child(name=name, process=process)


def gunicorn_argv(config: Config) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        str(BASE_DIR / "memoryproject" / "gunicorn.conf.py"),
        "--bind",
        f"{HOST}:{config.port}",
        "--workers",
        str(config.workers),
        "--access-logfile",
        "-",
        "memoryproject.wsgi:application",
    ]


def qcluster_argv() -> list[str]:
    return [sys.executable, str(BASE_DIR / "manage.py"), "qcluster"]


def qcluster_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The job cluster's environment: one embedding thread per worker unless EMBEDDING_THREADS says otherwise.

    Its embedding (async stores, transcripts) is throughput work that nobody
    waits on; two threads let it take both cores from the requests being
    served beside it (an async store over HTTP: p50 8.4-8.9 ms with two, 7.1-7.8
    with one; p90 15-16 against 10-11 ms).
    """
    return {"EMBEDDING_THREADS": "1", **environ}


def stop_children(children: Sequence[Child], stopper: Stopper, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, wait up to `timeout` (or until Ctrl-C is pressed again), then SIGKILL what is left."""
    for child in children:
        if child.process.poll() is None:
            child.process.terminate()
    deadline = time.monotonic() + timeout
    signals_before = stopper.count
    while any(child.process.poll() is None for child in children):
        if time.monotonic() > deadline or stopper.count > signals_before:
            break
        time.sleep(0.05)
    for child in children:
        if child.process.poll() is None:
            print(f"{child.name} did not stop; killing it.", file=sys.stderr, flush=True)
            child.kill_group()
            child.process.wait()
        # Workers left behind by a leader that died abruptly.
        child.kill_group()


def describe_exit(child: Child) -> str:
    code = child.process.returncode
    if code is not None and code < 0:
        return f"{child.name} was killed by {signal.Signals(-code).name}"
    return f"{child.name} exited with code {code}"


def dead_child(children: Sequence[Child]) -> Child | None:
    return next((child for child in children if child.process.poll() is not None), None)


# Straight to 127.0.0.1: an HTTP(S)_PROXY from the environment must not be asked.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_until_serving(config: Config, children: Sequence[Child], stopper: Stopper) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if stopper.count:
            return
        dead = dead_child(children)
        if dead is not None:
            raise StartupError(f"{describe_exit(dead)} while starting; see its output above.")
        try:
            with _LOCAL.open(f"{config.url}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise StartupError(f"gunicorn did not answer {config.url}/health within {START_TIMEOUT:.0f} s.")
        time.sleep(POLL_INTERVAL)


def supervise(children: Sequence[Child], stopper: Stopper) -> int:
    """Until a stop signal (exit 0) or a child's death (exit 1)."""
    while not stopper.count:
        dead = dead_child(children)
        if dead is not None:
            print(f"\n{describe_exit(dead)} unexpectedly; stopping everything.", file=sys.stderr, flush=True)
            return 1
        time.sleep(POLL_INTERVAL)
    return 0


# -- signals --------------------------------------------------------------------


class Stopper:
    """Counts SIGINT, SIGTERM and SIGHUP. Before the children exist a signal
    interrupts the start-up (as Ctrl-C would); after, it only asks the loops to stop."""

    def __init__(self) -> None:
        self.count = 0
        self.supervising = False

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if not self.supervising:
            raise KeyboardInterrupt


# -- output ---------------------------------------------------------------------


def banner(config: Config, credentials: Credentials, credentials_path: Path, elapsed: float) -> str:
    password = credentials.password or "(unknown: changed since it was generated)"
    rows = [
        ("URL", f"{config.url}/"),
        ("Admin", f"{config.url}/admin/   user {credentials.username}   password {password}"),
        ("API key", f"{credentials.api_key}   (account {credentials.account!r}; Authorization: Bearer <key>)"),
        ("API docs", f"{config.url}/api/docs/"),
        ("Readiness", f"{config.url}/ready"),
        ("Saved in", str(credentials_path)),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [f"  {label.ljust(width)}  {value}" for label, value in rows]
    return "\n".join(
        ["", f"memoryproject is running (started in {elapsed:.1f} s)", "", *lines, "", "Ctrl-C to stop.", ""]
    )


# -- main -----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m memoryproject.run",
        description=(
            "Serve memoryproject: the embedded PostgreSQL and Valkey (unless given by URL), migrations, "
            "gunicorn and the django-q cluster, with an admin user and an API key created on the first run."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser.parse_args(argv)


def start(config: Config) -> tuple[Credentials, Path, Path]:
    ensure_port_free(config)
    metrics_dir = prepare_metrics_directory(os.environ, config)
    prepare_environment(os.environ)
    from memoryproject import embedded

    credentials_path = embedded.DATA_DIR / "credentials.json"
    return prepare(credentials_path), credentials_path, metrics_dir


def serve(
    config: Config,
    credentials: Credentials,
    credentials_path: Path,
    metrics_dir: Path,
    stopper: Stopper,
    started: float,
) -> int:
    stopper.supervising = True
    children: list[Child] = []
    children_environ = {**os.environ, METRICS_DIR_VARIABLE: str(metrics_dir)}
    try:
        children.append(spawn("gunicorn", gunicorn_argv(config), children_environ))
        children.append(spawn("qcluster", qcluster_argv(), qcluster_environ(children_environ)))
        wait_until_serving(config, children, stopper)
        if stopper.count:
            return 0
        print(banner(config, credentials, credentials_path, time.monotonic() - started), flush=True)
        return supervise(children, stopper)
    finally:
        if children:
            stopping = time.monotonic()
            print("\nStopping…", flush=True)
            stop_children(children, stopper)
            names = " and ".join(child.name for child in children)
            print(f"Stopped {names} in {time.monotonic() - stopping:.1f} s.", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parse_args(argv)
    started = time.monotonic()
    stopper = Stopper()
    stopper.install()
    try:
        config = read_config(os.environ)
        credentials, credentials_path, metrics_dir = start(config)
        return serve(config, credentials, credentials_path, metrics_dir, stopper, started)
    except StartupError as error:
        print(f"make run: {error}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\nInterrupted while starting.", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    # sys.exit runs the atexit hooks: embedded.detach stops the servers if this was the last process attached.
    sys.exit(main())
