"""A rate limit shared by every process on a host: one file-locked bucket per API.

The bucket is a token bucket of capacity one, kept as a single number in a file: the earliest
time the next request may start. A caller takes the lock, books the slot `max(now, next)`,
moves `next` on by `1 / rate`, releases the lock and sleeps until its slot. Every process
and thread that uses the same file therefore shares one limit, and the lock is held only to
read and write one number, never while waiting. A capacity of one sends no burst, so a
server that counts its requests over any second never sees more than the limit.

Why not a rate-limiting library: what is needed across processes is this one number under a
file lock (`filelock`, which the package already uses for its locks), and a library's
SQLite bucket brings its own schema and locking for the same result. Across cluster nodes a
file lock on a shared filesystem is not to be trusted; a Snakemake resource per API limits
the jobs that call it at once instead (docs/sources.md).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Final

from filelock import FileLock

from usher_pipeline.errors import UsherError

__all__ = ["RETRY_AFTER_MAX_S", "SharedPacer"]

#: The longest Retry-After honoured as it is; a longer one is cut to this.
RETRY_AFTER_MAX_S: Final = 600.0
#: A booked slot further ahead than this is not trusted (the clock went back): it is now.
STALE_AHEAD_S: Final = 2 * RETRY_AFTER_MAX_S


class PacingError(UsherError):
    """The bucket file of a rate limit cannot be used."""


class SharedPacer:
    """Paces calls to `rate_per_second`, shared by every user of `path` on this host."""

    def __init__(self, path: Path, rate_per_second: float) -> None:
        if not rate_per_second > 0:
            raise PacingError(
                f"the rate limit of {path.name} is {rate_per_second}: give a number above 0"
            )
        self.path = Path(path)
        self.interval = 1.0 / rate_per_second
        self.lock = FileLock(str(self.path) + ".lock")
        self.thread_lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PacingError(
                f"cannot create the rate-limit folder {self.path.parent} ({exc.strerror}): "
                "make cache_dir writable"
            ) from None

    def _read(self) -> float:
        try:
            return float(self.path.read_text() or 0.0)
        except (FileNotFoundError, ValueError):
            return 0.0  # no bucket yet, or one cut short by a kill: the next slot is now

    def _write(self, value: float) -> None:
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(repr(value))
        tmp.replace(self.path)

    def reserve(self) -> float:
        """Book the next slot and return how long to wait for it (seconds, >= 0)."""
        with self.thread_lock, self.lock:
            now = time.time()
            booked = self._read()
            # a slot further ahead than any wait the bucket books is from a clock set back
            slot = now if booked > now + STALE_AHEAD_S else max(now, booked)
            self._write(slot + self.interval)
        return slot - now

    def acquire(self) -> float:
        """Wait for the next slot; return the seconds waited."""
        wait = self.reserve()
        if wait > 0:
            time.sleep(wait)
        return wait

    def hold(self, seconds: float) -> None:
        """Let no one start a request for `seconds` (the server asked to wait: Retry-After)."""
        with self.thread_lock, self.lock:
            until = time.time() + seconds
            if until > self._read():
                self._write(until)
