"""`make run` end to end: `python -m memoryproject.run` on a fresh data directory.

It starts its own embedded PostgreSQL and Valkey (not the ones this test
session uses), gunicorn and the django-q cluster; a second terminal works
against the same data; Ctrl-C stops all of it; a restart reuses the
credentials and is quick.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs in requirements/dev.txt
import pytest

from tests.metrics import Samples, parse_samples
from tests.servers import Service, free_port, own_environ, stop_embedded

pytestmark = pytest.mark.live_server_process

BASE_DIR = Path(__file__).resolve().parents[2]
FIRST_START_TIMEOUT = 180.0  # initdb and every migration, on a slow CI machine
RESTART_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


# Straight to 127.0.0.1, whatever HTTP_PROXY says.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _request(url: str, key: str | None = None, body: Any = None) -> tuple[int, Any]:
    """GET, or POST of `body` as JSON."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        with _LOCAL.open(urllib.request.Request(url, data=data, headers=headers), timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def _scrape(url: str) -> Samples:
    """GET /metrics of the server, parsed."""
    with _LOCAL.open(f"{url}/metrics", timeout=30) as response:
        return parse_samples(response.read().decode())


def _processes_of(data_dir: Path) -> list[psutil.Process]:
    """The embedded servers of this data directory (their command lines name it)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any(str(data_dir) in part for part in cmdline):
            found.append(process)
    return found


@dataclass
class Run(Service):
    """One `python -m memoryproject.run` and what it printed, with the processes it started."""

    started_children: list[psutil.Process] = field(default_factory=list)

    def wait_until_ready(self, timeout: float) -> None:
        """Until the banner (printed once /health answers); then its children are known."""
        super().wait_until_ready(timeout)
        self.started_children = self.children()
        assert len(self.started_children) >= 2, "gunicorn and qcluster"

    def interrupt(self) -> float:
        """Ctrl-C; seconds until the process exited."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"run did not exit within {STOP_TIMEOUT} s of SIGINT:\n{self.log()}")
        return time.monotonic() - started

    def kill(self) -> None:
        """After a failure: leave no process behind (Service.stop, then the children
        it started, even those a run that died left behind)."""
        self.stop(timeout=STOP_TIMEOUT)
        for child in self.started_children:
            if child.is_running():
                child.kill()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Under /tmp, whose short paths keep the Valkey socket inside the AF_UNIX limit.
    path = Path(tempfile.mkdtemp(prefix="mp-run-"))
    yield path
    if _processes_of(path):
        stop_embedded(path, os.environ)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def environ(data_dir: Path) -> dict[str, str]:
    environ = own_environ(data_dir)
    environ.update(PORT=str(free_port()), WEB_CONCURRENCY="1", PYTHONUNBUFFERED="1")
    return environ


@pytest.fixture
def runs(data_dir: Path) -> Iterator[list[Run]]:
    # Depends on data_dir so that it is torn down first: the runs are stopped
    # before data_dir's teardown looks for servers left running.
    started: list[Run] = []
    yield started
    for run in started:
        run.kill()


def _new_run(runs: list[Run], environ: dict[str, str], tmp_path: Path) -> Run:
    data_dir = Path(environ["MEMORYPROJECT_DATA_DIR"])
    run = Run(data_dir=data_dir, environ=environ, log_path=tmp_path / f"run-{len(runs) + 1}.log")
    runs.append(run)
    run.start()
    return run


def _alive(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _assert_stopped(run: Run, data_dir: Path) -> None:
    assert run.process is not None
    assert run.process.returncode == 0, run.log()
    alive = [child for child in run.started_children if _alive(child)]
    assert not alive, f"children still running: {alive}"
    assert not _processes_of(data_dir), "the embedded servers of the data directory are still running"
    assert not (data_dir / "postgres" / "postmaster.pid").exists()


def _wait_for(what: str, check: Callable[[], bool], run: Run, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s:\n{run.log()}"
        time.sleep(0.25)


def _assert_background_jobs_run(run: Run, key: str) -> None:
    """The job cluster's forked workers do real work: preload, transcript processing, embedding."""

    def startup_preload_finished() -> bool:
        runs = _request(f"{run.url}/memory/preload/status", key)[1]["last"]
        return any(r["trigger"] == "startup" and r["status"] == "succeeded" for r in runs)

    _wait_for("the start-up preload", startup_preload_finished, run)

    status, queued = _request(
        f"{run.url}/api/memory/default/store_raw",
        key,
        {
            "session_id": "e2e",
            "metadata": {"user_id": "e2e"},
            "session_data": "user: I'm allergic to peanuts.\nassistant: Noted.\nuser: I prefer window seats.",
        },
    )
    assert status == 202, queued
    session_url = f"{run.url}/api/memory/default/session/e2e"
    _wait_for("the transcript's processing", lambda: _request(session_url, key)[1]["status"] == "processed", run)
    session = _request(session_url, key)[1]
    assert session["summary"]
    assert len(session["memories"]) >= 2, session

    status, stored = _request(
        f"{run.url}/memory/memories?async=true", key, {"user_id": "e2e", "content": "User keeps bees in the garden"}
    )
    assert (status, stored["status"]) == (202, "pending"), stored
    search = f"{run.url}/memory/relevant?user_id=e2e&query=apiary+hobby&limit=3"

    def found_by_similarity() -> bool:
        hits = _request(search, key)[1]["results"]
        return any(hit["id"] == stored["id"] and hit["score_parts"]["similarity"] > 0 for hit in hits)

    _wait_for("the async write's embedding", found_by_similarity, run)


def test_make_run_serves_shares_and_stops(
    runs: list[Run], environ: dict[str, str], data_dir: Path, tmp_path: Path
) -> None:
    run = _new_run(runs, environ, tmp_path)
    run.wait_until_ready(FIRST_START_TIMEOUT)

    credentials_path = data_dir / "credentials.json"
    assert credentials_path.stat().st_mode & 0o777 == 0o600
    credentials = json.loads(credentials_path.read_text())
    assert credentials["username"] == "admin"
    assert credentials["password"]
    assert credentials["api_key"].startswith("mp_")
    banner = run.log()
    assert credentials["password"] in banner
    assert credentials["api_key"] in banner
    assert f"{run.url}/admin/" in banner

    status, body = _request(f"{run.url}/ready")
    assert (status, body["status"]) == (200, "ready"), body
    status, schema = _request(f"{run.url}/api/schema/?format=json")
    assert status == 200
    assert schema["openapi"].startswith("3.")
    # Static files come through gunicorn too: the admin has its CSS.
    with _LOCAL.open(f"{run.url}/static/admin/css/base.css", timeout=10) as response:
        assert response.status == 200

    memories = f"{run.url}/memory/memories?user_id=probe"
    assert _request(memories, credentials["api_key"])[0] == 200
    assert _request(memories, "mp_not-a-key")[0] == 401

    _assert_background_jobs_run(run, credentials["api_key"])
    # Counted only in the job workers, shown by gunicorn's: /metrics sums every process's metrics files.
    scraped = _scrape(run.url)
    assert scraped.get(("raw_processed_total", (("status", "processed"),)), 0) >= 1, scraped
    assert scraped.get(("preload_runs_total", (("status", "succeeded"),)), 0) >= 1, scraped
    assert scraped.get(("memory_metrics_database_up", ())) == 1, scraped
    assert any(data_dir.joinpath("prometheus", environ["PORT"]).glob("counter_*.db"))

    # A second terminal: attaches to the same servers, writes to the same
    # database, and leaves the servers running when it exits.
    second = subprocess.run(
        [sys.executable, "manage.py", "create_api_key", "second"],
        cwd=BASE_DIR,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert second.returncode == 0, second.stderr
    second_key = second.stdout.strip()
    assert second.stdout == second_key + "\n"
    assert _request(memories, second_key)[0] == 200
    assert _request(f"{run.url}/ready")[1]["status"] == "ready"

    # A second `make run` while one is serving fails at once, and stops nothing.
    duplicate = subprocess.run(
        [sys.executable, "-m", "memoryproject.run"],
        cwd=BASE_DIR,
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert duplicate.returncode == 1
    assert f"Port {environ['PORT']} is in use" in duplicate.stderr
    assert _request(f"{run.url}/ready")[1]["status"] == "ready"

    run.interrupt()
    _assert_stopped(run, data_dir)

    # The restart: nothing to migrate, the same credentials, ready in seconds.
    restart = _new_run(runs, environ, tmp_path)
    restart.wait_until_ready(RESTART_TIMEOUT)
    assert json.loads(credentials_path.read_text()) == credentials
    assert credentials["password"] in restart.log()
    assert credentials["api_key"] in restart.log()
    assert "Database: up to date" in restart.log()
    assert _request(memories, second_key)[0] == 200

    restart.interrupt()
    _assert_stopped(restart, data_dir)
