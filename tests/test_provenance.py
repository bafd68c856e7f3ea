"""Tests of ProvenanceTracker: metadata, steps, sidecars and `_provenance` rows."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import pytest

import usher_pipeline
from usher_pipeline.config import PipelineConfig, validate_config_dict
from usher_pipeline.errors import UsherError
from usher_pipeline.persistence import (
    PipelineStore,
    ProvenanceTracker,
    SidecarError,
    SidecarNotFound,
    sidecar_path,
)

METADATA_KEYS = {
    "pipeline_version",
    "data_source_versions",
    "config_hash",
    "created_at",
    "processing_steps",
}


def make_config(**changes: object) -> PipelineConfig:
    """A valid config with top-level `changes` applied."""
    data: dict[str, object] = {"versions": {"ensembl_release": 113, "gnomad_version": "v4.1"}}
    data.update(changes)
    return validate_config_dict(data, "test")


@pytest.fixture
def tracker() -> ProvenanceTracker:
    return ProvenanceTracker("0.1.0", make_config())


def parse_utc(stamp: str) -> dt.datetime:
    """Parse an ISO 8601 timestamp and insist that it is UTC, written with a trailing Z."""
    assert stamp.endswith("Z"), stamp
    parsed = dt.datetime.fromisoformat(stamp)
    assert parsed.utcoffset() == dt.timedelta(0)
    return parsed


def provenance_rows(db_path: Path) -> list[tuple]:
    """The `_provenance` rows, read without the store."""
    with duckdb.connect(str(db_path), read_only=True) as conn:
        return conn.sql(
            "SELECT run_id, output_path, pipeline_version, config_hash, metadata, created_at "
            "FROM _provenance ORDER BY output_path"
        ).fetchall()


# -- the plan's tests -----------------------------------------------------------------------


def test_provenance_metadata_structure(tracker: ProvenanceTracker) -> None:
    metadata = tracker.create_metadata()
    assert METADATA_KEYS <= set(metadata)
    assert metadata["pipeline_version"] == "0.1.0"
    assert metadata["data_source_versions"] == {
        "ensembl_release": 113,
        "gnomad_version": "v4.1",
        "gtex_version": "v8",
        "hpa_version": "23.0",
    }
    assert metadata["processing_steps"] == []
    assert isinstance(metadata["created_at"], str)
    parse_utc(metadata["created_at"])
    assert metadata["run_id"] == tracker.run_id
    json.dumps(metadata)  # plain JSON, no Python objects


def test_provenance_records_steps(tracker: ProvenanceTracker) -> None:
    details = {"genes": 19_000, "source": "hgnc"}
    first = tracker.record_step("load_genes", details)
    tracker.record_step("filter_protein_coding")
    details["genes"] = 0  # a later change by the caller does not rewrite history
    steps = tracker.create_metadata()["processing_steps"]
    assert [s["step_name"] for s in steps] == ["load_genes", "filter_protein_coding"]
    assert steps[0]["details"] == {"genes": 19_000, "source": "hgnc"}
    assert steps[1]["details"] == {}
    assert first == steps[0]
    assert set(steps[0]) == {"step_name", "timestamp", "details"}
    times = [parse_utc(s["timestamp"]) for s in steps]
    assert times == sorted(times)
    assert parse_utc(tracker.create_metadata()["created_at"]) <= times[0]


def test_provenance_sidecar_roundtrip(tracker: ProvenanceTracker, tmp_path: Path) -> None:
    tracker.add_data_source("hpo", "2025-01-16")
    tracker.record_step("score", {"weights": {"gnomad": 0.2}, "rows": [1, 2]})
    output = tmp_path / "results" / "gene_scores.parquet"
    written = tracker.save_sidecar(output)
    assert written == tmp_path / "results" / "gene_scores.provenance.json"
    assert written.is_file()
    loaded = ProvenanceTracker.load_sidecar(output)
    assert loaded == tracker.create_metadata()
    assert loaded["data_source_versions"]["hpo"] == "2025-01-16"
    assert ProvenanceTracker.load_sidecar(written) == loaded


def test_provenance_config_hash_included(tmp_path: Path) -> None:
    config = make_config()
    metadata = ProvenanceTracker("0.1.0", config).create_metadata()
    assert metadata["config_hash"] == config.config_hash()
    assert len(metadata["config_hash"]) == 64
    reweighted = make_config(
        scoring={
            "gnomad": 0.30,
            "expression": 0.10,
            "annotation": 0.15,
            "localization": 0.15,
            "animal_model": 0.15,
            "literature": 0.15,
        }
    )
    assert ProvenanceTracker("0.1.0", reweighted).config_hash() != metadata["config_hash"]
    moved = make_config(duckdb_path=str(tmp_path / "elsewhere.duckdb"))
    assert ProvenanceTracker("0.1.0", moved).config_hash() == metadata["config_hash"]
    assert ProvenanceTracker("0.1.0").create_metadata()["config_hash"] is None


def test_provenance_save_to_store(tracker: ProvenanceTracker, db_path: Path) -> None:
    store = PipelineStore(db_path)
    tracker.record_step("gene_universe", {"rows": 5})
    tracker.save_to_store(store)
    rows = provenance_rows(db_path)
    assert len(rows) == 1
    run_id, output_path, version, config_hash, metadata, created_at = rows[0]
    assert run_id == tracker.run_id
    assert output_path == ""
    assert version == "0.1.0"
    assert config_hash == tracker.config_hash()
    assert json.loads(metadata) == tracker.create_metadata()
    assert created_at == parse_utc(tracker.created_at).replace(tzinfo=None)


# -- more on the store rows -----------------------------------------------------------------


def test_saving_the_same_tracker_twice_updates_its_row(
    tracker: ProvenanceTracker, db_path: Path
) -> None:
    store = PipelineStore(db_path)
    tracker.record_step("first")
    tracker.save_to_store(store)
    tracker.record_step("second")
    tracker.save_to_store(store)
    rows = provenance_rows(db_path)
    assert len(rows) == 1
    steps = json.loads(rows[0][4])["processing_steps"]
    assert [s["step_name"] for s in steps] == ["first", "second"]


def test_runs_and_outputs_get_their_own_rows(tracker: ProvenanceTracker, db_path: Path) -> None:
    store = PipelineStore(db_path)
    tracker.save_to_store(store, "results/a.parquet")
    tracker.save_to_store(store, "results/b.parquet")
    tracker.save_to_store(store, "results/a.parquet")
    other = ProvenanceTracker("0.1.0", make_config())
    other.save_to_store(store, "results/a.parquet")
    rows = provenance_rows(db_path)
    assert sorted((r[0], r[1]) for r in rows) == sorted(
        [
            (tracker.run_id, "results/a.parquet"),
            (tracker.run_id, "results/b.parquet"),
            (other.run_id, "results/a.parquet"),
        ]
    )
    assert other.run_id != tracker.run_id


def test_save_to_store_inside_a_transaction_rolls_back_with_it(
    tracker: ProvenanceTracker, db_path: Path
) -> None:
    store = PipelineStore(db_path)
    with pytest.raises(RuntimeError), store.transaction():
        tracker.save_to_store(store, "results/x.parquet")
        raise RuntimeError("job failed")
    assert provenance_rows(db_path) == []


# -- sidecar paths and atomic writes --------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "sidecar"),
    [
        ("x.parquet", "x.provenance.json"),
        ("results/final/candidates.tsv", "results/final/candidates.provenance.json"),
        ("results/x.provenance.json", "results/x.provenance.json"),
        ("results/no_suffix", "results/no_suffix.provenance.json"),
        ("results/v1.2/scores.parquet", "results/v1.2/scores.provenance.json"),
    ],
)
def test_sidecar_path_rules(output: str, sidecar: str) -> None:
    assert sidecar_path(output) == Path(sidecar)
    assert sidecar_path(sidecar_path(output)) == Path(sidecar)


def test_sidecar_path_given_as_sidecar_is_not_doubled(
    tracker: ProvenanceTracker, tmp_path: Path
) -> None:
    target = tmp_path / "scores.provenance.json"
    assert tracker.save_sidecar(target) == target
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.provenance.json"]


def test_sidecar_is_replaced_atomically(tracker: ProvenanceTracker, tmp_path: Path) -> None:
    output = tmp_path / "out" / "scores.parquet"
    sidecar = tracker.save_sidecar(output)
    old_text = sidecar.read_text()
    old_inode = sidecar.stat().st_ino
    with open(sidecar, encoding="utf-8") as old_handle:
        tracker.record_step("rescore", {"n": 1})
        tracker.save_sidecar(output)
        # an open reader keeps the whole old file: the new one arrived by rename
        assert json.loads(old_handle.read()) == json.loads(old_text)
    assert sidecar.stat().st_ino != old_inode
    assert len(ProvenanceTracker.load_sidecar(output)["processing_steps"]) == 1
    assert sorted(p.name for p in sidecar.parent.iterdir()) == ["scores.provenance.json"]


def test_missing_or_broken_sidecar_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SidecarNotFound, match=r"scores\.provenance\.json does not exist") as info:
        ProvenanceTracker.load_sidecar(tmp_path / "scores.parquet")
    assert isinstance(info.value, UsherError)
    assert isinstance(info.value, FileNotFoundError)
    broken = tmp_path / "broken.provenance.json"
    broken.write_text('{"pipeline_version": ', encoding="utf-8")
    with pytest.raises(SidecarError, match="broken.provenance.json cannot be read.*rerun"):
        ProvenanceTracker.load_sidecar(broken)
    listed = tmp_path / "listed.provenance.json"
    listed.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(SidecarError, match="is not a JSON object"):
        ProvenanceTracker.load_sidecar(listed)


# -- construction ---------------------------------------------------------------------------


def test_from_config_uses_package_version_unless_given() -> None:
    config = make_config()
    default = ProvenanceTracker.from_config(config)
    assert default.pipeline_version == usher_pipeline.__version__
    assert default.config_hash() == config.config_hash()
    assert ProvenanceTracker.from_config(config, version="9.9.9").pipeline_version == "9.9.9"


def test_timestamps_are_iso_8601_utc() -> None:
    before = dt.datetime.now(dt.UTC)
    tracker = ProvenanceTracker("0.1.0")
    step = tracker.record_step("s")
    after = dt.datetime.now(dt.UTC)
    for stamp in (tracker.created_at, step["timestamp"]):
        assert before <= parse_utc(stamp) <= after
