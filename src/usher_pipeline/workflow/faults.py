"""Fault-injection points for the reliability tests; inert unless USHER_FAULT_POINT is set.

`USHER_FAULT_POINT=<point>` (or `<point>:<table>` to hit the save of one table only) makes
the process that reaches that point kill itself with SIGKILL, as the OOM killer or a power
loss would: no `finally`, no `atexit`, no flush. The points sit at the instants where a
half-done save (POINTS) or head-node ingest (INGEST_POINTS) could leave the store and the
files on disk disagreeing.
"""

from __future__ import annotations

import os
import signal

FAULT_VARIABLE = "USHER_FAULT_POINT"
POINTS = (
    "after_sentinel_temp_write",  # the sentinel's temporary Parquet is written, nothing committed
    "inside_transaction",  # table and checkpoint written inside the open transaction, no COMMIT
    "after_commit_before_rename",  # committed; the sentinel still has its temporary name
    "after_rename_before_steplog",  # the sentinel is in place; the step log is not written
)
INGEST_POINTS = ("after_ingest_commit",)  # head-node ingest: this table committed, not the next
HISTORY_POINTS = (
    "history_after_objects",  # a run's table versions are kept, its run record is not written
    "history_gc_between",  # gc removed some run records, not yet the versions only they named
)


def fault_point(point: str, table: str) -> None:
    """SIGKILL this process if USHER_FAULT_POINT names `point` (and `table`, when it names one)."""
    wanted = os.environ.get(FAULT_VARIABLE)
    if not wanted:
        return
    name, _, only = wanted.partition(":")
    if name == point and (not only or only == table):
        os.kill(os.getpid(), signal.SIGKILL)
