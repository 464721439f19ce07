"""The memory a running server holds: its processes from /proc, Redis's used_memory, the database's size.

Used by bench/soak.py to see whether memory stays flat under a long load.

The processes are found by ancestry from the server's own process
(`python -m memoryproject.run`, the supervisor): its gunicorn child is the
master and the master's children are the workers; its qcluster child and all
below it are the django-q2 cluster (sentinel, monitor, pusher, workers, guard).
Ancestry, not command lines: gunicorn and django-q2 may retitle their processes.

Per process:
- rss: resident pages (/proc/PID/statm), what `ps` and `top` call its memory.
  Summed over forked processes it counts their shared pages (the interpreter,
  numpy's libraries, what a fork inherited and nobody wrote to since) once per
  process, so the sum overstates the total;
- pss: its proportional share of each page (/proc/PID/smaps_rollup): summed,
  the real total. None where the kernel does not say.

Redis: INFO's used_memory (what its allocator holds for data, not its RSS).
PostgreSQL: pg_database_size of the server's database (tables, indexes, TOAST).
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

_PROC = Path("/proc")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
# The kinds, in the order they are printed; `total` is all of them.
KINDS = ("gunicorn master", "gunicorn workers", "job cluster", "supervisor")


@dataclass(frozen=True)
class MemorySample:
    # Seconds since the load started (negative: before it).
    at: float
    # Bytes by kind (KINDS) and "total".
    rss: dict[str, int]
    pss: dict[str, int | None]
    # Processes by kind.
    processes: dict[str, int]
    # The gunicorn workers' pids: a new one means a worker was replaced (crashed, timed out, recycled).
    worker_pids: list[int] = field(default_factory=list)
    redis_used_memory: int | None = None
    database_bytes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": round(self.at, 2),
            "rss": self.rss,
            "pss": self.pss,
            "processes": self.processes,
            "worker_pids": self.worker_pids,
            "redis_used_memory": self.redis_used_memory,
            "database_bytes": self.database_bytes,
        }


def _read(path: Path) -> str | None:
    """A /proc file's text, None if its process is gone (or not ours to read)."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _children() -> dict[int, list[int]]:
    """Every process's children, from each /proc/PID/stat's parent pid."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _read(entry / "stat")
        if stat is None:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
        children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry.name))
    return children


def _subtree(pid: int, children: dict[int, list[int]]) -> list[int]:
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, ()))
    return found


def _command(pid: int) -> str:
    return (_read(_PROC / str(pid) / "cmdline") or "").replace("\0", " ")


def _rss(pid: int) -> int | None:
    statm = _read(_PROC / str(pid) / "statm")
    return None if statm is None else int(statm.split()[1]) * _PAGE_BYTES


def _pss(pid: int) -> int | None:
    rollup = _read(_PROC / str(pid) / "smaps_rollup")
    for line in (rollup or "").splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return None


def server_processes(supervisor: int) -> dict[str, list[int]]:
    """The server's processes by kind (KINDS), below its supervisor's pid."""
    children = _children()
    kinds: dict[str, list[int]] = {kind: [] for kind in KINDS}
    kinds["supervisor"].append(supervisor)
    for child in children.get(supervisor, ()):
        command = _command(child)
        if "gunicorn" in command:
            kinds["gunicorn master"].append(child)
            for worker in children.get(child, ()):
                kinds["gunicorn workers"].extend(_subtree(worker, children))
        elif "qcluster" in command:
            kinds["job cluster"].extend(_subtree(child, children))
    return kinds


def process_environment(pid: int) -> dict[str, str]:
    """A process's environment as it was started (/proc/PID/environ)."""
    raw = _read(_PROC / str(pid) / "environ") or ""
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


class ServerMemory:
    """Samples of one server's memory. Redis and PostgreSQL are asked on connections of their own."""

    def __init__(self, supervisor: int, database_url: str | None) -> None:
        self.supervisor = supervisor
        self.redis: redis.Redis | None = None
        self.database: psycopg.Connection[tuple[Any, ...]] | None = None
        # The cache the server uses: the REDIS_URL its supervisor gave gunicorn
        # (given, or that of the embedded Valkey it attached).
        masters = server_processes(supervisor)["gunicorn master"]
        redis_url = process_environment(masters[0]).get("REDIS_URL") if masters else None
        if redis_url:
            self.redis = redis.Redis.from_url(redis_url, socket_timeout=5)
        if database_url:
            self.database = psycopg.connect(database_url, autocommit=True)

    def sample(self, at: float) -> MemorySample:
        kinds = server_processes(self.supervisor)
        rss: dict[str, int] = {}
        pss: dict[str, int | None] = {}
        for kind, pids in kinds.items():
            rss[kind] = sum(_rss(pid) or 0 for pid in pids)
            shares = [_pss(pid) for pid in pids]
            pss[kind] = None if any(share is None for share in shares) else sum(share or 0 for share in shares)
        rss["total"] = sum(rss[kind] for kind in KINDS)
        parts = [pss[kind] for kind in KINDS]
        pss["total"] = None if any(part is None for part in parts) else sum(part or 0 for part in parts)
        return MemorySample(
            at=at,
            rss=rss,
            pss=pss,
            processes={kind: len(pids) for kind, pids in kinds.items()},
            worker_pids=sorted(kinds["gunicorn workers"]),
            redis_used_memory=self._redis_used_memory(),
            database_bytes=self._database_bytes(),
        )

    def _redis_used_memory(self) -> int | None:
        if self.redis is None:
            return None
        try:
            return int(self.redis.info("memory")["used_memory"])
        except redis.RedisError:
            return None

    def _database_bytes(self) -> int | None:
        if self.database is None:
            return None
        try:
            row = self.database.execute("SELECT pg_database_size(current_database())").fetchone()
        except psycopg.Error:
            return None
        return None if row is None else int(row[0])

    def close(self) -> None:
        if self.redis is not None:
            with contextlib.suppress(redis.RedisError):
                self.redis.close()
        if self.database is not None:
            self.database.close()
