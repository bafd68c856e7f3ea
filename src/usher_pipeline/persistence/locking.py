"""Inter-process lock on a file beside the database (`<db>.lock`), with a bounded wait.

DuckDB lets one process open a file read-write and makes every other opener fail at once.
Jobs therefore queue on an advisory `flock` of a separate file before they open the
database; the holder writes its PID, host and command into that file so that a waiter that
gives up can name it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from usher_pipeline.persistence.errors import StoreLockTimeout

_POLL_START = 0.002
_POLL_MAX = 0.05

# flock belongs to an open file description, so two handles in one process would block each
# other; one re-entrant lock per lock file keeps threads and nested stores of one process in
# line, and the depth counter lets a thread that already holds the file lock pass through.
_process_locks: dict[str, threading.RLock] = {}
_process_depth: dict[str, int] = {}
_registry_guard = threading.Lock()


def _thread_lock(key: str) -> threading.RLock:
    with _registry_guard:
        lock = _process_locks.get(key)
        if lock is None:
            lock = _process_locks[key] = threading.RLock()
        return lock


def describe_holder(lock_path: Path) -> str:
    """'PID 4121 (python on node01)' from the lock file, or '' when it names nobody."""
    try:
        text = lock_path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""
    parts = text.split(" ", 2)
    if len(parts) < 2 or not parts[0].isdigit():
        return ""
    pid, host = parts[0], parts[1]
    command = os.path.basename(parts[2].split(" ", 1)[0]) if len(parts) > 2 else "unknown"
    return f"PID {pid} ({command} on {host})"


class StoreLock:
    """The lock file of one database: exclusive for writers, shared for readers."""

    def __init__(self, db_path: Path, timeout: float) -> None:
        self.db_path = db_path
        self.path = db_path.with_name(db_path.name + ".lock")
        self.timeout = timeout

    def timeout_error(self, waited: float, holder: str = "") -> StoreLockTimeout:
        """The one-sentence error for a wait that ran out."""
        who = holder or describe_holder(self.path) or "another process"
        return StoreLockTimeout(
            f"database {self.db_path} is locked by {who} for {waited:.0f} s; another job or "
            "program is using it — wait for it to finish, or raise store.lock_timeout_seconds"
        )

    @contextmanager
    def hold(self, exclusive: bool = True, deadline: float | None = None) -> Iterator[float]:
        """Hold the lock; yields the monotonic deadline shared with the DuckDB open that follows."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        key = str(self.path.resolve())
        thread_lock = _thread_lock(key)
        started = time.monotonic()
        if not thread_lock.acquire(timeout=max(0.0, deadline - started)):
            raise self.timeout_error(time.monotonic() - started, "another thread of this process")
        try:
            depth = _process_depth.get(key, 0)
            if depth:
                _process_depth[key] = depth + 1
                try:
                    yield deadline
                finally:
                    _process_depth[key] -= 1
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                self._acquire(fd, exclusive, deadline, started)
                if exclusive:
                    self._write_holder(fd)
                _process_depth[key] = 1
                try:
                    yield deadline
                finally:
                    _process_depth[key] = 0
            finally:
                os.close(fd)  # closing releases the flock
        finally:
            thread_lock.release()

    def _acquire(self, fd: int, exclusive: bool, deadline: float, started: float) -> None:
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        delay = _POLL_START
        while True:
            try:
                fcntl.flock(fd, mode)
                return
            except BlockingIOError:
                now = time.monotonic()
                if now >= deadline:
                    raise self.timeout_error(now - started) from None
                time.sleep(min(delay, max(0.0, deadline - now)))
                delay = min(delay * 2, _POLL_MAX)

    @staticmethod
    def _write_holder(fd: int) -> None:
        command = " ".join(sys.argv[:2]) if sys.argv and sys.argv[0] else sys.executable
        line = f"{os.getpid()} {socket.gethostname()} {command or 'python'}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, line, 0)
