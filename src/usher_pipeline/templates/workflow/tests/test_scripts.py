"""The workflow's scripts run under pytest, outside Snakemake, on a real store in tmp_path.

`mock_snakemake` builds the `snakemake` object a `script:` receives; `run_script` runs the
script with it, as Snakemake does.
"""

import json
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from usher_pipeline.workflow import mock_snakemake, run_script

WORKFLOW = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((WORKFLOW / "config" / "config.yaml").read_text())


def job_config(tmp_path: Path) -> dict[str, Any]:
    """The workflow's config with the store in tmp_path and no wait between batches."""
    return {
        **CONFIG,
        "duckdb_path": str(tmp_path / "pipeline.duckdb"),
        "fetch": {"batch_size": 3, "latency_seconds": 0},
    }


def fetch_records(tmp_path: Path, count: int) -> Path:
    """Run the fetch script for `count` keys; returns the sentinel it saved."""
    sentinel = tmp_path / "tables" / "records.parquet"
    smk = mock_snakemake(
        "records",
        output={"table": sentinel, "steplog": tmp_path / "steplogs" / "records.json"},
        params={"how_many": count, "prefix": "k"},
        log=[tmp_path / "logs" / "records.log"],
        config=job_config(tmp_path),
    )
    run_script(WORKFLOW / "scripts" / "fetch_records.py", smk)
    return sentinel


def test_fetch_returns_one_record_per_key_in_batches(tmp_path: Path) -> None:
    records = pl.read_parquet(fetch_records(tmp_path, 10))
    assert records["key"].to_list() == [f"k{i:04d}" for i in range(10)]
    assert records["value"].is_between(0, 999).all()
    steplog = json.loads((tmp_path / "steplogs" / "records.json").read_text())
    fetch = next(s for s in steplog["steps"] if s["step_name"] == "batched_fetch")
    assert fetch["details"]["batches_total"] == 4  # 10 keys in batches of 3


def test_summary_counts_the_values_at_or_above_the_threshold(tmp_path: Path) -> None:
    sentinel = fetch_records(tmp_path, 25)
    values = pl.read_parquet(sentinel)["value"]
    threshold = int(values.median() or 0)
    outputs = {
        "table": tmp_path / "tables" / "record_summary.parquet",
        "tsv": tmp_path / "final" / "record_summary.tsv",
        "steplog": tmp_path / "steplogs" / "record_summary.json",
    }
    smk = mock_snakemake(
        "record_summary",
        input={"records": sentinel},
        output=outputs,
        params={"threshold": threshold},
        log=[tmp_path / "logs" / "record_summary.log"],
        config=job_config(tmp_path),
    )
    run_script(WORKFLOW / "scripts" / "summarise_records.py", smk)
    report = pl.read_csv(outputs["tsv"], separator="\t")
    assert report.row(0, named=True) == {
        "records": 25,
        "at_or_above_threshold": int((values >= threshold).sum()),
        "min_value": values.min(),
        "max_value": values.max(),
    }
    assert pl.read_parquet(outputs["table"]).rows() == report.rows()
