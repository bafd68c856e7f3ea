"""Contention: many writer jobs, two Snakemake runs, a notebook holding the file, live readers.

All runs are real Snakemake processes on a small generated workflow whose jobs save through
the library's `Job` helper into one DuckDB store; readers and the "notebook" are separate
Python processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import UTC
from pathlib import Path

import polars as pl
import pytest

from usher_pipeline.persistence import PipelineStore
from usher_pipeline.persistence.fingerprint import fingerprint_parquet

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")

SNAKEFILE = f"""\
configfile: "config.yaml"


include: "{REPO}/rules/library.smk"


N = int(config["n_tables"])
for _i in range(N):
    USHER.register(f"t{{_i:03d}}")


rule all:
    input:
        USHER.products(),
        USHER.steplogs(),


rule write:
    output:
        table=USHER.sentinel("t{{i}}"),
        steplog=USHER.steplog("t{{i}}"),
    log:
        USHER.log("write", "t{{i}}"),
    script:
        "write.py"
"""

WRITE = """\
import polars as pl

from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    i = int(snakemake.wildcards.i)
    job.save(pl.DataFrame({"i": [i] * (i + 1), "k": list(range(i + 1))}))
"""


def workflow(root: Path, n_tables: int, lock_timeout: float = 120) -> Path:
    """A generated workflow of `n_tables` writer jobs (table t<i> has i + 1 rows)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "Snakefile").write_text(SNAKEFILE)
    (root / "write.py").write_text(WRITE)
    (root / "config.yaml").write_text(
        f"duckdb_path: results/pipeline.duckdb\nn_tables: {n_tables}\n"
        f"store:\n  lock_timeout_seconds: {lock_timeout}\n"
    )
    return root


def snakemake(root: Path, *args: str) -> list[str]:
    return [str(SNAKEMAKE), "--snakefile", str(root / "Snakefile"), "--directory", str(root), *args]


def run(root: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(snakemake(root, *args), capture_output=True, text=True, timeout=timeout)


def table(i: int) -> str:
    return f"t{i:03d}"


def assert_complete(root: Path, indices: range) -> PipelineStore:
    """Every table has its exact rows, its checkpoint and an equal sentinel; nothing extra."""
    store = PipelineStore(root / "results" / "pipeline.duckdb", lock_timeout=60)
    with store.transaction(read_only=True) as tx:
        checkpoints = {r["table_name"]: r for r in tx.list_checkpoints()}
        assert set(checkpoints) == {table(i) for i in indices}
        assert tx.list_tables() == sorted(checkpoints)
        counts = tx.execute_query(
            " UNION ALL ".join(
                f"SELECT '{table(i)}' AS t, count(*) AS n, sum(k) AS s FROM {table(i)}"
                for i in indices
            )
        )
        for name, n, total in counts.rows():
            i = int(name[1:])
            assert (n, total) == (i + 1, i * (i + 1) // 2), name
            assert checkpoints[name]["row_count"] == i + 1
            assert tx.fingerprint(name) == checkpoints[name]["fingerprint"]
    for i in indices:
        sentinel = root / "results" / "tables" / f"{table(i)}.parquet"
        assert fingerprint_parquet(sentinel)[0] == checkpoints[table(i)]["fingerprint"]
    leftovers = [p.name for p in (root / "results").rglob(".*") if p.is_file()]
    assert leftovers == []
    return store


# -- many writers ----------------------------------------------------------------------------


@pytest.mark.slow
def test_two_hundred_writer_jobs_at_eight_cores_commit_every_row(tmp_path):
    root = workflow(tmp_path / "wf", 200)
    done = run(root, "--cores", "8")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_complete(root, range(200))


@pytest.mark.slow
def test_two_snakemake_runs_with_different_targets_share_one_store(tmp_path):
    root = workflow(tmp_path / "wf", 40)
    first = [f"results/tables/{table(i)}.parquet" for i in range(0, 20)]
    second = [f"results/tables/{table(i)}.parquet" for i in range(20, 40)]
    runs = [
        subprocess.Popen(
            snakemake(root, "--cores", "3", *targets),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for targets in (first, second)
    ]
    outputs = [p.communicate(timeout=900)[0] for p in runs]
    assert [p.returncode for p in runs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert_complete(root, range(40))
    spans = []
    for group in (range(0, 20), range(20, 40)):
        logs = [
            json.loads((root / "results" / "steplogs" / f"{table(i)}.json").read_text())
            for i in group
        ]
        spans.append((min(r["started_at"] for r in logs), max(r["ended_at"] for r in logs)))
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]  # they really overlapped


# -- a notebook holding the DuckDB file ---------------------------------------------------------

NOTEBOOK = """
import sys, time, duckdb
from pathlib import Path
db, started, release = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
conn = duckdb.connect(str(db))  # read-write, without the store's lock file: a notebook
conn.execute("CREATE TABLE IF NOT EXISTS scratch AS SELECT 1 AS x")
print("holding", flush=True)
while not release.exists():  # hold until the test says so
    time.sleep(0.05)
if started.exists():
    while not any(started.glob("*.log")):  # ... and until a job is waiting for the file
        time.sleep(0.05)
    time.sleep(1.0)
conn.execute("DROP TABLE scratch")
released = time.time()  # taken before letting go: no commit can come before it
conn.close()
print(f"released {released}", flush=True)
"""


def hold_database(db: Path, started: Path, release: Path) -> subprocess.Popen[str]:
    """A process that opens the DuckDB file read-write, as a notebook would, and holds it."""
    db.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(NOTEBOOK), str(db), str(started), str(release)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    return holder


@pytest.mark.slow
def test_jobs_wait_for_a_notebook_that_lets_go_within_the_lock_timeout(tmp_path):
    root = workflow(tmp_path / "wf", 6, lock_timeout=120)
    release = tmp_path / "release"
    release.touch()  # let go as soon as a job has started and is waiting
    holder = hold_database(root / "results" / "pipeline.duckdb", root / "logs" / "write", release)
    done = run(root, "--cores", "3")
    out, _ = holder.communicate(timeout=60)
    released = float(out.split()[-1])
    assert done.returncode == 0, done.stderr[-3000:]
    store = assert_complete(root, range(6))
    for row in store.list_checkpoints():  # every commit came after the notebook let go
        assert row["created_at"].replace(tzinfo=UTC).timestamp() >= released


@pytest.mark.slow
def test_jobs_fail_naming_a_notebook_that_holds_on_past_the_lock_timeout(tmp_path):
    root = workflow(tmp_path / "wf", 3, lock_timeout=2)
    release = tmp_path / "release"
    db = root / "results" / "pipeline.duckdb"
    holder = hold_database(db, tmp_path / "never", release)
    try:
        done = run(root, "--cores", "3")
    finally:
        release.touch()
        holder.communicate(timeout=60)
    assert done.returncode != 0
    logs = [p.read_text() for p in (root / "logs" / "write").glob("*.log")]
    errors = [line for text in logs for line in text.splitlines() if "ERROR" in line]
    assert errors, done.stderr[-3000:]
    for line in errors:
        # the job holding the lock file names the notebook; the others name that job and
        # the notebook it waits for
        assert f"PID {holder.pid} (python" in line and "is locked by PID" in line
        assert "raise store.lock_timeout_seconds" in line
    # nothing half-written: no table, checkpoint, sentinel or temporary file of any job
    store = PipelineStore(db, lock_timeout=10)
    assert store.list_checkpoints() == [] and store.list_tables() == []
    assert not list((root / "results").rglob("*.parquet"))
    assert not [p for p in (root / "results").rglob(".*") if p.is_file()]
    resumed = run(root, "--cores", "3")  # once the notebook is closed, the same command works
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_complete(root, range(3))


# -- readers while a run writes ----------------------------------------------------------------

READER = """
import json, sys
from pathlib import Path
from usher_pipeline.persistence import PipelineStore
db, stop = Path(sys.argv[1]), Path(sys.argv[2])
store = PipelineStore(db, lock_timeout=120)
report = {"iterations": 0, "errors": [], "mismatches": [], "max_tables": 0}
while not stop.exists():
    try:
        with store.transaction(read_only=True) as tx:
            checkpoints = {r["table_name"]: r for r in tx.list_checkpoints()}
            tables = tx.list_tables()
            if set(tables) != set(checkpoints):
                report["mismatches"].append(sorted(set(tables) ^ set(checkpoints)))
            for name in sorted(checkpoints)[-3:]:
                if tx.fingerprint(name) != checkpoints[name]["fingerprint"]:
                    report["mismatches"].append(name)
        rows = store.list_checkpoints()
        if rows:
            last = rows[-1]["table_name"]
            frame = store.load_dataframe(last)
            n = store.execute_query(f"SELECT count(*) AS n FROM {last}")["n"][0]
            if frame is None or frame.height != n:
                report["mismatches"].append(f"{last} changed under a reader")
        report["max_tables"] = max(report["max_tables"], len(rows))
        report["iterations"] += 1
    except Exception as exc:
        report["errors"].append(f"{type(exc).__name__}: {exc}")
print(json.dumps(report))
"""


@pytest.mark.slow
def test_readers_never_fail_nor_see_a_table_without_its_checkpoint_during_a_run(tmp_path):
    root = workflow(tmp_path / "wf", 30)
    db = root / "results" / "pipeline.duckdb"
    PipelineStore(db)  # the readers open an existing, empty store
    stop = tmp_path / "stop"
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(READER), str(db), str(stop)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        done = run(root, "--cores", "4")
    finally:
        stop.touch()
    reports = []
    for reader in readers:
        out, err = reader.communicate(timeout=120)
        assert reader.returncode == 0, err[-2000:]
        reports.append(json.loads(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_complete(root, range(30))
    for report in reports:
        assert report["errors"] == [] and report["mismatches"] == []
        assert report["iterations"] > 0
    assert max(r["max_tables"] for r in reports) > 0  # they read while tables appeared


def test_waiting_writer_times_out_with_one_sentence_naming_the_lock_holder(
    tmp_path, lock_wait_error
):
    """The store's own lock: a writer that cannot get it in time names who holds it."""
    db = tmp_path / "pipeline.duckdb"
    PipelineStore(db)
    frame = pl.DataFrame({"x": [1]})
    message, pid = lock_wait_error(
        db, "transaction", lambda: PipelineStore(db, lock_timeout=0.5).save_dataframe(frame, "late")
    )
    assert f"PID {pid}" in message and "\n" not in message
    assert PipelineStore(db).list_tables() == []
