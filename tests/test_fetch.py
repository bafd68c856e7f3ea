"""The resumable batched fetch: a crash costs only the batches not yet committed."""

from __future__ import annotations

import datetime
import email.utils
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest
import requests

from usher_pipeline.config.library import APIConfig
from usher_pipeline.errors import UsherError
from usher_pipeline.persistence import PipelineStore
from usher_pipeline.persistence.fingerprint import fingerprint_parquet
from usher_pipeline.workflow import Job, fetch_in_batches, mock_snakemake, plan_batches
from usher_pipeline.workflow.fetch import (
    AUDIT_VARIABLE,
    DEFAULT_ATTEMPTS,
    BatchMismatch,
    FetchFailed,
    FileLedger,
    PermanentError,
    RetryPolicy,
    batch_folder,
    drop_batches,
    error_text,
    progress_path,
    remaining_share,
    retry_after,
    write_progress,
)
from usher_pipeline.workflow.ingest import ingest_sentinels
from usher_pipeline.workflow.merge import merge_provenance

KEYS = list(range(100))
BATCH = 10


class Crash(BaseException):
    """Stands in for a process dying in the middle of a fetch: not an `Exception`, so no
    retry catches it."""


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


# -- retries: transient errors are tried again, the rest stop the fetch in one line ------------

FAST = RetryPolicy(attempts=4, backoff=0.001, max_backoff=0.01)


def http_error(status: int, headers: dict[str, str] | None = None) -> requests.HTTPError:
    """requests' own error for a response of `status`, as `raise_for_status` raises it."""
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers or {})
    response.url = "https://api.example.org/genes?api_key=SECRET123&email=me@example.org"
    return requests.HTTPError(f"{status} error for url: {response.url}", response=response)


class Failing:
    """A fetch function whose batch starting at `on` raises `errors` one call after another
    (the last one for good); every call is recorded by the batch's first key."""

    def __init__(self, on: int, *errors: BaseException) -> None:
        self.on, self.errors = on, list(errors)
        self.calls: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, batch: list[int]) -> pl.DataFrame:
        with self.lock:
            self.calls.append(batch[0])
            if batch[0] == self.on and self.errors:
                error = self.errors.pop(0) if len(self.errors) > 1 else self.errors[0]
                raise error
        return pl.DataFrame({"key": batch, "value": [k * 3 for k in batch]})


@pytest.mark.parametrize(
    "error",
    [
        ConnectionError("connection reset by peer"),
        TimeoutError("read timed out"),
        http_error(500),
        http_error(503),
        http_error(408),
        http_error(429),
        KeyError("results"),  # a truncated answer parsed as a whole one
    ],
    ids=["reset", "timeout", "500", "503", "408", "429", "keyerror"],
)
def test_a_transient_error_is_retried_and_the_fetch_completes(tmp_path, error):
    failures = 0

    def fetch(batch: list[int]) -> pl.DataFrame:  # batch 4 fails twice, then answers
        nonlocal failures
        if batch[0] == 30 and failures < 2:
            failures += 1
            raise error
        return Source()(batch)

    frame, summary = fetch_in_batches(
        KEYS, fetch, ledger=FileLedger(tmp_path / "t"), batch_size=BATCH, retry=FAST
    )
    assert frame.equals(expected_frame())
    assert summary["attempts"] == 12 and summary["retries"] == 2
    errors = summary["errors"]
    assert list(errors) == [type(error).__name__] and errors[type(error).__name__]["count"] == 2
    assert "SECRET123" not in json.dumps(summary) and "me@example.org" not in json.dumps(summary)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (http_error(404), "HTTP 404"),
        (http_error(400), "HTTP 400"),
        (http_error(403), "HTTP 403"),
        (PermanentError("no such gene"), "permanent"),
    ],
    ids=["404", "400", "403", "permanent"],
)
def test_an_error_not_worth_retrying_stops_the_fetch_at_its_first_attempt(tmp_path, error, reason):
    folder = tmp_path / "t"
    source = Failing(40, error)
    with pytest.raises(FetchFailed) as failed:
        fetch_in_batches(
            KEYS, source, ledger=FileLedger(folder), batch_size=BATCH, label="t", retry=FAST
        )
    message = str(failed.value)
    assert message.startswith(
        f"t: batch 5 of 10 (keys 40..49) failed after 1 attempt, not retried ({reason}): "
        f"{type(error).__name__}: "
    )
    assert message.endswith(
        "; the 4 committed batches are kept, so a rerun fetches only the others"
    )
    assert "\n" not in message and "SECRET123" not in message and "me@example.org" not in message
    assert isinstance(failed.value, UsherError)
    assert source.calls == [0, 10, 20, 30, 40]
    assert len(FileLedger(folder).committed()) == 4

    rerun = Source()
    frame, summary = fetch_in_batches(KEYS, rerun, ledger=FileLedger(folder), batch_size=BATCH)
    assert [c[0] for c in rerun.calls] == [40, 50, 60, 70, 80, 90]
    assert frame.equals(expected_frame())


def test_a_permanent_error_of_the_users_own_kind_is_not_retried(tmp_path):
    class NoRecord(PermanentError, LookupError):
        pass

    source = Failing(0, NoRecord("the service has no record of key 0"))
    with pytest.raises(FetchFailed, match=r"not retried \(permanent\): NoRecord: the service"):
        fetch_in_batches(KEYS, source, ledger=FileLedger(tmp_path / "t"), batch_size=BATCH)
    assert source.calls == [0]


@pytest.mark.parametrize(
    "error",
    [TypeError("unsupported operand"), AttributeError("no attribute 'json'"), NameError("x")],
    ids=["type", "attribute", "name"],
)
@pytest.mark.parametrize("in_flight", [1, 3])
def test_a_programming_error_goes_on_at_once_with_its_traceback(tmp_path, error, in_flight):
    source = Failing(20, error)
    with pytest.raises(type(error)) as raised:
        fetch_in_batches(
            KEYS,
            source,
            ledger=FileLedger(tmp_path / "t"),
            batch_size=BATCH,
            retry=FAST,
            in_flight=in_flight,
        )
    assert raised.value is error
    assert source.calls.count(20) == 1  # not tried again
    if in_flight == 1:
        assert source.calls == [0, 10, 20]


def test_a_batch_that_fails_every_attempt_is_named_with_its_last_error(tmp_path):
    errors = [ConnectionError(f"reset number {n}") for n in range(1, 4)]
    source = Failing(90, *errors)
    lines: list[str] = []
    with pytest.raises(FetchFailed) as failed:
        fetch_in_batches(
            KEYS,
            source,
            ledger=FileLedger(tmp_path / "t"),
            batch_size=BATCH,
            label="genes",
            progress=lines.append,
            retry=RetryPolicy(attempts=3, backoff=0.001),
        )
    assert str(failed.value) == (
        "genes: batch 10 of 10 (keys 90..99) failed after 3 attempts: ConnectionError: reset "
        "number 3; the 9 committed batches are kept, so a rerun fetches only the others"
    )
    assert source.calls.count(90) == 3
    stopped = json.loads(lines[-1].removeprefix("genes: stopped; "))
    assert stopped["attempts"] == 12 and stopped["retries"] == 2
    assert stopped["errors"] == {"ConnectionError": {"count": 3, "last_message": str(errors[2])}}
    assert str(errors[2]) == "reset number 3"


def test_the_wait_follows_retry_after_and_otherwise_backs_off(tmp_path):
    once = {"left": 1}

    def fetch(batch: list[int]) -> pl.DataFrame:
        if once["left"]:
            once["left"] -= 1
            raise http_error(429, {"Retry-After": "1"})
        return pl.DataFrame({"key": batch})

    _, summary = fetch_in_batches(
        KEYS[:10], fetch, ledger=FileLedger(tmp_path / "a"), batch_size=BATCH, retry=FAST
    )
    assert 1.0 <= summary["wait_seconds"] < 1.5  # the hint, not the 1 ms backoff

    left = {"n": 3}

    def backing_off(batch: list[int]) -> pl.DataFrame:
        if left["n"]:
            left["n"] -= 1
            raise ConnectionError("reset")
        return pl.DataFrame({"key": batch})

    policy = RetryPolicy(attempts=4, backoff=0.1, max_backoff=10)
    _, summary = fetch_in_batches(
        KEYS[:10], backing_off, ledger=FileLedger(tmp_path / "b"), batch_size=BATCH, retry=policy
    )
    # 0.1, 0.2 and 0.4 s, each with up to 0.1 s of jitter
    assert 0.7 <= summary["wait_seconds"] < 1.2


@pytest.mark.parametrize(
    ("hint", "seconds"),
    [("3", 3.0), ("0", 0.0), ("-5", 0.0), ("soon", None), ("999999", 3600.0)],
)
def test_retry_after_reads_seconds_and_refuses_what_it_cannot_read(hint, seconds):
    assert retry_after(http_error(429, {"Retry-After": hint})) == seconds


def test_retry_after_reads_an_http_date_and_an_attribute():
    when = email.utils.format_datetime(
        datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30), usegmt=True
    )
    assert 25 <= (retry_after(http_error(503, {"Retry-After": when})) or 0) <= 30

    class Slow(Exception):
        retry_after = 2

    assert retry_after(Slow()) == 2.0
    assert retry_after(ConnectionError("x")) is None


def test_messages_lose_the_query_strings_and_user_info_of_urls():
    text = error_text(
        ValueError("GET https://me:pw@eutils.example.gov/esearch.fcgi?term=x&api_key=K1 failed")
    )
    assert text == "ValueError: GET https://eutils.example.gov/esearch.fcgi?... failed"
    assert error_text(OSError("no route to ftp://anonymous:me@example.org@ftp.example.org/x")) == (
        "OSError: no route to ftp://ftp.example.org/x"
    )
    assert error_text(KeyError("results"), with_type=False) == "'results'"


def test_the_default_attempts_are_the_configs():
    assert DEFAULT_ATTEMPTS == APIConfig().max_retries


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_attempts_and_in_flight_below_one_are_refused_in_one_line(tmp_path, bad):
    with pytest.raises(UsherError, match=f"attempts is {bad!r}: use a whole number"):
        RetryPolicy(attempts=bad)
    with pytest.raises(UsherError, match=f"in_flight is {bad!r}: use a whole number"):
        fetch_in_batches(KEYS, Source(), ledger=FileLedger(tmp_path), batch_size=1, in_flight=bad)


# -- in flight: several batches at once, the same commits ---------------------------------------


class Concurrent:
    """A fetch function that sleeps a random while and fails now and then, and notes how
    many calls run at once."""

    def __init__(self, failure_rate: float = 0.0, seed: int | None = None) -> None:
        self.random = random.Random(seed)
        self.failure_rate = failure_rate
        self.lock = threading.Lock()
        self.running = self.peak = 0
        self.calls: list[int] = []

    def __call__(self, batch: list[int]) -> pl.DataFrame:
        with self.lock:
            self.calls.append(batch[0])
            self.running += 1
            self.peak = max(self.peak, self.running)
            pause = self.random.uniform(0, 0.02)
            fails = self.random.random() < self.failure_rate
        try:
            time.sleep(pause)
            if fails:
                raise ConnectionError(f"the service dropped batch {batch[0]}")
            return pl.DataFrame({"key": batch, "value": [k * 3 for k in batch]})
        finally:
            with self.lock:
                self.running -= 1


@pytest.mark.parametrize("in_flight", [2, 4, 16])
def test_batches_in_flight_commit_the_same_batches_and_frame_as_one_at_a_time(tmp_path, in_flight):
    one = tmp_path / "one"
    frame_one, _ = fetch_in_batches(KEYS, Concurrent(), ledger=FileLedger(one), batch_size=3)
    source = Concurrent()
    frame, summary = fetch_in_batches(
        KEYS, source, ledger=FileLedger(tmp_path / "n"), batch_size=3, in_flight=in_flight
    )
    assert frame.equals(frame_one) and frame.equals(expected_frame())
    assert 1 < source.peak <= in_flight
    assert sorted(source.calls) == list(range(0, 100, 3))
    assert summary["batches_fetched"] == 34 and summary["in_flight"] == in_flight
    for batch_id in FileLedger(one).committed():
        assert pl.read_parquet(tmp_path / "n" / f"{batch_id}.parquet").equals(
            pl.read_parquet(one / f"{batch_id}.parquet")
        )


@pytest.mark.parametrize("in_flight", [1, 4])
def test_a_flaky_source_converges_in_one_run(tmp_path, in_flight):
    """About 30% of calls fail with a transient error; the retries carry every batch."""
    source = Concurrent(failure_rate=0.3)
    frame, summary = fetch_in_batches(
        KEYS,
        source,
        ledger=FileLedger(tmp_path / "t"),
        batch_size=2,
        retry=RetryPolicy(attempts=15, backoff=0.001, max_backoff=0.005),
        in_flight=in_flight,
    )
    assert frame.equals(expected_frame())
    assert summary["attempts"] == len(source.calls) == 50 + summary["retries"]
    assert summary["retries"] == summary["errors"]["ConnectionError"]["count"] > 0


def test_a_failure_in_flight_lets_the_other_batches_finish_and_commit(tmp_path):
    folder = tmp_path / "t"
    source = Failing(50, PermanentError("gone"))
    with pytest.raises(FetchFailed, match=r"^t: batch 6 of 10 \(keys 50\.\.59\) failed after 1"):
        fetch_in_batches(
            KEYS, source, ledger=FileLedger(folder), batch_size=BATCH, label="t", in_flight=4
        )
    committed = len(FileLedger(folder).committed())
    assert 5 <= committed <= 8  # those before it, and those already in flight beside it
    assert len(source.calls) == committed + 1
    rerun = Source()
    frame, _ = fetch_in_batches(KEYS, rerun, ledger=FileLedger(folder), batch_size=BATCH)
    assert len(rerun.calls) == 10 - committed
    assert frame.equals(expected_frame())


# -- in a real Snakemake run of a workflow outside the repository -------------------------------

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
WORKFLOW_KEYS, WORKFLOW_BATCH = 60, 3  # 20 batches
SNAKEFILE = """\
include: "{rules}/library.smk"


USHER.register("items")


rule all:
    default_target: True
    input:
        USHER.sentinel("items"),
        USHER.steplog("items"),


rule items:
    output:
        table=USHER.sentinel("items"),
        steplog=USHER.steplog("items"),
    log:
        USHER.log("items", "items"),
    params:
        wanted=list(range({keys})),
        batch_size={batch},
    script:
        "scripts/items.py"
"""
# Files in the working directory shape the run, never the values: `broken` names a key whose
# batch the service refuses for good, `flaky` makes ~30% of calls fail with a transient error,
# `slow` slows each call down. Every call notes its batch's first key in calls.log.
ITEMS = '''\
"""A batched fetch from a service that can refuse a batch, fail at random or be slow."""

import os
import random
import time
from pathlib import Path

import polars as pl

from usher_pipeline.workflow import Job, PermanentError


def fetch(keys):
    fd = os.open("calls.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{keys[0]}\\n".encode())
    os.close(fd)
    if Path("slow").exists():
        time.sleep(0.2)
    broken = Path("broken")
    if broken.exists() and int(broken.read_text()) in keys:
        url = "https://api.example.org/items?api_key=SECRET123"
        raise PermanentError(f"the service has no record of key {broken.read_text()} at {url}")
    if Path("flaky").exists() and random.random() < 0.3:
        raise ConnectionError(f"connection reset while fetching {keys[0]}")
    return pl.DataFrame({"key": keys, "value": [k * k + 1 for k in keys]})


with Job(snakemake) as job:
    how = snakemake.config["fetch"]
    frame = job.fetch(
        list(snakemake.params.wanted),
        fetch,
        batch_size=int(snakemake.params.batch_size),
        backoff=float(how["backoff"]),
        in_flight=int(how["in_flight"]),
    )
    job.save(frame, description="each key and its value")
'''


class Flow:
    """The generated workflow in tmp_path and its working directory."""

    def __init__(self, root: Path, in_flight: int, max_retries: int = 5) -> None:
        self.root, self.workdir = root, root / "run"
        (root / "workflow/scripts").mkdir(parents=True)
        self.workdir.mkdir()
        snakefile = SNAKEFILE.format(
            rules=(REPO / "rules").as_posix(), keys=WORKFLOW_KEYS, batch=WORKFLOW_BATCH
        )
        (root / "workflow/Snakefile").write_text(snakefile)
        (root / "workflow/scripts/items.py").write_text(ITEMS)
        (root / "workflow/config.yaml").write_text(
            f"api:\n  max_retries: {max_retries}\n"
            f"fetch:\n  backoff: 0.01\n  in_flight: {in_flight}\n"
        )

    def command(self) -> list[str]:
        return [
            str(SNAKEMAKE),
            "--snakefile",
            str(self.root / "workflow/Snakefile"),
            "--directory",
            str(self.workdir),
            "--configfile",
            str(self.root / "workflow/config.yaml"),
            "--cores",
            "1",
        ]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SNAKEMAKE_", "USHER_"))}
        env["XDG_CONFIG_HOME"] = str(self.root / "xdg")  # no profile of the user's
        return env

    def run(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(),
            capture_output=True,
            text=True,
            env=self.env(),
            cwd=self.root,
            timeout=300,
        )

    def marker(self, name: str, text: str | None) -> None:
        if text is None:
            (self.workdir / name).unlink(missing_ok=True)
        else:
            (self.workdir / name).write_text(text)

    def calls(self) -> list[int]:
        path = self.workdir / "calls.log"
        return [int(line) for line in path.read_text().split()] if path.exists() else []

    def committed(self) -> set[int]:
        """The first key of each committed batch."""
        folder = self.workdir / "results/tables/.partial/items"
        return {int(pl.read_parquet(p)["key"][0]) for p in folder.glob("*.parquet")}

    def table(self) -> pl.DataFrame:
        return pl.read_parquet(self.workdir / "results/tables/items.parquet")

    def fetch_step(self) -> dict[str, object]:
        record = json.loads((self.workdir / "results/steplogs/items.json").read_text())
        steps = [s for s in record["steps"] if s["step_name"] == "batched_fetch"]
        assert len(steps) == 1
        return dict(steps[0]["details"])


def expected_items() -> pl.DataFrame:
    keys = list(range(WORKFLOW_KEYS))
    return pl.DataFrame({"key": keys, "value": [k * k + 1 for k in keys]})


@pytest.mark.parametrize("in_flight", [1, 3])
def test_a_batch_refused_for_good_stops_the_run_in_one_line_and_the_rerun_fetches_the_rest(
    tmp_path, in_flight
):
    flow = Flow(tmp_path, in_flight)
    flow.marker("broken", "31")  # in batch 11 of 20, keys 30..32
    failed = flow.run()
    assert failed.returncode != 0
    terminal = failed.stdout + failed.stderr
    line = (
        "items: batch 11 of 20 (keys 30..32) failed after 1 attempt, not retried (permanent): "
        "PermanentError: the service has no record of key 31 at "
        "https://api.example.org/items?...; the "
    )
    assert terminal.count(line) == 1, terminal
    assert "Traceback" not in terminal and "SECRET123" not in terminal
    log = (flow.workdir / "logs/items/items.log").read_text()
    assert log.count(line) == 1 and "SECRET123" not in log
    committed = flow.committed()
    first = flow.calls()
    assert first.count(30) == 1  # not retried
    assert 30 not in committed and set(range(0, 30, 3)) <= committed
    assert len(committed) == len(first) - 1  # every other batch asked for was committed

    flow.marker("broken", None)
    done = flow.run()
    assert done.returncode == 0, done.stdout + done.stderr
    again = flow.calls()[len(first) :]
    assert sorted(again) == sorted(set(range(0, WORKFLOW_KEYS, 3)) - committed)
    assert flow.table().equals(expected_items())
    step = flow.fetch_step()
    assert step["batches_resumed"] == len(committed) and step["retries"] == 0


def test_a_flaky_service_finishes_in_one_run_without_snakemakes_retries(tmp_path):
    """About 30% of calls fail with a transient error: no job fails, no batch is lost."""
    flow = Flow(tmp_path, in_flight=2, max_retries=12)
    flow.marker("flaky", "")
    done = flow.run()
    assert done.returncode == 0, done.stdout + done.stderr
    assert flow.table().equals(expected_items())
    step = flow.fetch_step()
    calls = flow.calls()
    assert step["attempts"] == len(calls) == 20 + step["retries"]
    errors = step["errors"]
    assert isinstance(errors, dict)
    assert step["retries"] == errors["ConnectionError"]["count"] > 0
    assert errors["ConnectionError"]["last_message"].startswith("connection reset while")
    assert float(str(step["wait_seconds"])) > 0


def test_a_fetch_of_four_in_flight_killed_mid_fetch_requests_no_committed_batch_again(tmp_path):
    flow = Flow(tmp_path, in_flight=4)
    flow.marker("slow", "")
    folder = flow.workdir / "results/tables/.partial/items"
    with (flow.workdir / "terminal.txt").open("wb") as out:
        process = subprocess.Popen(
            flow.command(),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=flow.env(),
            cwd=flow.root,
            start_new_session=True,  # its own process group, killed whole
        )
    deadline = time.monotonic() + 120
    while len(list(folder.glob("*.parquet"))) < 6:
        assert process.poll() is None, (flow.workdir / "terminal.txt").read_text()
        assert time.monotonic() < deadline, "the fetch never committed six batches"
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    committed = flow.committed()
    assert 6 <= len(committed) < 20
    before = len(flow.calls())

    flow.marker("slow", None)
    done = flow.run()
    assert done.returncode == 0, done.stdout + done.stderr
    again = flow.calls()[before:]
    assert committed.isdisjoint(again), "a committed batch was requested again"
    assert sorted(again) == sorted(set(range(0, WORKFLOW_KEYS, 3)) - committed)
    assert flow.table().equals(expected_items())
    assert flow.fetch_step()["batches_resumed"] == len(committed)


@pytest.mark.parametrize(("max_retries", "attempts", "expected"), [(2, None, 2), (2, 3, 3)])
def test_a_job_tries_a_batch_as_often_as_the_config_or_the_call_says(
    tmp_path, max_retries, attempts, expected
):
    smk = fetch_job(tmp_path, "job")
    smk.config["api"] = {"max_retries": max_retries}
    source = Failing(20, ConnectionError("connection reset by peer"))
    with pytest.raises(SystemExit) as stop, Job(smk) as job:
        job.fetch(KEYS, source, batch_size=BATCH, attempts=attempts, backoff=0.001)
    assert str(stop.value) == (
        f"rule things: things: batch 3 of 10 (keys 20..29) failed after {expected} attempts: "
        "ConnectionError: connection reset by peer; the 2 committed batches are kept, so a "
        "rerun fetches only the others"
    )
    assert source.calls.count(20) == expected
    log = (tmp_path / "logs/things.log").read_text()
    assert log.count("failed after") == 1 and "Traceback" not in log
    assert f'"attempts":{2 + expected}' in log  # the summary of the fetch that stopped


def test_a_batch_that_cannot_combine_stops_a_fetch_in_flight_too(tmp_path):
    folder = tmp_path / "t"
    source = Batches({50: pl.DataFrame({"key": [1], "value": [3.75]})}, WHOLE)
    with pytest.raises(BatchMismatch, match=r"^t: batch 6 of 10 \(keys 50 to 59\) has column"):
        fetch_in_batches(
            KEYS, source, ledger=FileLedger(folder), batch_size=BATCH, label="t", in_flight=4
        )
    committed = FileLedger(folder).committed()
    assert 5 <= len(committed) <= 8  # those before it, and those that returned before it
    assert all(pl.read_parquet(folder / f"{b}.parquet").equals(WHOLE) for b in committed)
    assert plan_batches(KEYS, BATCH, "")[5][0] not in committed
    rerun = Batches({}, WHOLE)
    frame, _ = fetch_in_batches(KEYS, rerun, ledger=FileLedger(folder), batch_size=BATCH)
    assert len(rerun.calls) == 10 - len(committed) and 50 in rerun.calls
    assert frame.height == 10
