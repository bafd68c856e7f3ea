"""Head database mode: jobs write sentinels without DuckDB, one local job ingests them all.

Real DuckDB files, real jobs (through `Job` with a mock Snakemake object), and a real
subprocess killed by the fault point between two ingest commits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from usher_pipeline import __version__
from usher_pipeline.errors import UsherError
from usher_pipeline.persistence import PipelineStore
from usher_pipeline.persistence.errors import StoreError
from usher_pipeline.persistence.fingerprint import fingerprint_parquet
from usher_pipeline.workflow import Job, load_steplog
from usher_pipeline.workflow.ingest import ingest_sentinels
from usher_pipeline.workflow.merge import merge_provenance
from usher_pipeline.workflow.testing import mock_snakemake

TABLES = ("genes", "scores", "tiers")


def config(root: Path, mode: str = "head") -> dict[str, Any]:
    return {
        "duckdb_path": str(root / "results/pipeline.duckdb"),
        "store": {"lock_timeout_seconds": 30, "database_mode": mode},
        "_usher": {"config_hash": "c0ffee", "pipeline_version": __version__},
    }


def save(root: Path, table: str, frame: pl.DataFrame, mode: str = "head") -> dict[str, Any]:
    """Run one job that saves `frame` as `table` below `root`; returns its step log."""
    steplog = root / f"results/steplogs/{table}.json"
    smk = mock_snakemake(
        table,
        output={"table": root / f"results/tables/{table}.parquet", "steplog": steplog},
        config=config(root, mode),
    )
    with Job(smk) as job:
        job.save(frame, description=f"the {table} table")
    return load_steplog(steplog)


def frames(offset: int = 0) -> dict[str, pl.DataFrame]:
    return {
        table: pl.DataFrame(
            {"gene": [f"G{n}" for n in range(k * 10, k * 10 + 10)], "value": [offset + k] * 10}
        )
        for k, table in enumerate(TABLES)
    }


def ingest(root: Path, **kwargs: Any) -> dict[str, Any]:
    return ingest_sentinels(
        store(root),
        [root / f"results/tables/{t}.parquet" for t in TABLES],
        [root / f"results/steplogs/{t}.json" for t in TABLES],
        record=root / "results/ingested.json",
        **kwargs,
    )


def store(root: Path) -> PipelineStore:
    return PipelineStore(root / "results/pipeline.duckdb", lock_timeout=30, config_hash="c0ffee")


@pytest.fixture
def head_run(tmp_path: Path) -> Path:
    """Three tables saved by head-mode jobs, not yet ingested."""
    for table, frame in frames().items():
        save(tmp_path, table, frame)
    return tmp_path


# -- the jobs --------------------------------------------------------------------------------


JOB_SCRIPT = """
    import json, sys
    from pathlib import Path
    import polars as pl
    from usher_pipeline.workflow import Job
    from usher_pipeline.workflow.testing import mock_snakemake

    root, mode = Path(sys.argv[1]), sys.argv[2]
    smk = mock_snakemake(
        "genes",
        output={"table": root / "genes.parquet", "steplog": root / "genes.json"},
        config={"duckdb_path": str(root / "pipeline.duckdb"), "store": {"database_mode": mode}},
    )
    with Job(smk) as job:
        job.save(pl.DataFrame({"gene": ["MYO7A", "USH2A"]}))
    print(json.dumps("duckdb" in sys.modules))
"""


@pytest.mark.parametrize(("mode", "loads_duckdb"), [("head", False), ("job", True)])
def test_only_job_mode_jobs_load_duckdb(tmp_path: Path, mode: str, loads_duckdb: bool) -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(JOB_SCRIPT), str(tmp_path), mode],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) is loads_duckdb
    assert (tmp_path / "pipeline.duckdb").exists() is loads_duckdb


def test_head_mode_step_log_records_rows_but_leaves_the_fingerprint_to_the_ingest(
    head_run: Path,
) -> None:
    entry = load_steplog(head_run / "results/steplogs/genes.json")["outputs"][0]
    assert entry["rows"] == 10 and entry["table"] == "genes"
    assert entry["fingerprint"] is None and entry["committed_at"] is None
    assert not (head_run / "results/pipeline.duckdb").exists()


# -- the ingest ------------------------------------------------------------------------------


def test_ingest_writes_the_checkpoints_job_mode_writes(head_run: Path, tmp_path: Path) -> None:
    job_root = tmp_path / "job_mode"
    for table, frame in frames().items():
        save(job_root, table, frame, mode="job")
    record = ingest(head_run)

    columns = ("table_name", "row_count", "description", "fingerprint", "rule", "schema_json")
    head_rows = [{k: r[k] for k in columns} for r in store(head_run).list_checkpoints()]
    job_rows = [{k: r[k] for k in columns} for r in store(job_root).list_checkpoints()]
    assert head_rows == job_rows and len(head_rows) == 3
    for table in TABLES:
        sentinel = head_run / f"results/tables/{table}.parquet"
        assert record["tables"][table]["fingerprint"] == fingerprint_parquet(sentinel)[0]
        assert store(head_run).fingerprint(table) == record["tables"][table]["fingerprint"]
        assert record["tables"][table]["loaded"] is True
    assert json.loads((head_run / "results/ingested.json").read_text()) == record


def test_ingest_skips_unchanged_tables_and_reloads_a_changed_one(head_run: Path) -> None:
    ingest(head_run)
    before = {r["table_name"]: r for r in store(head_run).list_checkpoints()}

    again = ingest(head_run)
    assert [t["loaded"] for t in again["tables"].values()] == [False, False, False]
    assert {r["table_name"]: r for r in store(head_run).list_checkpoints()} == before

    save(head_run, "scores", frames(offset=100)["scores"])  # the scores job ran again
    third = ingest(head_run)
    assert {t: e["loaded"] for t, e in third["tables"].items()} == {
        "genes": False,
        "scores": True,
        "tiers": False,
    }
    after = {r["table_name"]: r for r in store(head_run).list_checkpoints()}
    assert after["genes"] == before["genes"] and after["tiers"] == before["tiers"]
    assert after["scores"]["fingerprint"] != before["scores"]["fingerprint"]
    assert store(head_run).load_dataframe("scores")["value"].unique().to_list() == [101]


def test_ingest_reloads_a_table_changed_in_the_database(head_run: Path) -> None:
    ingest(head_run)
    with store(head_run).connect() as conn:
        conn.execute("UPDATE _checkpoints SET fingerprint = 'fp1:stale' WHERE table_name = 'genes'")
    record = ingest(head_run)
    assert record["tables"]["genes"]["loaded"] is True
    checkpoint = store(head_run).get_checkpoint("genes")
    assert checkpoint["fingerprint"] == record["tables"]["genes"]["fingerprint"]


def test_ingest_refuses_a_sentinel_its_step_log_does_not_describe(head_run: Path) -> None:
    ingest(head_run)
    pl.DataFrame({"gene": ["CDH23"], "value": [9]}).write_parquet(
        head_run / "results/tables/scores.parquet"
    )
    with pytest.raises(UsherError, match="is not the file its step log .* describes"):
        ingest(head_run)
    assert store(head_run).load_dataframe("scores")["value"].to_list() == [1] * 10


def test_ingest_names_a_missing_sentinel_and_one_no_step_log_lists(head_run: Path) -> None:
    (head_run / "results/tables/tiers.parquet").unlink()
    with pytest.raises(UsherError, match=r"sentinel .*tiers.parquet does not exist.*rule tiers"):
        ingest(head_run)
    with pytest.raises(UsherError, match=r"no step log lists .*genes.parquet"):
        ingest_sentinels(
            store(head_run),
            [head_run / "results/tables/genes.parquet"],
            [head_run / "results/steplogs/scores.json"],
        )


KILLED_INGEST = """
    import sys
    from pathlib import Path
    from usher_pipeline.persistence import PipelineStore
    from usher_pipeline.workflow.ingest import ingest_sentinels

    root = Path(sys.argv[1])
    tables = ["genes", "scores", "tiers"]
    ingest_sentinels(
        PipelineStore(root / "results/pipeline.duckdb", config_hash="c0ffee"),
        [root / f"results/tables/{t}.parquet" for t in tables],
        [root / f"results/steplogs/{t}.json" for t in tables],
        commit_seconds=0.0,
    )
"""


def test_ingest_killed_between_commits_resumes_with_the_committed_tables(head_run: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_INGEST), str(head_run)],
        env={**os.environ, "USHER_FAULT_POINT": "after_ingest_commit:scores"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert [r["table_name"] for r in store(head_run).list_checkpoints()] == ["genes", "scores"]

    record = ingest(head_run)
    assert {t: e["loaded"] for t, e in record["tables"].items()} == {
        "genes": False,
        "scores": False,
        "tiers": True,
    }
    for table in TABLES:
        sentinel = head_run / f"results/tables/{table}.parquet"
        assert store(head_run).fingerprint(table) == fingerprint_parquet(sentinel)[0]


# -- the store session -----------------------------------------------------------------------


def test_a_session_commits_each_transaction_on_its_own(head_run: Path) -> None:
    db = store(head_run)
    with pytest.raises(RuntimeError, match="second failed"), db.session():
        with db.transaction() as tx:
            tx.save_dataframe(pl.DataFrame({"a": [1]}), "first")
        with db.transaction() as tx:
            tx.save_dataframe(pl.DataFrame({"a": [2]}), "second")
            raise RuntimeError("second failed")
    assert db.has_checkpoint("first") and not db.has_checkpoint("second")


def test_a_session_cannot_start_inside_a_transaction(head_run: Path) -> None:
    db = store(head_run)
    with pytest.raises(StoreError, match="cannot start inside a transaction"):
        with db.transaction(), db.session():
            pass


# -- provenance ------------------------------------------------------------------------------


def sidecar_fingerprints(root: Path) -> dict[str, str | None]:
    """Merge the step logs with the ingest record; each table's fingerprint in its sidecar."""
    merge_provenance(
        [root / f"results/steplogs/{t}.json" for t in TABLES],
        pipeline_version=__version__,
        ingested=[root / "results/ingested.json"],
    )
    return {
        table: json.loads((root / f"results/tables/{table}.provenance.json").read_text())["output"][
            "fingerprint"
        ]
        for table in TABLES
    }


def test_sidecars_take_head_mode_fingerprints_from_the_ingest_record(head_run: Path) -> None:
    record = ingest(head_run)
    assert sidecar_fingerprints(head_run) == {
        table: entry["fingerprint"] for table, entry in record["tables"].items()
    }

    # a record about other bytes (another SHA-256) does not lend its fingerprint
    tampered = json.loads((head_run / "results/ingested.json").read_text())
    tampered["tables"]["genes"]["sha256"] = "0" * 64
    (head_run / "results/ingested.json").write_text(json.dumps(tampered))
    assert sidecar_fingerprints(head_run)["genes"] is None
