"""Inter-process lock on a file beside the database (`<db>.lock`), with a bounded wait.

DuckDB lets one process open a file read-write and makes every other opener fail at once.
Jobs therefore queue on an advisory `flock` of a separate file before they open the
database; the holder writes its PID, host and command into that file so that a waiter that
gives up can name it.

The lock file reads

    <pid> <host> <command>          while a writer holds the lock
    waiting for <process>           while a process outside the lock holds the DuckDB file

The second line outlives its writer: a holder that gives up leaves it, the next holder carries
it over, and it goes only when an open of the DuckDB file succeeds. So whenever the lock
changes hands, a waiter that gives up still names the process to close.

A reader holds the lock shared and writes nothing; a writer that gives up waiting for readers
names them from the kernel's table of file locks (/proc/locks).
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

from usher_pipeline.persistence.errors import StoreFileError, StoreLockTimeout

_POLL_START = 0.002
_POLL_MAX = 0.05

# flock belongs to an open file description, so two handles in one process would block each
# other; one re-entrant lock per lock file keeps threads and nested stores of one process in
# line, and the depth counter lets a thread that already holds the file lock pass through.
_process_locks: dict[str, threading.RLock] = {}
_process_depth: dict[str, int] = {}
_registry_guard = threading.Lock()
_WAITING = "waiting for "


def _thread_lock(key: str) -> threading.RLock:
    with _registry_guard:
        lock = _process_locks.get(key)
        if lock is None:
            lock = _process_locks[key] = threading.RLock()
        return lock


def _parse(text: str) -> tuple[str, str]:
    """The holder line and the note of a process outside the lock ('' where absent)."""
    lines = text.splitlines()
    holder = lines[0] if lines and lines[0].split(" ", 1)[0].isdigit() else ""
    notes = [line.removeprefix(_WAITING) for line in lines if line.startswith(_WAITING)]
    return holder, notes[0] if notes else ""


def _compose(holder: str, note: str) -> bytes:
    return "".join(f"{line}\n" for line in (holder, note and _WAITING + note) if line).encode()


def _read(path: Path, fd: int | None = None) -> tuple[str, str]:
    """The lock file's holder line and note, read through `fd` when this process holds it."""
    try:
        data = path.read_bytes() if fd is None else os.pread(fd, 4096, 0)
    except OSError:
        return "", ""
    return _parse(data.decode("utf-8", errors="replace"))


def describe_holder(lock_path: Path) -> str:
    """'PID 4121 (python on node01)' from the lock file, or '' when it names nobody.

    When a process outside the lock holds the DuckDB file (a notebook), it is named too: it
    is the one to close. Between two holders, it is named alone.
    """
    holder, note = _read(lock_path)
    parts = holder.split(" ", 2)
    if len(parts) < 2:
        return note
    command = os.path.basename(parts[2].split(" ", 1)[0]) if len(parts) > 2 else "unknown"
    who = f"PID {parts[0]} ({command} on {parts[1]})"
    if note:
        who += f", which is waiting for {note} to close the database file"
    return who


def _command_of(pid: int) -> str:
    """The script (or else the program) process `pid` runs, as the holder line names it."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().decode("utf-8", errors="replace").split("\0")
    except OSError:
        return "unknown"
    script = argv[1] if len(argv) > 1 and argv[1] and not argv[1].startswith("-") else ""
    return os.path.basename(script or argv[0]) or "unknown"


def lockers(lock_path: Path) -> list[int]:
    """The PIDs of other processes holding a `flock` on the lock file, as /proc/locks lists
    them (readers hold it shared and do not write their name); [] where it cannot say."""
    try:
        stat = os.stat(lock_path)
        with open("/proc/locks", encoding="ascii", errors="replace") as handle:
            table = handle.read()
    except OSError:
        return []
    device = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    found: list[int] = []
    for line in table.splitlines():
        # "3: FLOCK  ADVISORY  READ  4121 00:2a:1234 0 EOF"; a waiter's line has "->"
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or fields[5] != device:
            continue
        pid = int(fields[4]) if fields[4].isdigit() else 0
        if pid and pid != os.getpid() and pid not in found:
            found.append(pid)
    return found


def describe_lockers(lock_path: Path) -> str:
    """'PID 4121 (python on node01), a reader' for the processes holding the lock file's
    flock without naming themselves in it, or '' when there are none to name."""
    pids = lockers(lock_path)
    if not pids:
        return ""
    host = socket.gethostname()
    named = [f"PID {pid} ({_command_of(pid)} on {host})" for pid in pids[:3]]
    more = f" and {len(pids) - 3} more" if len(pids) > 3 else ""
    return ", ".join(named) + more


class StoreLock:
    """The lock file of one database: exclusive for writers, shared for readers."""

    def __init__(self, db_path: Path, timeout: float) -> None:
        self.db_path = db_path
        self.path = db_path.with_name(db_path.name + ".lock")
        self.gate_path = db_path.with_name(db_path.name + ".lock.gate")
        self.timeout = timeout

    def timeout_error(self, waited: float, holder: str = "") -> StoreLockTimeout:
        """The one-sentence error for a wait that ran out."""
        who = holder or describe_holder(self.path) or describe_lockers(self.path)
        who = who or "another process"
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
            fd = self._open(exclusive)
            try:
                self._pass_gate(fd, exclusive, deadline, started)
                if exclusive:
                    self._write_holder(fd)
                _process_depth[key] = 1
                try:
                    yield deadline
                finally:
                    _process_depth[key] = 0
                    if exclusive:
                        self._release_holder(fd)
            finally:
                os.close(fd)  # closing releases the flock
        finally:
            thread_lock.release()

    def _open(self, exclusive: bool, path: Path | None = None) -> int:
        """A lock file's descriptor; a reader falls back to read-only on a read-only folder
        (flock needs no write access), a writer gets a StoreFileError naming the folder."""
        path = path or self.path
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            if not exclusive and path.exists():
                try:
                    return os.open(path, os.O_RDONLY)
                except OSError:
                    pass
            if path.exists() and os.access(path.parent, os.W_OK):
                raise StoreFileError(
                    f"cannot open the lock file {path} ({exc.strerror}): make that file "
                    f"writable (chmod u+w {path}) or delete it while no job runs"
                ) from None
            raise StoreFileError(
                f"cannot open the lock file {path} ({exc.strerror}): make "
                f"{path.parent} writable, or point duckdb_path at a writable folder"
            ) from None

    def _pass_gate(self, fd: int, exclusive: bool, deadline: float, started: float) -> None:
        """Take the lock file `fd` through the gate file `<db>.lock.gate`.

        Everyone holds the gate only while taking the lock, a writer exclusively: a waiting
        writer thus stops new readers at the gate and gets in once the current ones finish.
        Without it, readers that keep overlapping would hold the shared lock forever and
        starve every writer.
        """
        try:
            gate: int | None = self._open(exclusive, self.gate_path)
        except StoreFileError:
            if exclusive:
                raise
            gate = None  # a read-only folder without a gate: no writer can be waiting
        try:
            if gate is not None:
                self._acquire(gate, exclusive, deadline, started)
            self._acquire(fd, exclusive, deadline, started)
        finally:
            if gate is not None:
                os.close(gate)

    def note_waiting_for(self, who: str) -> None:
        """Record in the lock file, which this process holds exclusively, the process outside
        the lock that holds the DuckDB file, so that waiters that give up name the real blocker."""
        holder, _ = _read(self.path)
        self._rewrite(_compose(holder, who))

    def note_opened(self) -> None:
        """Drop the note of a process outside the lock once the DuckDB file has opened: that
        process has let go. Writers and readers call this after each open."""
        holder, note = _read(self.path)
        if note:
            self._rewrite(_compose(holder, ""))

    def _rewrite(self, data: bytes, fd: int | None = None) -> None:
        """Replace the lock file's content without a moment of emptiness: write, then cut the
        old tail. Naming is a courtesy to waiters: a failed write (a reader on a read-only
        folder, a full disk) leaves the file as it was and the lock as it is."""
        try:  # a second open file description: closing it leaves the flock in place
            target = os.open(self.path, os.O_RDWR) if fd is None else fd
        except OSError:
            return
        try:
            if data:
                os.pwrite(target, data, 0)
            os.ftruncate(target, len(data))
        except OSError:
            pass
        finally:
            if fd is None:
                os.close(target)

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

    def _write_holder(self, fd: int) -> None:
        """Name this process as the holder, carrying over the note of a process outside the
        lock that an earlier holder found holding the DuckDB file."""
        # `python -c` leaves '-c' in argv[0]: name the interpreter instead
        script = sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c", "-m") else ""
        command = " ".join([script, *sys.argv[1:2]]) if script else sys.executable
        _, note = _read(self.path, fd)
        self._rewrite(
            _compose(f"{os.getpid()} {socket.gethostname()} {command or 'python'}", note), fd
        )

    def _release_holder(self, fd: int) -> None:
        """Take this process's name out of the lock file (a waiter must not name a holder
        that has left), keeping the note of a process outside the lock."""
        _, note = _read(self.path, fd)
        self._rewrite(_compose("", note), fd)
