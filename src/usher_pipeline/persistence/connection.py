"""How a store reaches its DuckDB file: the lock file, the open (waiting out a process that
holds the file outside the lock), one transaction or one session over many operations.

Between operations a store holds neither a connection nor a lock; `connect()` takes both for
one operation and lets go of both after it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Self

from usher_pipeline.persistence.catalog import ensure_internal
from usher_pipeline.persistence.errors import StoreDiskFull, StoreError, StoreFileError
from usher_pipeline.persistence.frames import is_disk_full
from usher_pipeline.persistence.locking import StoreLock
from usher_pipeline.settings import DEFAULT_LOCK_TIMEOUT_S

if TYPE_CHECKING:
    import duckdb

_DAMAGED = re.compile(r"Could not read enough bytes|not a valid DuckDB|[Cc]orrupt|checksum")
_DUCKDB_HOLDER = re.compile(r"Conflicting lock is held in (.+?) \(PID (\d+)\)")


class StoreConnection:
    """The lock, connection and transaction state of a store on one DuckDB file."""

    def __init__(self, db_path: str | Path, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        self.db_path = Path(db_path)
        if self.db_path.is_dir():
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
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._conn_writable = False
        self._held: duckdb.DuckDBPyConnection | None = None  # see session()
        self._closed = False

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
    def connect(self, write: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """A DuckDB connection under the store's lock (exclusive when `write`), closed after.

        Inside `transaction()` the transaction's connection is reused.
        """
        if self._closed:
            raise StoreError(f"store {self.db_path} is closed: open a new PipelineStore")
        if self._conn is not None:
            if write and not self._conn_writable:
                raise StoreError(
                    f"cannot write to {self.db_path} inside a read-only transaction: use "
                    "store.transaction() without read_only"
                )
            yield self._conn
            return
        if self._held is not None:
            yield self._held
            return
        import duckdb

        with self._lock.hold(exclusive=write) as deadline:
            conn = self._open(read_only=not write, deadline=deadline)
            try:
                yield conn
            except duckdb.IOException as exc:  # a damaged file often opens, then fails to read
                if _DAMAGED.search(str(exc)):
                    raise self._file_error(exc) from None
                raise
            finally:
                conn.close()

    @contextmanager
    def transaction(self, read_only: bool = False) -> Iterator[Self]:
        """Run several operations under one lock and one transaction: all commit or none."""
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

    @contextmanager
    def session(self) -> Iterator[Self]:
        """Hold the write lock and one connection for many operations, each committed on its own.

        Unlike `transaction()`, work done before a failure stays committed; unlike separate
        operations, the database is opened (and checkpointed at close) once.
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

    def _open(self, read_only: bool, deadline: float) -> duckdb.DuckDBPyConnection:
        import duckdb

        started = time.monotonic()
        delay = 0.005
        noted = read_only  # a writer holding the lock file says whom it waits for, once
        while True:
            try:
                conn = duckdb.connect(str(self.db_path), read_only=read_only)
                # time-zone-aware columns load back in UTC, whatever the host's zone
                conn.execute("SET TimeZone = 'UTC'")
                self._lock.note_opened()  # whoever held the file outside the lock has let go
                return conn
            except duckdb.IOException as exc:
                message = str(exc)
                holder = _DUCKDB_HOLDER.search(message)
                if holder is None:
                    raise self._file_error(exc) from None
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
                raise self._file_error(exc) from None

    def _file_error(self, exc: Exception) -> StoreFileError:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
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


__all__ = ["StoreConnection"]
