"""Tests of ProvenanceTracker: metadata, steps, sidecars and `_provenance` rows."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

import usher_pipeline
from usher_pipeline.config import (
    PipelineConfig,
    jobs_config_hash,
    slice_hash,
    validate_config_dict,
)
from usher_pipeline.errors import UsherError
from usher_pipeline.hashing import sha256_json
from usher_pipeline.persistence import (
    PipelineStore,
    ProvenanceTracker,
    SidecarError,
    SidecarNotFound,
    sidecar_path,
)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
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
    # nothing was read yet: the config's versions are what is expected, not data sources
    assert metadata["data_source_versions"] == {}
    assert metadata["expected_data_source_versions"] == {
        "ensembl_release": 113,
        "gnomad_version": "v4.1",
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
    other_tiers = make_config(demo={"tiers": {"high": 0.6, "medium": 0.3}})
    assert ProvenanceTracker("0.1.0", other_tiers).config_hash() != metadata["config_hash"]
    expecting_more = make_config(versions={"ensembl_release": 113, "hpo": "2025-01-16"})
    assert ProvenanceTracker("0.1.0", expecting_more).config_hash() != metadata["config_hash"]
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


# -- trackers built from step logs (the workflow's provenance merge) ------------------------


def steplog(rule: str, ended: str, *, reads: str | None = None, **extra: object) -> dict:
    """A step log of a job of `rule` writing results/<rule>.parquet, reading `reads`'s output."""
    inputs = [{"name": "table", "path": f"results/{reads}.parquet"}] if reads else []
    record = {
        "format": "usher_pipeline.steplog/1",
        "rule": rule,
        "wildcards": {},
        "started_at": ended,
        "ended_at": ended,
        "inputs": inputs,
        "outputs": [{"name": "table", "path": f"results/{rule}.parquet", "rows": 3}],
    }
    record.update(extra)
    return record


def test_a_step_log_becomes_a_step_named_by_rule_and_wildcards() -> None:
    tracker = ProvenanceTracker("0.1.0")
    record = steplog("evidence", "2026-11-29T20:00:05.000000Z", wildcards={"layer": "retina"})
    step = tracker.record_steplog(record)
    assert step == {
        "step_name": "evidence[layer=retina]",
        "timestamp": "2026-11-29T20:00:05.000000Z",
        "details": record,
    }
    assert tracker.create_metadata()["processing_steps"] == [step]


def test_a_config_hash_without_a_config_is_recorded_and_both_are_refused() -> None:
    tracker = ProvenanceTracker("0.1.0", config_hash="ab" * 32, created_at="2026-01-02T03:04:05Z")
    metadata = tracker.create_metadata()
    assert metadata["config_hash"] == "ab" * 32
    assert metadata["created_at"] == "2026-01-02T03:04:05Z"
    with pytest.raises(ValueError, match="a config or a config_hash, not both"):
        ProvenanceTracker("0.1.0", make_config(), config_hash="ab" * 32)


def test_data_sources_added_later_win_and_the_config_versions_stay_expected(
    tracker: ProvenanceTracker,
) -> None:
    tracker.add_data_sources({"hpo": "2024-01-01", "ensembl_release": 114})
    tracker.add_data_sources({"hpo": "2025-01-16"})
    assert tracker.data_source_versions() == {"hpo": "2025-01-16", "ensembl_release": 114}
    metadata = tracker.create_metadata()
    assert metadata["data_source_versions"] == {"hpo": "2025-01-16", "ensembl_release": 114}
    assert metadata["expected_data_source_versions"] == {
        "ensembl_release": 113,
        "gnomad_version": "v4.1",
    }


def test_expected_versions_without_a_config_are_recorded_and_both_are_refused() -> None:
    tracker = ProvenanceTracker("0.1.0", expected_versions={"x": 1})
    assert tracker.create_metadata()["expected_data_source_versions"] == {"x": 1}
    assert tracker.create_metadata()["data_source_versions"] == {}
    assert "expected_data_source_versions" not in ProvenanceTracker("0.1.0").create_metadata()
    with pytest.raises(ValueError, match="a config or expected_versions, not both"):
        ProvenanceTracker("0.1.0", make_config(), expected_versions={"x": 1})


def test_sidecar_with_an_output_and_run_record_with_outputs(
    tracker: ProvenanceTracker, tmp_path: Path
) -> None:
    assert "output" not in tracker.create_metadata()
    assert "outputs" not in tracker.create_metadata()
    entry = {"path": str(tmp_path / "x.parquet"), "rows": 3, "sha256": "0" * 64}
    written = tracker.save_sidecar(entry["path"], output=entry)
    entry["rows"] = 0  # the caller's later change is not in the record
    sidecar = ProvenanceTracker.load_sidecar(written)
    assert sidecar["output"] == {"path": str(tmp_path / "x.parquet"), "rows": 3, "sha256": "0" * 64}
    assert "outputs" not in sidecar
    run_path = tmp_path / "provenance.json"
    assert tracker.save_run_record(run_path, [{"name": "table", "path": "a"}]) == run_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["provenance.json", "x.provenance.json"]
    run = json.loads(run_path.read_text())
    assert run["outputs"] == [{"name": "table", "path": "a"}]
    assert "output" not in run
    assert run["run_id"] == sidecar["run_id"] == tracker.run_id
    assert tracker.rows() == [(entry["path"], sidecar), (str(run_path), run)]


def test_save_many_to_store_writes_every_tracker_row_under_its_run(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = PipelineStore(db_path)
    first = ProvenanceTracker("0.1.0", run_id="run-a")
    second = ProvenanceTracker("0.1.0", run_id="run-a")
    other = ProvenanceTracker("0.1.0", run_id="run-b")
    first.save_sidecar("a.parquet", output={"rows": 1})
    second.record_step("second")
    second.save_sidecar(tmp_path / "b.parquet")
    second.save_sidecar("a.parquet", output={"rows": 2})  # a path again: the last one wins
    other.save_sidecar("a.parquet", output={"rows": 3})
    assert ProvenanceTracker.save_many_to_store(store, [first, second, other]) == 3
    rows = {(r[0], r[1]): json.loads(r[4]) for r in provenance_rows(db_path)}
    b_path = str(tmp_path / "b.parquet")
    assert set(rows) == {("run-a", "a.parquet"), ("run-a", b_path), ("run-b", "a.parquet")}
    assert rows[("run-a", "a.parquet")] == second.rows()[1][1]
    assert rows[("run-a", "a.parquet")]["output"] == {"rows": 2}
    assert rows[("run-b", "a.parquet")]["output"] == {"rows": 3}
    assert rows[("run-a", b_path)] == ProvenanceTracker.load_sidecar(tmp_path / "b.parquet")
    assert ProvenanceTracker.save_many_to_store(store, [ProvenanceTracker("0.1.0")]) == 0
    assert len(provenance_rows(db_path)) == 3


def test_recorded_rows_of_several_runs_commit_together_or_not_at_all(db_path: Path) -> None:
    store = PipelineStore(db_path)
    rows = [("run-a", "x.parquet", {"n": 1}), ("run-b", "x.parquet", {"n": 2})]
    assert ProvenanceTracker.record_rows(store, rows) == 2
    stored = {(r[0], r[1]): json.loads(r[4]) for r in provenance_rows(db_path)}
    assert stored == {("run-a", "x.parquet"): {"n": 1}, ("run-b", "x.parquet"): {"n": 2}}

    bad = [("run-c", "y.parquet", {"n": 3}), ("run-d", "y.parquet", {1: "a", "b": 2})]
    with pytest.raises(TypeError):
        ProvenanceTracker.record_rows(store, bad)  # mixed key types: not sortable JSON
    assert {(r[0], r[1]) for r in provenance_rows(db_path)} == set(stored)


def test_merge_writes_sidecars_run_record_and_rows_through_trackers(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from usher_pipeline.workflow.merge import merge_provenance

    monkeypatch.chdir(tmp_path)
    records = {
        "late": steplog("late", "2026-11-29T20:00:09.000000Z", data_sources={"hpo": "old"}),
        "universe": steplog("universe", "2026-11-29T20:00:01.000000Z", data_sources={"hpo": "new"}),
        "scores": steplog(
            "scores",
            "2026-11-29T20:00:02.000000Z",
            reads="universe",
            params={"weights": [0.5, 0.5]},
            config_slice_hash=slice_hash({"weights": [0.5, 0.5]}),
        ),
    }
    paths = []
    for name, record in records.items():
        path = tmp_path / "steplogs" / f"{name}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(record), encoding="utf-8")
        paths.append(path)
    summary = merge_provenance(
        paths,
        pipeline_version="0.1.0",
        expected_versions={"hpo": "config", "ensembl_release": 113},
        run_record="results/provenance.json",
        store=PipelineStore(db_path),
    )
    scores = ProvenanceTracker.load_sidecar("results/scores.parquet")
    assert set(scores) == METADATA_KEYS | {"run_id", "output"}
    assert scores["output"] == {"path": "results/scores.parquet", "rows": 3}  # no "name"
    assert [s["step_name"] for s in scores["processing_steps"]] == ["universe", "scores"]
    assert scores["processing_steps"][0]["details"] == records["universe"]
    assert scores["processing_steps"][0]["timestamp"] == records["universe"]["ended_at"]
    # only what its lineage recorded having read: nothing from the config
    assert scores["data_source_versions"] == {"hpo": "new"}
    assert "expected_data_source_versions" not in scores
    # a sidecar's config hash covers the slices of its lineage's jobs, the run's every job's
    pairs = {
        "universe": ["universe", slice_hash({})],  # no params: the slice {}
        "scores": ["scores", slice_hash({"weights": [0.5, 0.5]})],
        "late": ["late", slice_hash({})],
    }
    assert scores["config_hash"] == sha256_json(sorted([pairs["universe"], pairs["scores"]]))
    assert ProvenanceTracker.load_sidecar("results/universe.parquet")["config_hash"] == (
        sha256_json([pairs["universe"]])
    )
    assert scores["run_id"] == summary["run_id"]
    run = json.loads((tmp_path / "results" / "provenance.json").read_text())
    assert set(run) == METADATA_KEYS | {"run_id", "outputs", "expected_data_source_versions"}
    assert run["config_hash"] == sha256_json(sorted(pairs.values()))
    assert [s["step_name"] for s in run["processing_steps"]] == ["universe", "scores", "late"]
    # a run's data sources are taken in the order the step logs were given: the last wins
    assert run["data_source_versions"] == {"hpo": "new"}
    assert run["expected_data_source_versions"] == {"hpo": "config", "ensembl_release": 113}
    assert run["outputs"] == [e for r in records.values() for e in r["outputs"]]
    assert {run["created_at"]} == {
        ProvenanceTracker.load_sidecar(f"results/{n}.parquet")["created_at"] for n in records
    }
    rows = {r[1]: (r[0], json.loads(r[4])) for r in provenance_rows(db_path)}
    assert sorted(rows) == [
        "results/late.parquet",
        "results/provenance.json",
        "results/scores.parquet",
        "results/universe.parquet",
    ]
    assert rows["results/scores.parquet"] == (summary["run_id"], scores)
    assert rows["results/provenance.json"] == (summary["run_id"], run)


# -- the config hashes of jobs, sidecars and runs -------------------------------------------


def test_the_hash_of_jobs_slices_is_by_step_name_and_slice_whatever_the_order() -> None:
    hearing = steplog("evidence", "t", wildcards={"layer": "hearing"}, params={"terms": ["a"]})
    retina = steplog("evidence", "t", wildcards={"layer": "retina"}, params={"terms": ["b"]})
    assert "config_slice_hash" not in hearing  # computed from the params it records
    both = jobs_config_hash([hearing, retina])
    assert both == jobs_config_hash([retina, hearing])
    assert both == sha256_json(
        [
            ["evidence[layer=hearing]", slice_hash({"terms": ["a"]})],
            ["evidence[layer=retina]", slice_hash({"terms": ["b"]})],
        ]
    )
    recorded = {**hearing, "config_slice_hash": slice_hash({"terms": ["a"]})}
    assert jobs_config_hash([recorded, retina]) == both
    # the same slices under other step names, or another slice, are another hash
    swapped = {**retina, "params": {"terms": ["a"]}}
    assert jobs_config_hash([{**hearing, "params": {"terms": ["b"]}}, swapped]) != both
    assert jobs_config_hash([hearing]) != both
    assert jobs_config_hash([{**hearing, "params": {"terms": ["a", "c"]}}, retina]) != both
    # a slice hash is that of the params' canonical JSON: key order does not count
    assert slice_hash({"a": 1, "b": [1, 2]}) == slice_hash({"b": [1, 2], "a": 1})
    assert slice_hash({"a": 1}) != slice_hash({"a": 1.5})


# -- a workflow of its own: what its jobs read against what its config expects ---------------

EXPECTING_SNAKEFILE = """\
configfile: "config.yaml"


include: "{repo}/rules/library.smk"


USHER.register("first")
USHER.register("second")


rule first:
    output:
        table=USHER.sentinel("first"),
        steplog=USHER.steplog("first"),
    log:
        USHER.log("first", "first"),
    params:
        read={{"x": 2, "y": "a"}},
    script:
        "record.py"


rule second:
    output:
        table=USHER.sentinel("second"),
        steplog=USHER.steplog("second"),
    log:
        USHER.log("second", "second"),
    params:
        read={{"x": 1}},
    script:
        "record.py"


include: "{repo}/rules/provenance.smk"


rule all:
    default_target: True
    input:
        USHER.run_record,
        USHER.products(),
        USHER.sidecars(),
        USHER.steplogs(),
"""

RECORDING_SCRIPT = """\
import polars as pl

from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    for name, version in dict(snakemake.params.read).items():
        job.record_data_source(name, version)
    job.save(pl.DataFrame({"n": [1, 2]}), description="two numbers")
"""


def run_in(folder: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """A command of the venv run in `folder`, outside the repository."""
    return subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_verify_names_a_data_source_read_in_another_version_than_the_config_expects(
    tmp_path: Path,
) -> None:
    (tmp_path / "Snakefile").write_text(EXPECTING_SNAKEFILE.format(repo=REPO), encoding="utf-8")
    (tmp_path / "record.py").write_text(RECORDING_SCRIPT, encoding="utf-8")
    config = tmp_path / "config.yaml"
    config.write_text("versions:\n  x: 1\n  y: a\n", encoding="utf-8")
    done = run_in(tmp_path, "snakemake", "--cores", "1")
    assert done.returncode == 0, done.stderr[-3000:]

    # a sidecar lists what its lineage read, the run record also what the config expects
    first = ProvenanceTracker.load_sidecar(tmp_path / "results/tables/first.parquet")
    assert first["data_source_versions"] == {"x": 2, "y": "a"}
    assert "expected_data_source_versions" not in first
    second = ProvenanceTracker.load_sidecar(tmp_path / "results/tables/second.parquet")
    assert second["data_source_versions"] == {"x": 1}
    run = json.loads((tmp_path / "results/provenance.json").read_text(encoding="utf-8"))
    assert run["expected_data_source_versions"] == {"x": 1, "y": "a"}

    checked = run_in(tmp_path, "usher-pipeline", "verify")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    lines = checked.stdout.splitlines()
    version_lines = [line for line in lines if line.startswith("VERSION")]
    assert version_lines == [
        "VERSION  data source x: first read version 2 but the config expects 1 (versions.x): "
        "set versions.x to what the jobs should read, and rerun them if it is not the version "
        "they read"
    ]
    assert lines[-1].startswith("verify: 1 problem, 0 repairable")

    # the config now expects what `first` read: only the provenance rule reruns, and verify
    # names the job that read the other version
    config.write_text("versions:\n  x: 2\n  y: a\n", encoding="utf-8")
    done = run_in(tmp_path, "snakemake", "--cores", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rule provenance:" in done.stderr
    assert "rule first:" not in done.stderr and "rule second:" not in done.stderr
    checked = run_in(tmp_path, "usher-pipeline", "verify")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert [line for line in checked.stdout.splitlines() if line.startswith("VERSION")] == [
        "VERSION  data source x: second read version 1 but the config expects 2 (versions.x): "
        "set versions.x to what the jobs should read, and rerun them if it is not the version "
        "they read"
    ]
