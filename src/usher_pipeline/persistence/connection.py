"""How a store reaches its DuckDB file: the lock file, the open (waiting out a process that
holds the file outside the lock), one transaction or one session over many operations.

Between operations a store holds neither a connection nor a lock; `connect()` takes both for
one operation and lets go of both after it. A transaction or a session belongs to the thread
that opened it: another thread of the same store queues for the lock and works on a
connection of its own, as a second store would.

No connection auto-installs or auto-loads an extension (a file that is not DuckDB must not
make a job download a scanner); `connect(external_access=False)`, which `query` uses, also
keeps DuckDB away from other files and the network.
"""

from __future__ import annotations

import errno
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Self

from usher_pipeline.persistence.catalog import ensure_internal
from usher_pipeline.persistence.errors import (
    StoreDiskFull,
    StoreError,
    StoreFileError,
    TransactionAborted,
)
from usher_pipeline.persistence.frames import is_disk_full
from usher_pipeline.persistence.locking import StoreLock
from usher_pipeline.settings import DEFAULT_LOCK_TIMEOUT_S

if TYPE_CHECKING:
    import duckdb

_DAMAGED = re.compile(
    r"Could not read enough bytes|not a valid DuckDB|Corrupt database file|Data Corruption|"
    r"does not match stored checksum|database has been invalidated"
)
_DUCKDB_HOLDER = re.compile(r"Conflicting lock is held in (.+?) \(PID (\d+)\)")
_SQLITE_MAGIC = b"SQLite format 3\x00"

# Every connection: no extension is installed or loaded behind the store's back.
NO_EXTENSIONS: dict[str, str | bool | int | float | list[str]] = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}

# The longest name the store derives from the database's: the staging file of a save,
# `.<name>.<pid>.<8 hex>.ingest.parquet` (see `_io.temp_path_for`).
_DERIVED_NAME_EXTRA = len("..4194304.01234567.ingest.parquet")


class _ThreadState(threading.local):
    """What one thread of a store holds: its transaction's connection, or its session's."""

    def __init__(self) -> None:
        self.conn: duckdb.DuckDBPyConnection | None = None
        self.writable = False
        self.held: duckdb.DuckDBPyConnection | None = None
        self.aborted = ""  # why DuckDB aborted this thread's transaction, once it has


def _check_name_length(db_path: Path) -> None:
    """Refuse a database name the file system cannot hold with the store's suffixes."""
    try:
        name_max = os.pathconf(db_path.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    size = len(os.fsencode(db_path.name))
    if size + _DERIVED_NAME_EXTRA > name_max:
        raise StoreFileError(
            f"database file name {db_path.name[:40]}... is {size} bytes long, and the file "
            f"system allows {name_max} bytes with the store's suffixes: point duckdb_path at a "
            f"name of at most {name_max - _DERIVED_NAME_EXTRA} bytes"
        )


class StoreConnection:
    """The lock, connection and transaction state of a store on one DuckDB file."""

    def __init__(self, db_path: str | Path, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        self.db_path = Path(db_path)
        try:
            _check_name_length(self.db_path)
            is_dir = self.db_path.is_dir()
        except OSError as exc:  # a path longer than the system allows
            raise StoreFileError(
                f"cannot use the database path {str(self.db_path)[:80]}... ({exc.strerror}): "
                "point duckdb_path at a shorter path"
            ) from None
        if is_dir:
            raise StoreFileError(
                f"database path {self.db_path} is a directory: point duckdb_path at a file "
                f"inside it, e.g. {self.db_path}/pipeline.duckdb"
            )
        try:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreFileError(
                f"cannot create the folder {self.db_path.parent} of the database "
                f"({exc.strerror}): point duckdb_path at a writable folder"
            ) from None
        self.lock_timeout = float(lock_timeout)
        self._lock = StoreLock(self.db_path, self.lock_timeout)
        self._thread = _ThreadState()
        self._closed = False

    # -- the calling thread's state --------------------------------------------------------

    @property
    def _conn(self) -> duckdb.DuckDBPyConnection | None:
        """The connection of this thread's transaction, or None outside one."""
        return self._thread.conn

    @_conn.setter
    def _conn(self, conn: duckdb.DuckDBPyConnection | None) -> None:
        self._thread.conn = conn

    @property
    def _conn_writable(self) -> bool:
        return self._thread.writable

    @_conn_writable.setter
    def _conn_writable(self, writable: bool) -> None:
        self._thread.writable = writable

    @property
    def _held(self) -> duckdb.DuckDBPyConnection | None:
        """The connection of this thread's session, or None outside one."""
        return self._thread.held

    @_held.setter
    def _held(self, conn: duckdb.DuckDBPyConnection | None) -> None:
        self._thread.held = conn

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Mark the store closed; it holds no connection between operations."""
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connections -----------------------------------------------------------------------

    @contextmanager
    def connect(
        self, write: bool = True, external_access: bool = True, readable: Sequence[Path] = ()
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """A DuckDB connection under the store's lock (exclusive when `write`), closed after.

        Inside this thread's `transaction()` or `session()` its connection is reused. Without
        `external_access` a new connection reads the database file only (no other files, no
        network) but those below the folders `readable`. A damaged file found by any statement
        becomes a StoreFileError.
        """
        if self._closed:
            raise StoreError(f"store {self.db_path} is closed: open a new PipelineStore")
        shared = self._conn if self._conn is not None else self._held
        if shared is not None:
            if self._conn is not None and write and not self._conn_writable:
                raise StoreError(
                    f"cannot write to {self.db_path} inside a read-only transaction: use "
                    "store.transaction() without read_only"
                )
            if self._conn is not None and self._thread.aborted:
                raise self._aborted_error()
            try:
                with self._damage_is_a_file_error():
                    yield shared
            except BaseException as exc:
                if self._conn is not None and not _usable(shared):
                    self._thread.aborted = _first_line(exc)
                raise
            return
        with self._lock.hold(exclusive=write) as deadline:
            conn = self._open(not write, deadline, external_access, readable)
            try:
                with self._damage_is_a_file_error():
                    yield conn
            finally:
                conn.close()

    @contextmanager
    def _damage_is_a_file_error(self) -> Iterator[None]:
        """Turn DuckDB's report of a damaged file (a checksum error, a short read), met by any
        statement, into the one-line StoreFileError that names the file and the repair."""
        try:
            yield
        except Exception as exc:  # DuckDB's own, or polars' when it streams a result
            if not isinstance(exc, StoreError) and _DAMAGED.search(str(exc)):
                raise StoreFileError(
                    f"database {self.db_path} is damaged ({_first_line(exc)}): move the file "
                    "away and rebuild it with `usher-pipeline repair`, or point duckdb_path "
                    "elsewhere"
                ) from None
            raise

    @contextmanager
    def transaction(self, read_only: bool = False) -> Iterator[Self]:
        """Run several operations under one lock and one transaction: all commit or none.

        The transaction is the calling thread's: other threads wait for the lock.
        """
        if self._conn is not None:
            yield self  # nested: part of the outer transaction
            return
        with self.connect(write=not read_only) as conn:
            self._conn, self._conn_writable = conn, not read_only
            try:
                conn.execute("BEGIN TRANSACTION")
                if not read_only:
                    ensure_internal(conn)
                yield self
                if self._thread.aborted:
                    raise self._aborted_error()
                conn.execute("COMMIT")
            except BaseException as exc:
                try:
                    conn.execute("ROLLBACK")
                except Exception:  # noqa: BLE001 - the original error matters more
                    pass
                if is_disk_full(exc) and not isinstance(exc, StoreDiskFull):
                    raise StoreDiskFull(
                        f"no space left on the device of {self.db_path}: free space there (or "
                        "move duckdb_path to a larger disk) and rerun; the transaction was "
                        "rolled back and committed tables are unchanged"
                    ) from None
                raise
            finally:
                self._conn, self._conn_writable = None, False
                self._thread.aborted = ""

    def _aborted_error(self) -> TransactionAborted:
        return TransactionAborted(
            f"a statement inside the transaction on {self.db_path} failed at run time "
            f"({self._thread.aborted}) and DuckDB cannot go on with it, so nothing of the "
            "transaction is committed: fix that call (or let its error leave the `with "
            "store.transaction()` block) and rerun"
        )

    @contextmanager
    def session(self) -> Iterator[Self]:
        """Hold the write lock and one connection for many operations, each committed on its own.

        Unlike `transaction()`, work done before a failure stays committed; unlike separate
        operations, the database is opened (and checkpointed at close) once. The session is
        the calling thread's.
        """
        if self._conn is not None or self._held is not None:
            raise StoreError(
                f"a session on {self.db_path} cannot start inside a transaction or another "
                "session: open it first"
            )
        with self.connect(write=True) as conn:
            self._held = conn
            try:
                yield self
            finally:
                self._held = None

    def _open(
        self,
        read_only: bool,
        deadline: float,
        external_access: bool = True,
        readable: Sequence[Path] = (),
    ) -> duckdb.DuckDBPyConnection:
        import duckdb

        config = dict(NO_EXTENSIONS)
        if not external_access and not readable:
            config["enable_external_access"] = False
        started = time.monotonic()
        delay = 0.005
        noted = read_only  # a writer holding the lock file says whom it waits for, once
        while True:
            try:
                conn = duckdb.connect(str(self.db_path), read_only=read_only, config=config)
                try:
                    # time-zone-aware columns load back in UTC, whatever the host's zone
                    conn.execute("SET TimeZone = 'UTC'")
                    if not external_access and readable:  # only these folders, then no more
                        folders = [str(Path(p).resolve()) + os.sep for p in readable]
                        conn.execute("SET allowed_directories = $folders", {"folders": folders})
                        conn.execute("SET enable_external_access = false")
                except BaseException:
                    conn.close()
                    raise
                self._lock.note_opened()  # whoever held the file outside the lock has let go
                return conn
            except duckdb.IOException as exc:
                message = str(exc)
                holder = _DUCKDB_HOLDER.search(message)
                if holder is None:
                    raise self._file_error(exc, writing=not read_only) from None
                who = f"PID {holder.group(2)} ({os.path.basename(holder.group(1))})"
                if not noted:
                    self._lock.note_waiting_for(who)
                    noted = True
                now = time.monotonic()
                if now >= deadline:
                    raise self._lock.timeout_error(now - started, who) from None
                time.sleep(min(delay, max(0.0, deadline - now)))
                delay = min(delay * 2, 0.1)
            except duckdb.Error as exc:
                raise self._file_error(exc, writing=not read_only) from None

    def _file_error(self, exc: Exception, writing: bool = False) -> StoreFileError:
        """The one-line error for a database file DuckDB cannot open or read, with the fix
        that fits: chmod for a read-only file, repair for a damaged one."""
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if writing and self.db_path.exists() and not os.access(self.db_path, os.W_OK):
            reason = os.strerror(errno.EROFS if _read_only_mount(self.db_path) else errno.EACCES)
            return StoreFileError(
                f"database file {self.db_path} is read-only ({reason}): make it writable "
                f"(chmod u+w {self.db_path}), or point duckdb_path at a writable copy"
            )
        if _is_sqlite(self.db_path):
            return StoreFileError(
                f"{self.db_path} is a SQLite database, not a DuckDB one: point duckdb_path at "
                "another file (a DuckDB database is created where none exists)"
            )
        return StoreFileError(
            f"cannot open {self.db_path} as a DuckDB database ({first[:200]}): move the file "
            "away and rebuild it with `usher-pipeline repair`, or point duckdb_path elsewhere"
        )

    @contextmanager
    def _write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A writable connection inside one transaction (the caller's, or a new one)."""
        if self._conn is not None:
            with self.connect(write=True) as conn:
                yield conn
            return
        with self.transaction():
            assert self._conn is not None
            yield self._conn

    @contextmanager
    def _read(self) -> Iterator[duckdb.DuckDBPyConnection | None]:
        """A read connection, or None when the database file does not exist yet."""
        if self._conn is None and not self.db_path.exists():
            yield None
            return
        with self.connect(write=False) as conn:
            yield conn


def _usable(conn: duckdb.DuckDBPyConnection) -> bool:
    """Whether the transaction of `conn` still runs statements (DuckDB aborts it for good
    when a statement fails at run time; parser, binder and catalog errors leave it open)."""
    import duckdb

    try:
        conn.execute("SELECT 1").fetchall()
    except duckdb.TransactionException:
        return False
    except duckdb.Error:
        return True  # a closed or invalidated connection: its own error says so
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def _read_only_mount(path: Path) -> bool:
    """Whether `path` lies on a file system mounted read-only."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _is_sqlite(path: Path) -> bool:
    """Whether the file starts as a SQLite database does."""
    try:
        with path.open("rb") as handle:
            return handle.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False


__all__ = ["NO_EXTENSIONS", "StoreConnection"]
