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
from usher_pipeline.persistence.fingerprint import fingerprint_parquet
from usher_pipeline.workflow import Job, fetch_in_batches, mock_snakemake, plan_batches
from usher_pipeline.workflow.fetch import (
    AUDIT_VARIABLE,
    BatchMismatch,
    FileLedger,
    batch_folder,
    drop_batches,
    progress_path,
    remaining_share,
    write_progress,
)
from usher_pipeline.workflow.ingest import ingest_sentinels
from usher_pipeline.workflow.merge import merge_provenance

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


def test_drop_batches_removes_only_the_tables_named(tmp_path):
    tables_dir = tmp_path / "results/tables"
    for table, count in (("alpha", 3), ("beta", 2)):
        ledger = FileLedger(batch_folder(tables_dir / f"{table}.parquet"))
        for n in range(count):
            ledger.commit(f"b{n}", pl.DataFrame({"key": [n]}))
        write_progress(progress_path(tables_dir / f"{table}.parquet"), count, count)
    assert drop_batches([tables_dir / "alpha.parquet", tables_dir / "gamma.parquet"]) == 3
    assert not (tables_dir / ".partial/alpha").exists()
    assert remaining_share(tables_dir / "alpha.parquet") == 1.0
    assert len(FileLedger(tables_dir / ".partial/beta").committed()) == 2  # not named: kept
    assert remaining_share(tables_dir / "beta.parquet") == 0.0
    assert drop_batches([str(tables_dir / "beta.parquet")]) == 2
    assert not (tables_dir / ".partial").exists()  # the last one leaves no empty folder
    assert drop_batches([tables_dir / "beta.parquet"]) == 0


def test_batch_size_below_one_is_rejected():
    with pytest.raises(ValueError, match="batch_size is 0: use a whole number of at least 1"):
        plan_batches(KEYS, 0, "")


# -- through a Job: batches live until the provenance merge -------------------------------------


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


def merge(tmp_path: Path) -> dict[str, object]:
    """The provenance merge of the fetch job's step log, as the provenance rule runs it."""
    return merge_provenance(
        [tmp_path / "results/steplogs/things.json"],
        pipeline_version="test",
        data_source_versions={},
    )


@pytest.mark.parametrize("mode", ["job", "head"])
def test_fetch_batches_are_files_until_the_provenance_merge_in_both_modes(tmp_path, mode):
    """Batches are private to the job: Parquet files beside the outputs, never in the shared
    database; they outlive the job's step log and go with the provenance merge."""
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
    assert len(FileLedger(partial).committed()) == 10  # kept beyond the step log
    assert remaining_share(sentinel) == 0.0
    assert merge(tmp_path)["batches_dropped"] == 10
    assert not partial.parent.exists()
    assert remaining_share(sentinel) == 1.0  # the note went with them
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
    assert tables(tmp_path / "results/pipeline.duckdb")["things"] == 100

    # Killed again after its step log, before Snakemake recorded it finished: Snakemake
    # removes its outputs and reruns it, and the batches are still there.
    sentinel = tmp_path / "results/tables/things.parquet"
    steplog = tmp_path / "results/steplogs/things.json"
    first = fingerprint_parquet(sentinel)[0]
    sentinel.unlink()
    steplog.unlink()
    again = Source()
    with Job(fetch_job(tmp_path, "job")) as job:
        frame = job.fetch(list(range(100)), again, batch_size=10)
        job.save(frame, description="numbers")
    assert again.calls == []
    assert fingerprint_parquet(sentinel)[0] == first
    assert merge(tmp_path)["batches_dropped"] == 10
    assert not partial.parent.exists()


# -- combining batches: one rule with appends ---------------------------------------------------


class Batches:
    """A fetch function that returns a given frame per batch (by its first key) and records
    which batches it was asked for."""

    def __init__(self, frames: dict[int, pl.DataFrame], default: pl.DataFrame) -> None:
        self.frames, self.default = frames, default
        self.calls: list[int] = []

    def __call__(self, batch: list[int]) -> pl.DataFrame:
        self.calls.append(batch[0])
        return self.frames.get(batch[0], self.default)


WHOLE = pl.DataFrame({"key": [1], "value": [2]})  # Int64 values


@pytest.mark.parametrize(
    ("later", "fragment"),
    [
        (
            pl.DataFrame({"key": [1], "value": [3.75]}),
            "has column 'value' as Float64 but the batches before it as Int64",
        ),
        (pl.DataFrame({"key": [1]}), "lacks column 'value' that the batches before it have"),
        (
            pl.DataFrame({"key": [1], "value": [2], "note": ["x"]}),
            "has column 'note' that the batches before it lack",
        ),
        (
            pl.DataFrame({"key": [1], "value": ["2"]}),
            "has column 'value' as String but the batches before it as Int64",
        ),
        (
            pl.DataFrame({"key": [1], "value": pl.Series([2], dtype=pl.UInt64)}),
            "has column 'value' as UInt64 but the batches before it as Int64",
        ),
    ],
    ids=["fraction_after_whole_numbers", "missing", "extra", "string", "uint64"],
)
def test_a_batch_that_cannot_combine_stops_the_fetch_before_it_is_committed(
    tmp_path, later, fragment
):
    folder = tmp_path / "things"
    source = Batches({20: later}, WHOLE)
    with pytest.raises(BatchMismatch) as error:
        fetch_in_batches(KEYS, source, ledger=FileLedger(folder), batch_size=BATCH, label="t")
    message = str(error.value)
    assert message.startswith(f"t: batch 3 of 10 (keys 20 to 29) {fragment}: ")
    assert "\n" not in message and "cast in the fetch function" in message
    assert "the 2 committed batches are kept" in message
    assert source.calls == [0, 10, 20]  # stopped at that batch: no later batch was fetched
    assert len(FileLedger(folder).committed()) == 2

    again = Batches({20: later}, WHOLE)  # a rerun stops there again, fetching only that batch
    with pytest.raises(BatchMismatch, match="batch 3 of 10"):
        fetch_in_batches(KEYS, again, ledger=FileLedger(folder), batch_size=BATCH, label="t")
    assert again.calls == [20]


def test_fractions_after_whole_numbers_are_kept_when_every_batch_returns_floats(tmp_path):
    floats = Batches(
        {20: pl.DataFrame({"key": [1], "value": [3.75]})}, WHOLE.cast({"value": pl.Float64})
    )
    frame, _ = fetch_in_batches(KEYS, floats, ledger=FileLedger(tmp_path / "t"), batch_size=BATCH)
    assert frame.schema["value"] == pl.Float64
    assert frame["value"].to_list() == [2.0, 2.0, 3.75] + [2.0] * 7


def test_batches_combine_by_the_widenings_of_an_append(tmp_path):
    first = pl.DataFrame({"key": [0], "value": [1], "x": [0.5], "note": [None], "tags": [[None]]})
    later = {
        10: pl.DataFrame(
            {
                "note": ["kept"],
                "key": pl.Series([10], dtype=pl.Int32),
                "value": pl.Series([2**31 - 1], dtype=pl.UInt32),
                "x": pl.Series([0.25], dtype=pl.Float32),
                "tags": [["HP:1"]],
            }
        ),
        20: pl.DataFrame(
            {"key": [20], "value": [None], "x": [None], "note": [None], "tags": [None]}
        ),
    }
    frame, _ = fetch_in_batches(
        KEYS[:30], Batches(later, first), ledger=FileLedger(tmp_path / "t"), batch_size=BATCH
    )
    assert frame.schema == pl.Schema(
        {
            "key": pl.Int64,
            "value": pl.Int64,
            "x": pl.Float64,
            "note": pl.String,
            "tags": pl.List(pl.String),
        }
    )
    assert frame.rows() == [
        (0, 1, 0.5, None, [None]),
        (10, 2**31 - 1, 0.25, "kept", ["HP:1"]),
        (20, None, None, None, None),
    ]


def test_a_committed_batch_that_cannot_combine_is_named_with_its_folder(tmp_path):
    folder = tmp_path / "things"
    ledger = FileLedger(folder)
    plan = plan_batches(KEYS[:20], BATCH, "")
    ledger.commit(plan[0][0], pl.DataFrame({"key": [0], "value": [1]}))
    ledger.commit(plan[1][0], pl.DataFrame({"key": [10], "value": [1.5]}))
    source = Batches({}, WHOLE)
    with pytest.raises(BatchMismatch) as error:
        fetch_in_batches(KEYS[:20], source, ledger=ledger, batch_size=BATCH, label="t")
    assert str(error.value) == (
        "t: batch 2 of 2 (keys 10 to 19), committed by an earlier run, has column 'value' as "
        f"Float64 but the batches before it as Int64: delete {folder} and rerun to fetch every "
        "batch again"
    )
    assert source.calls == []


def test_columns_named_like_internal_ones_survive_a_fetch(tmp_path):
    def fetch(keys: list[int]) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "key": keys,
                "_batch_row": keys,
                "_batch_order": keys,
                "_batch_id": ["mine"] * len(keys),
            }
        )

    run = tmp_path / "run"
    smk = fetch_job(run, "job")
    with Job(smk) as job:
        job.save(job.fetch(KEYS, fetch, batch_size=BATCH))
    expected = fetch(KEYS)
    assert pl.read_parquet(run / "results/tables/things.parquet").equals(expected)
    store = PipelineStore(run / "results/pipeline.duckdb", lock_timeout=30)
    assert store.load_dataframe("things").equals(expected)


def test_both_database_modes_give_the_same_fingerprint_for_the_same_fetch(tmp_path):
    def fetch(keys: list[int]) -> pl.DataFrame:  # whole numbers first, then fractions
        return pl.DataFrame({"key": keys, "value": [k / 4 if k >= 50 else float(k) for k in keys]})

    roots = {mode: tmp_path / mode for mode in ("job", "head")}
    for mode, root in roots.items():
        with Job(fetch_job(root, mode)) as job:
            job.save(job.fetch(KEYS, fetch, batch_size=BATCH), description="numbers")
    sentinels = {m: r / "results/tables/things.parquet" for m, r in roots.items()}
    assert pl.read_parquet(sentinels["head"]).equals(fetch(KEYS))
    assert pl.read_parquet(sentinels["job"]).equals(fetch(KEYS))
    job_fp = PipelineStore(roots["job"] / "results/pipeline.duckdb").get_checkpoint("things")[
        "fingerprint"
    ]
    head_store = PipelineStore(roots["head"] / "results/pipeline.duckdb", lock_timeout=30)
    ingest_sentinels(
        head_store, [sentinels["head"]], [roots["head"] / "results/steplogs/things.json"]
    )
    assert head_store.get_checkpoint("things")["fingerprint"] == job_fp
    assert fingerprint_parquet(sentinels["head"])[0] == fingerprint_parquet(sentinels["job"])[0]
    assert head_store.load_dataframe("things")["value"].to_list()[-1] == 99 / 4


@pytest.mark.parametrize("mode", ["job", "head"])
def test_a_job_whose_batches_cannot_combine_fails_with_one_line_in_both_modes(tmp_path, mode):
    source = Batches({30: pl.DataFrame({"key": [1], "value": [3.75]})}, WHOLE)
    with pytest.raises(SystemExit) as error, Job(fetch_job(tmp_path, mode)) as job:
        job.save(job.fetch(KEYS, source, batch_size=BATCH))
    assert str(error.value).startswith("rule things: things: batch 4 of 10 (keys 30 to 39) ")
    assert "\n" not in str(error.value)
    assert source.calls == [0, 10, 20, 30]
    assert not (tmp_path / "results/tables/things.parquet").exists()
    assert len(FileLedger(tmp_path / "results/tables/.partial/things").committed()) == 3
    log = (tmp_path / "logs/things.log").read_text()
    assert "things: batch 4 of 10 (keys 30 to 39) has column 'value' as Float64" in log
    assert "Traceback" not in log
