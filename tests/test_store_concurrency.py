"""Many real processes on one DuckDB file: parallel writers, appenders, readers, and foreign
holders of the database file or of its lock file, waited for or reported by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from usher_pipeline.persistence import PipelineStore, StoreLockTimeout

# Each worker announces itself with `ready.<n>` and starts work when `go` appears, so that all
# of them really run at once instead of in the order their interpreters finished starting.
START_TOGETHER = """
import pathlib, sys, time
sync = pathlib.Path(sys.argv[2])
(sync / f"ready.{sys.argv[3]}").touch()
while not (sync / "go").exists():
    time.sleep(0.005)
"""

WRITE_TEN_TABLES = (
    START_TOGETHER
    + """
import polars as pl
from usher_pipeline.persistence import PipelineStore
worker = int(sys.argv[3])
store = PipelineStore(sys.argv[1], lock_timeout=120)
for t in range(10):
    n = 100 * worker + t + 1
    frame = pl.DataFrame({"worker": [worker] * n, "i": list(range(n))})
    store.save_dataframe(frame, f"w{worker}_t{t}", description=f"worker {worker}")
print("done")
"""
)

APPEND_TO_ONE_TABLE = (
    START_TOGETHER
    + """
import polars as pl
from usher_pipeline.persistence import PipelineStore
worker = int(sys.argv[3])
store = PipelineStore(sys.argv[1], lock_timeout=120)
for batch in range(6):
    first = worker * 1000 + batch * 50
    frame = pl.DataFrame({"id": list(range(first, first + 50)), "worker": [worker] * 50})
    store.save_dataframe(frame, "shared_batches", replace=False)
print("done")
"""
)

# Replaces table `snapshot` again and again; generation g has 100 + g % 97 rows, all tagged g.
REWRITE_SNAPSHOT = (
    START_TOGETHER
    + """
import polars as pl
from usher_pipeline.persistence import PipelineStore
worker = int(sys.argv[3])
store = PipelineStore(sys.argv[1], lock_timeout=120)
for k in range(10):
    g = worker * 1000 + k + 1
    n = 100 + g % 97
    store.save_dataframe(pl.DataFrame({"gen": [g] * n, "i": list(range(n))}), "snapshot")
print("done")
"""
)

READ_SNAPSHOT = (
    START_TOGETHER
    + """
from usher_pipeline.persistence import PipelineStore
store = PipelineStore(sys.argv[1], lock_timeout=120)
seen = set()
for k in range(20):
    if k % 2:
        frame = store.load_dataframe("snapshot")
        checkpoint = None
    else:
        with store.transaction(read_only=True):
            frame = store.load_dataframe("snapshot")
            checkpoint = store.get_checkpoint("snapshot")
            stored = store.fingerprint("snapshot")
    gens = frame["gen"].unique().to_list()
    assert len(gens) == 1, f"rows of several generations at once: {gens}"
    g = gens[0]
    assert frame["i"].to_list() == list(range(100 + g % 97)), f"generation {g} is incomplete"
    if checkpoint is not None:
        assert checkpoint["row_count"] == frame.height, (checkpoint, frame.height)
        assert checkpoint["fingerprint"] == stored
    seen.add(g)
print("ok", len(seen))
"""
)

# Holds the DuckDB file as a notebook would (read-write unless told "read_only"), without the
# store's lock file.
HOLD_DUCKDB_FILE = """
import pathlib, sys, time, duckdb
conn = duckdb.connect(sys.argv[1], read_only=sys.argv[4:] == ["read_only"])
print("ready", flush=True)
time.sleep(float(sys.argv[2]))
pathlib.Path(sys.argv[3]).touch()  # written before the file is let go
conn.close()
"""

# Holds the store's lock file through a PipelineStore transaction with an uncommitted save.
HOLD_STORE_TRANSACTION = """
import pathlib, sys, time
import polars as pl
from usher_pipeline.persistence import PipelineStore
store = PipelineStore(sys.argv[1], lock_timeout=60)
with store.transaction():
    store.save_dataframe(pl.DataFrame({"x": [1, 2, 3]}), "held_table")
    print("ready", flush=True)
    time.sleep(float(sys.argv[2]))
    pathlib.Path(sys.argv[3]).touch()  # written before the commit and the release
"""


def python_command(code: str, *args: object) -> list[str]:
    """The command that runs `code` in a fresh interpreter of this environment."""
    return [sys.executable, "-c", textwrap.dedent(code), *(str(a) for a in args)]


def run_together(programs: list[str], db_path: Path, sync: Path) -> list[str]:
    """Run one process per program, released at one instant; their stdouts, failing on errors.

    Worker n gets the arguments `db_path sync n`.
    """
    sync.mkdir(parents=True, exist_ok=True)
    procs = [
        subprocess.Popen(
            python_command(code, db_path, sync, n),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, code in enumerate(programs)
    ]
    try:
        while len(list(sync.glob("ready.*"))) < len(procs):
            dead = [p for p in procs if p.poll() not in (None, 0)]
            if dead:
                pytest.fail(f"a worker failed while starting:\n{dead[0].communicate()[1]}")
            time.sleep(0.01)
        (sync / "go").touch()
        results = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    failures = [err for p, (_, err) in zip(procs, results, strict=True) if p.returncode != 0]
    assert not failures, failures[0]
    return [out for out, _ in results]


class Holder:
    """A background process that holds the database (file or lock) for a number of seconds."""

    def __init__(self, code: str, db_path: Path, seconds: float, marker: Path, *extra: str) -> None:
        self.marker = marker
        self.proc = subprocess.Popen(
            python_command(code, db_path, seconds, marker, *extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "ready":
            self.proc.kill()
            pytest.fail(f"holder did not start: {self.proc.communicate()[1]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def finish(self) -> int:
        """Wait for a normal exit; the exit code."""
        self.proc.communicate(timeout=120)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=60)


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    """Holders started by a test, killed at its end whatever happens."""
    started: list[Holder] = []
    yield started
    for holder in started:
        holder.kill()


def start_holder(
    holders: list[Holder], code: str, db: Path, seconds: float, tmp: Path, *extra: str
) -> Holder:
    holder = Holder(code, db, seconds, tmp / f"released.{len(holders)}", *extra)
    holders.append(holder)
    return holder


def assert_lock_timeout_message(message: str, db_path: Path, pid: int) -> None:
    """One sentence that names the database, the holder's PID and what to do."""
    assert str(db_path) in message
    assert f"PID {pid} " in message
    assert "wait" in message and "lock_timeout" in message
    assert "\n" not in message


# -- many writers -----------------------------------------------------------------------------


@pytest.mark.slow
def test_eight_processes_write_ten_tables_each(db_path: Path, tmp_path: Path) -> None:
    outputs = run_together([WRITE_TEN_TABLES] * 8, db_path, tmp_path / "sync")
    assert [o.strip() for o in outputs] == ["done"] * 8
    store = PipelineStore(db_path)
    checkpoints = store.list_checkpoints()
    assert len(checkpoints) == 80
    expected = {f"w{w}_t{t}": 100 * w + t + 1 for w in range(8) for t in range(10)}
    assert {c["table_name"]: c["row_count"] for c in checkpoints} == expected
    assert len(store.list_tables()) == 80
    counted = store.execute_query(
        " UNION ALL ".join(f"SELECT '{name}' AS t, count(*) AS n FROM {name}" for name in expected)
    )
    assert dict(counted.rows()) == expected
    for name in ("w0_t0", "w3_t7", "w7_t9"):
        frame = store.load_dataframe(name)
        assert frame.height == expected[name]
        assert frame["i"].to_list() == list(range(expected[name]))
        assert store.fingerprint(name) == store.get_checkpoint(name)["fingerprint"]
    assert [c["description"] for c in checkpoints if c["table_name"] == "w5_t0"] == ["worker 5"]


@pytest.mark.slow
def test_eight_processes_append_to_one_table(db_path: Path, tmp_path: Path) -> None:
    run_together([APPEND_TO_ONE_TABLE] * 8, db_path, tmp_path / "sync")
    store = PipelineStore(db_path)
    frame = store.load_dataframe("shared_batches")
    assert frame.height == 8 * 6 * 50
    expected_ids = sorted(w * 1000 + k for w in range(8) for k in range(300))
    assert sorted(frame["id"].to_list()) == expected_ids
    checkpoint = store.get_checkpoint("shared_batches")
    assert checkpoint["row_count"] == 2400
    assert checkpoint["fingerprint"] == store.fingerprint("shared_batches")


@pytest.mark.slow
def test_readers_never_see_a_half_written_table(db_path: Path, tmp_path: Path) -> None:
    store = PipelineStore(db_path)
    store.save_dataframe(pl.DataFrame({"gen": [0] * 100, "i": list(range(100))}), "snapshot")
    programs = [REWRITE_SNAPSHOT, READ_SNAPSHOT, REWRITE_SNAPSHOT, READ_SNAPSHOT]
    outputs = run_together(programs, db_path, tmp_path / "sync")
    assert outputs[0] == outputs[2] == "done\n"
    assert outputs[1].startswith("ok ") and outputs[3].startswith("ok ")
    final = store.load_dataframe("snapshot")
    g = final["gen"][0]
    assert final.height == 100 + g % 97 == store.get_checkpoint("snapshot")["row_count"]


# -- transactions seen from another process ---------------------------------------------------

READ_WHEN_POSSIBLE = """
import pathlib, sys
from usher_pipeline.persistence import PipelineStore, StoreLockTimeout
store = PipelineStore(sys.argv[1], lock_timeout=float(sys.argv[2]))
pathlib.Path(sys.argv[3]).touch()
try:
    with store.transaction(read_only=True):
        frame = store.load_dataframe("staged")
        checkpoint = store.get_checkpoint("staged")
except StoreLockTimeout:
    print("locked")
else:
    print(frame.height if frame is not None else "absent", checkpoint and checkpoint["row_count"])
"""


def test_save_inside_transaction_is_invisible_to_other_processes_until_commit(
    store: PipelineStore, tmp_path: Path, run_python
) -> None:
    waiting_marker = tmp_path / "waiting"
    with store.transaction():
        store.save_dataframe(pl.DataFrame({"x": [1]}), "staged")
        impatient = run_python(READ_WHEN_POSSIBLE, store.db_path, 0.3, tmp_path / "impatient")
        assert impatient.stdout.strip() == "locked"
        patient = subprocess.Popen(
            python_command(READ_WHEN_POSSIBLE, store.db_path, 120, waiting_marker),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        while not waiting_marker.exists() and patient.poll() is None:
            time.sleep(0.01)
        store.save_dataframe(pl.DataFrame({"x": [2, 3]}), "staged", replace=False)
    out, err = patient.communicate(timeout=120)
    assert patient.returncode == 0, err
    assert out.split() == ["3", "3"]  # only the committed state, never the single first row


def test_rolled_back_transaction_leaves_nothing_for_other_processes(
    store: PipelineStore, tmp_path: Path, run_python
) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.save_dataframe(pl.DataFrame({"x": [1]}), "staged")
        raise RuntimeError("job failed after its save")
    after = run_python(READ_WHEN_POSSIBLE, store.db_path, 30, tmp_path / "m")
    assert after.stdout.split() == ["absent", "None"]


# -- a foreign process holding the DuckDB file ------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["read_write", "read_only"])
def test_writer_waits_for_a_notebook_that_lets_go_in_time(
    db_path: Path, tmp_path: Path, holders: list[Holder], mode: str
) -> None:
    PipelineStore(db_path).save_dataframe(pl.DataFrame({"a": [1]}), "before")
    holder = start_holder(holders, HOLD_DUCKDB_FILE, db_path, 1.5, tmp_path, mode)
    store = PipelineStore(db_path, lock_timeout=60)
    row = store.save_dataframe(pl.DataFrame({"a": [1, 2]}), "after")
    assert holder.marker.exists()  # the save went through only once the holder let go
    assert row["row_count"] == 2
    assert holder.finish() == 0
    assert store.load_dataframe("after").height == 2
    assert store.has_checkpoint("before")


@pytest.mark.slow
def test_writer_reports_a_notebook_that_holds_on_too_long(
    db_path: Path, tmp_path: Path, holders: list[Holder], lock_wait_error
) -> None:
    PipelineStore(db_path).save_dataframe(pl.DataFrame({"a": [1]}), "before")
    holder = start_holder(holders, HOLD_DUCKDB_FILE, db_path, 300, tmp_path)
    store = PipelineStore(db_path, lock_timeout=1.0)
    with pytest.raises(StoreLockTimeout) as info:
        store.save_dataframe(pl.DataFrame({"a": [1, 2]}), "after")
    assert_lock_timeout_message(str(info.value), db_path, holder.pid)
    with pytest.raises(StoreLockTimeout, match=f"PID {holder.pid} "):
        store.load_dataframe("before")
    # the writer that gave up has left; whoever takes the lock next, a waiter names the notebook
    message, _ = lock_wait_error(db_path, "unnamed")
    assert f"is locked by PID {holder.pid} (python" in message
    message, other = lock_wait_error(db_path, "named")
    assert f"is locked by PID {other} (python on {os.uname().nodename})" in message
    assert f"which is waiting for PID {holder.pid} (python" in message
    holder.kill()
    assert not holder.marker.exists()
    assert store.load_dataframe("before").height == 1
    # that first open since the notebook let go, a reader's, dropped the note
    message, other = lock_wait_error(db_path, "named")
    assert f"PID {other} " in message and "waiting for" not in message
    message, other = lock_wait_error(db_path, "unnamed")  # named from the kernel's lock table
    assert f"is locked by PID {other} (python" in message and "waiting for" not in message
    assert not store.has_checkpoint("after")
    store.save_dataframe(pl.DataFrame({"a": [1, 2]}), "after")
    assert store.get_checkpoint("after")["row_count"] == 2


# -- another PipelineStore holding the lock file ---------------------------------------------


@pytest.mark.slow
def test_writer_waits_for_another_store_transaction(
    db_path: Path, tmp_path: Path, holders: list[Holder]
) -> None:
    holder = start_holder(holders, HOLD_STORE_TRANSACTION, db_path, 1.5, tmp_path)
    store = PipelineStore(db_path, lock_timeout=60)
    store.save_dataframe(pl.DataFrame({"a": [1]}), "mine")
    assert holder.marker.exists()
    assert holder.finish() == 0
    assert [c["table_name"] for c in store.list_checkpoints()] == ["held_table", "mine"]


@pytest.mark.slow
def test_writer_reports_another_store_transaction_that_holds_on_too_long(
    db_path: Path, tmp_path: Path, holders: list[Holder]
) -> None:
    holder = start_holder(holders, HOLD_STORE_TRANSACTION, db_path, 300, tmp_path)
    store = PipelineStore(db_path, lock_timeout=1.0)
    with pytest.raises(StoreLockTimeout) as info:
        store.save_dataframe(pl.DataFrame({"a": [1]}), "mine")
    message = str(info.value)
    assert_lock_timeout_message(message, db_path, holder.pid)
    assert "python" in message and os.uname().nodename in message
    with pytest.raises(StoreLockTimeout, match=f"PID {holder.pid} "):
        store.has_checkpoint("held_table")
    # killing the holder mid-transaction releases the lock and loses its uncommitted save
    holder.kill()
    assert not store.has_checkpoint("held_table")
    store.save_dataframe(pl.DataFrame({"a": [1]}), "mine")
    assert [c["table_name"] for c in store.list_checkpoints()] == ["mine"]


# -- a reader holding the lock file ----------------------------------------------------------

# Holds the store's lock file shared, through a read-only transaction.
HOLD_READ_TRANSACTION = """
import pathlib, sys, time
from usher_pipeline.persistence import PipelineStore
store = PipelineStore(sys.argv[1], lock_timeout=60)
with store.transaction(read_only=True):
    store.list_tables()
    print("ready", flush=True)
    time.sleep(float(sys.argv[2]))
    pathlib.Path(sys.argv[3]).touch()
"""


def test_writer_blocked_by_a_reader_names_the_readers_pid(
    db_path: Path, tmp_path: Path, holders: list[Holder]
) -> None:
    PipelineStore(db_path).save_dataframe(pl.DataFrame({"a": [1]}), "before")
    reader = start_holder(holders, HOLD_READ_TRANSACTION, db_path, 300, tmp_path)
    store = PipelineStore(db_path, lock_timeout=0.5)
    with pytest.raises(StoreLockTimeout) as info:
        store.save_dataframe(pl.DataFrame({"a": [1, 2]}), "after")
    assert_lock_timeout_message(str(info.value), db_path, reader.pid)
    assert f"PID {reader.pid} (python" in str(info.value)
    assert store.load_dataframe("before").height == 1  # readers do not block readers
    reader.kill()
    store.save_dataframe(pl.DataFrame({"a": [1, 2]}), "after")
    assert store.get_checkpoint("after")["row_count"] == 2
