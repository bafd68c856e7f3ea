"""Threads sharing one PipelineStore on a real DuckDB file behave like separate stores: each
waits for the lock and commits on its own, and none joins another's transaction."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from usher_pipeline.persistence import PipelineStore, StoreLockTimeout
from usher_pipeline.persistence.errors import (
    InvalidFrame,
    QueryFailed,
    ReadOnlyQuery,
    TransactionAborted,
)

WAIT_S = 60.0


class Worker(threading.Thread):
    """A thread running `work`, keeping its exception for the test to raise."""

    def __init__(self, work: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.work = work
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.work()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc
        finally:
            self.done.set()

    def finish(self) -> None:
        self.join(WAIT_S)
        assert not self.is_alive(), "the thread did not finish"
        if self.error is not None:
            raise self.error


class Holding:
    """Thread A inside `store.transaction()` (or `session()`) after one save, until released;
    it then commits, or rolls back when `fail`."""

    def __init__(self, store: PipelineStore, kind: str = "transaction", fail: bool = False):
        self.inside = threading.Event()
        self.release = threading.Event()

        def hold() -> None:
            scope = store.transaction() if kind == "transaction" else store.session()
            try:
                with scope:
                    store.save_dataframe(pl.DataFrame({"a": [1, 2, 3]}), "from_a")
                    self.inside.set()
                    assert self.release.wait(WAIT_S)
                    if fail:
                        raise RuntimeError("thread A fails after its save")
            except RuntimeError:
                pass

        self.thread = Worker(hold)
        self.thread.start()
        assert self.inside.wait(WAIT_S), self.thread.error

    def finish(self) -> None:
        self.release.set()
        self.thread.finish()


def save_in_thread(store: PipelineStore, name: str, rows: int) -> Worker:
    frame = pl.DataFrame({"b": list(range(rows))})
    worker = Worker(lambda: store.save_dataframe(frame, name))
    worker.start()
    return worker


@pytest.mark.parametrize("fail", [False, True], ids=["commit", "rollback"])
def test_a_save_waits_for_another_threads_transaction_and_commits_on_its_own(
    store: PipelineStore, fail: bool
) -> None:
    a = Holding(store, fail=fail)
    b = save_in_thread(store, "from_b", 2)
    assert not b.done.wait(0.5), "thread B's save returned while thread A held the store"
    assert b.error is None
    a.finish()
    b.finish()
    expected = ["from_b"] if fail else ["from_a", "from_b"]
    assert store.list_tables() == expected
    assert [c["table_name"] for c in store.list_checkpoints()] == expected
    checkpoint = store.get_checkpoint("from_b")
    assert checkpoint is not None and checkpoint["row_count"] == 2
    assert checkpoint["fingerprint"] == store.fingerprint("from_b")


def test_a_save_waits_for_another_threads_session(store: PipelineStore) -> None:
    a = Holding(store, kind="session")
    b = save_in_thread(store, "from_b", 4)
    assert not b.done.wait(0.5), "thread B's save joined thread A's session"
    a.finish()
    b.finish()
    assert store.list_tables() == ["from_a", "from_b"]
    assert store.row_count("from_b") == 4


def test_another_threads_reads_see_only_committed_tables(store: PipelineStore) -> None:
    a = Holding(store, fail=True)
    seen: list[object] = []
    reader = Worker(lambda: seen.append(store.load_dataframe("from_a")))
    reader.start()
    assert not reader.done.wait(0.3)  # a read waits for the writer too
    a.finish()
    reader.finish()
    assert seen == [None]


def test_a_thread_that_waits_too_long_names_the_other_thread(db_path: Path) -> None:
    store = PipelineStore(db_path, lock_timeout=0.3)
    a = Holding(store)
    b = save_in_thread(store, "from_b", 1)
    b.join(WAIT_S)
    a.finish()
    assert isinstance(b.error, StoreLockTimeout)
    assert "another thread of this process" in str(b.error)
    assert store.list_tables() == ["from_a"]


def test_many_threads_saving_at_once_all_commit_with_their_checkpoints(
    store: PipelineStore,
) -> None:
    threads, tables = 8, 4
    start = threading.Barrier(threads)

    def work(t: int) -> Callable[[], None]:
        def save_all() -> None:
            start.wait(WAIT_S)
            for k in range(tables):
                n = 10 * t + k + 1
                frame = pl.DataFrame({"thread": [t] * n, "i": list(range(n))})
                store.save_dataframe(frame, f"t{t}_k{k}", description=f"thread {t}")

        return save_all

    workers = [Worker(work(t)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.finish()
    expected = {f"t{t}_k{k}": 10 * t + k + 1 for t in range(threads) for k in range(tables)}
    checkpoints = store.list_checkpoints()
    assert {c["table_name"]: c["row_count"] for c in checkpoints} == expected
    assert store.list_tables() == sorted(expected)
    for c in checkpoints:
        assert c["fingerprint"] == store.fingerprint(c["table_name"])
        assert c["description"] == f"thread {c['table_name'][1]}"
        frame = store.load_dataframe(c["table_name"])
        assert frame is not None and frame["i"].to_list() == list(range(expected[c["table_name"]]))


# -- a refused call inside a transaction leaves it usable ------------------------------------


def test_a_refused_save_inside_a_transaction_leaves_it_usable(store: PipelineStore) -> None:
    store.save_dataframe(pl.DataFrame({"x": [1.5, 2.5]}), "numbers")
    with store.transaction():
        with pytest.raises(InvalidFrame):
            store.save_dataframe(pl.DataFrame({"x": [object()]}), "objects")
        with pytest.raises(InvalidFrame):
            store.save_dataframe(pl.DataFrame({"x": ["not a number"]}), "numbers", replace=False)
        with pytest.raises(InvalidFrame):
            store.save_dataframe(pl.DataFrame({"y": [1.0]}), "numbers", replace=False)
        with pytest.raises(ReadOnlyQuery):
            store.query("COPY numbers TO 'numbers.csv'")
        with pytest.raises(QueryFailed):
            store.query("SELECT * FROM no_such_table")
        store.save_dataframe(pl.DataFrame({"g": ["MYO7A"]}), "good")
    assert store.list_tables() == ["good", "numbers"]
    assert store.load_dataframe("good").rows() == [("MYO7A",)]
    assert store.load_dataframe("numbers")["x"].to_list() == [1.5, 2.5]
    assert store.get_checkpoint("numbers")["row_count"] == 2


def test_a_statement_that_fails_at_run_time_aborts_the_transaction_in_one_line(
    store: PipelineStore,
) -> None:
    store.save_dataframe(pl.DataFrame({"x": [1]}), "kept")
    with pytest.raises(TransactionAborted) as info, store.transaction():
        store.save_dataframe(pl.DataFrame({"x": [2]}), "lost")
        with pytest.raises(QueryFailed):
            store.query("SELECT 'not a number'::INTEGER")  # DuckDB aborts the transaction
        store.save_dataframe(pl.DataFrame({"x": [3]}), "after")
    message = str(info.value)
    assert str(store.db_path) in message and "Conversion Error" in message
    assert "\n" not in message and "Current transaction is aborted" not in message
    assert store.list_tables() == ["kept"]
    with store.transaction():  # the next transaction starts clean
        store.save_dataframe(pl.DataFrame({"x": [4]}), "next")
    assert store.list_tables() == ["kept", "next"]
