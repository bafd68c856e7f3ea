"""The resumable batched fetch: a crash costs only the batches not yet committed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest

from usher_pipeline.persistence import PipelineStore
from usher_pipeline.workflow import Job, fetch_in_batches, mock_snakemake, plan_batches
from usher_pipeline.workflow.fetch import (
    AUDIT_VARIABLE,
    FileLedger,
    progress_path,
    remaining_share,
    write_progress,
)

KEYS = list(range(100))
BATCH = 10


class Crash(RuntimeError):
    """Stands in for a process dying in the middle of a fetch."""


class Source:
    """A fetch function that records every batch it is asked for and can fail on one."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.fail_on = fail_on

    def __call__(self, batch: list[int]) -> pl.DataFrame:
        if self.fail_on is not None and batch[0] == self.fail_on:
            raise Crash(f"connection lost at key {batch[0]}")
        self.calls.append(list(batch))
        return pl.DataFrame({"key": batch, "value": [k * 3 for k in batch]})


def expected_frame() -> pl.DataFrame:
    return pl.DataFrame({"key": KEYS, "value": [k * 3 for k in KEYS]})


def tables(db: Path) -> dict[str, int]:
    with duckdb.connect(str(db), read_only=True) as conn:
        names = [r[0] for r in conn.sql("SELECT table_name FROM duckdb_tables()").fetchall()]
        return {n: conn.sql(f'SELECT count(*) FROM "{n}"').fetchall()[0][0] for n in names}


# -- the helper on its own ---------------------------------------------------------------------


def test_rerun_after_crash_fetches_only_the_remaining_batches(tmp_path):
    folder = tmp_path / "things"
    first = Source(fail_on=40)
    with pytest.raises(Crash):
        fetch_in_batches(KEYS, first, ledger=FileLedger(folder), batch_size=BATCH)
    assert [c[0] for c in first.calls] == [0, 10, 20, 30]
    assert len(FileLedger(folder).committed()) == 4

    second = Source()
    frame, summary = fetch_in_batches(KEYS, second, ledger=FileLedger(folder), batch_size=BATCH)
    assert [c[0] for c in second.calls] == [40, 50, 60, 70, 80, 90]
    assert summary["batches_total"] == 10
    assert summary["batches_resumed"] == 4
    assert summary["batches_fetched"] == 6
    assert frame.equals(expected_frame())


def test_batch_ids_change_when_the_signature_changes(tmp_path):
    same = plan_batches(KEYS, BATCH, "layer=hearing")
    assert [bid for bid, _ in same] == [
        bid for bid, _ in plan_batches(KEYS, BATCH, "layer=hearing")
    ]
    other = plan_batches(KEYS, BATCH, "layer=retina")
    assert {bid for bid, _ in same}.isdisjoint(bid for bid, _ in other)
    assert [chunk for _, chunk in same] == [chunk for _, chunk in other]

    with pytest.raises(Crash):
        fetch_in_batches(
            KEYS,
            Source(fail_on=50),
            ledger=FileLedger(tmp_path / "things"),
            batch_size=BATCH,
            signature="layer=hearing",
        )
    changed = Source()
    _, summary = fetch_in_batches(
        KEYS, changed, ledger=FileLedger(tmp_path / "things"), batch_size=BATCH, signature="new"
    )
    assert summary["batches_resumed"] == 0
    assert len(changed.calls) == 10


def test_progress_lines_report_batches_rate_and_eta(tmp_path):
    lines: list[str] = []
    fetch_in_batches(
        KEYS,
        Source(),
        ledger=FileLedger(tmp_path / "things"),
        batch_size=BATCH,
        label="things",
        progress=lines.append,
    )
    assert lines[0] == "things: 10 batches of up to 10 keys; 0 already committed, 10 to fetch"
    assert lines[-1].startswith("things: 10/10 batches (100%), ")
    assert "batches/s, ETA 0 s" in lines[-1]


def test_audit_file_lists_each_fetch_and_commit(tmp_path, monkeypatch):
    audit = tmp_path / "audit.txt"
    monkeypatch.setenv(AUDIT_VARIABLE, str(audit))
    fetch_in_batches(
        KEYS[:30],
        Source(),
        ledger=FileLedger(tmp_path / "things"),
        batch_size=BATCH,
        label="things",
    )
    events = [line.split() for line in audit.read_text().splitlines()]
    ids = [bid for bid, _ in plan_batches(KEYS[:30], BATCH, "")]
    assert events == [[event, "things", bid] for bid in ids for event in ("fetched", "committed")]


def test_on_commit_counts_the_resumed_then_each_committed_batch(tmp_path):
    seen: list[tuple[int, int]] = []
    with pytest.raises(Crash):
        fetch_in_batches(
            KEYS,
            Source(fail_on=30),
            ledger=FileLedger(tmp_path / "things"),
            batch_size=BATCH,
            on_commit=lambda done, total: seen.append((done, total)),
        )
    assert seen == [(0, 10), (1, 10), (2, 10), (3, 10)]
    seen.clear()
    fetch_in_batches(
        KEYS,
        Source(),
        ledger=FileLedger(tmp_path / "things"),
        batch_size=BATCH,
        on_commit=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(n, 10) for n in range(3, 11)]


def test_remaining_share_reads_the_progress_note(tmp_path):
    sentinel = tmp_path / "results/tables/things.parquet"
    assert remaining_share(sentinel) == 1.0  # never started
    note = progress_path(sentinel)
    assert note == tmp_path / "results/tables/.partial/things.progress.json"
    write_progress(note, 3, 4)
    assert remaining_share(sentinel) == 0.25
    write_progress(note, 4, 4)
    assert remaining_share(sentinel) == 0.0  # fetched, killed before the save
    write_progress(note, 0, 0)
    assert remaining_share(sentinel) == 1.0  # nothing to fetch
    for garbled in (
        "",
        "{",
        '{"batches_total": 4}',
        '{"batches_total": "x", "batches_committed": 1}',
    ):
        note.write_text(garbled)
        assert remaining_share(sentinel) == 1.0


def test_batch_size_below_one_is_rejected():
    with pytest.raises(ValueError, match="batch_size is 0: use a whole number of at least 1"):
        plan_batches(KEYS, 0, "")


# -- through a Job: partial state lives until the table is saved --------------------------------


def fetch_job(tmp_path: Path, mode: str) -> object:
    """The snakemake object of a job that fetches table `things`."""
    return mock_snakemake(
        "things",
        output={
            "table": tmp_path / "results/tables/things.parquet",
            "steplog": tmp_path / "results/steplogs/things.json",
        },
        params={"source": "numbers"},
        log=[tmp_path / "logs/things.log"],
        config={
            "duckdb_path": str(tmp_path / "results/pipeline.duckdb"),
            "store": {"lock_timeout_seconds": 30, "database_mode": mode},
        },
    )


def run_fetch_job(tmp_path: Path, mode: str, source: Source) -> None:
    with Job(fetch_job(tmp_path, mode)) as job:
        frame = job.fetch(KEYS, source, batch_size=BATCH)
        job.save(frame, description="numbers and their triples")


@pytest.mark.parametrize("mode", ["job", "head"])
def test_fetch_batches_are_files_until_the_step_log_in_both_modes(tmp_path, mode):
    """Batches are private to the job: Parquet files beside the outputs, never in the shared
    database, and gone once the job has written its step log."""
    db = tmp_path / "results/pipeline.duckdb"
    sentinel = tmp_path / "results/tables/things.parquet"
    partial = tmp_path / "results/tables/.partial/things"
    with pytest.raises(Crash):
        run_fetch_job(tmp_path, mode, Source(fail_on=70))
    assert remaining_share(sentinel) == 0.3  # the note a resume is scheduled by
    assert len(list(partial.glob("*.parquet"))) == 7
    assert len(FileLedger(partial).committed()) == 7
    assert not db.exists()  # a fetch takes neither the database nor its lock
    assert not (tmp_path / "results/steplogs/things.json").exists()

    rerun = Source()
    run_fetch_job(tmp_path, mode, rerun)
    assert [c[0] for c in rerun.calls] == [70, 80, 90]
    assert not partial.parent.exists()
    if mode == "job":
        assert tables(db) == {"_checkpoints": 1, "_provenance": 0, "things": 100}
    else:
        assert not db.exists()
    saved = pl.read_parquet(sentinel)
    assert saved.equals(expected_frame())
    log = (tmp_path / "logs/things.log").read_text()
    assert "things: 10 batches of up to 10 keys; 7 already committed, 3 to fetch" in log
    assert "things: 10/10 batches (100%)" in log


def test_batch_tables_of_an_older_version_are_ignored(tmp_path):
    """A database where an older version kept batches in `_partial_<table>` and
    `_fetch_batches` (a job of it killed mid-fetch) serves a new fetch and save unchanged."""
    db = tmp_path / "results/pipeline.duckdb"
    db.parent.mkdir(parents=True)
    with duckdb.connect(str(db)) as conn:
        conn.execute("CREATE TABLE _partial_things AS SELECT 1 AS key, 'stale' AS _batch_id")
        conn.execute(
            "CREATE TABLE _fetch_batches AS SELECT 'things' AS table_name, 'x' AS batch_id"
        )
    rerun = Source()
    run_fetch_job(tmp_path, "job", rerun)
    assert len(rerun.calls) == 10
    assert pl.read_parquet(tmp_path / "results/tables/things.parquet").equals(expected_frame())
    store = PipelineStore(db, lock_timeout=30)
    assert store.list_tables() == ["things"]
    assert store.load_dataframe("things").equals(expected_frame())


def test_job_killed_between_commit_and_steplog_fetches_nothing_again(tmp_path):
    """The batches outlive the save until the step log is written: a job SIGKILLed after its
    commit (Snakemake then reruns it) finds every batch committed and fetches none."""
    script = f"""
import polars as pl
import os
import signal
import subprocess
import sys
from pathlib import Path
from usher_pipeline.workflow import Job, mock_snakemake
tmp = Path({str(tmp_path)!r})
smk = mock_snakemake(
    "things",
    output={{"table": tmp / "results/tables/things.parquet",
             "steplog": tmp / "results/steplogs/things.json"}},
    params={{"source": "numbers"}},
    config={{"duckdb_path": str(tmp / "results/pipeline.duckdb")}},
)
with Job(smk) as job:
    frame = job.fetch(list(range(100)), lambda keys: pl.DataFrame({{"key": keys}}), batch_size=10)
    job.save(frame)
"""
    env = {**os.environ, "USHER_FAULT_POINT": "after_rename_before_steplog"}
    killed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "results/steplogs/things.json").exists()
    partial = tmp_path / "results/tables/.partial/things"
    assert len(FileLedger(partial).committed()) == 10

    rerun = Source()
    with Job(fetch_job(tmp_path, "job")) as job:
        frame = job.fetch(list(range(100)), rerun, batch_size=10)
        job.save(frame, description="numbers")
    assert rerun.calls == []
    assert not partial.exists()
    assert tables(tmp_path / "results/pipeline.duckdb")["things"] == 100
