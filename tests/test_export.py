"""Exports of a real demo run, read back by their own libraries: PROV-JSON with `prov`, the
Workflow Run RO-Crate with `rocrate` and `runcrate`, and the Snakemake report."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest
from conftest import mounted_read_only, mounted_tmpfs
from test_cli import REPO, make_demo_run, run_snakemake

from usher_pipeline.cli import main
from usher_pipeline.export.run import load_run
from usher_pipeline.export.summary import render_summary
from usher_pipeline.lineage import Lineage

PROVENANCE_RUN_CRATE = "https://w3id.org/ro/wfrun/provenance/0.5"


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_run(tmp_path_factory)


@pytest.fixture
def in_run(demo_run: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(demo_run)
    return demo_run


def steplogs(workdir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((workdir / "results/steplogs").glob("*"))]


# -- W3C PROV ------------------------------------------------------------------------------


def test_prov_export_reads_back_with_entities_activities_and_relations(in_run, tmp_path, capsys):
    from prov.model import (
        ProvActivity,
        ProvAgent,
        ProvAssociation,
        ProvDerivation,
        ProvDocument,
        ProvEntity,
        ProvGeneration,
        ProvUsage,
    )

    target = tmp_path / "run.prov.json"
    assert main(["export-prov", str(target)]) == 0
    printed = capsys.readouterr().out
    doc = ProvDocument.deserialize(source=str(target), format="json")
    records = doc.get_records()

    logs = steplogs(in_run)
    paths = {os.path.normpath(e["path"]) for r in logs for e in r["inputs"] + r["outputs"]}
    entities = [r for r in records if isinstance(r, ProvEntity)]
    assert len(entities) == len(paths) + 1  # every file, and the config
    activities = [r for r in records if isinstance(r, ProvActivity)]
    assert len(activities) == len(logs) == 9
    agents = {str(a.identifier) for a in records if isinstance(a, ProvAgent)}
    assert {"sw:snakemake-9.27.1", "sw:usher_pipeline-0.1.0"} <= agents
    assert any(a.startswith("host:") for a in agents) and any(a.startswith("user:") for a in agents)
    assert f"{len(entities)} entities, {len(activities)} activities" in printed

    universe = "file:results/tables/gene_universe.parquet"
    job = "job:gene_universe"
    generated = [r for r in records if isinstance(r, ProvGeneration) and str(r.args[0]) == universe]
    assert [str(r.args[1]) for r in generated] == [job]
    used = {str(r.args[1]) for r in records if isinstance(r, ProvUsage) and str(r.args[0]) == job}
    assert "file:results/tables/known_usher_genes.parquet" in used
    derived = {
        str(r.args[1])
        for r in records
        if isinstance(r, ProvDerivation) and str(r.args[0]) == universe
    }
    assert "file:results/tables/known_usher_genes.parquet" in derived
    associated = {
        str(r.args[1]) for r in records if isinstance(r, ProvAssociation) and str(r.args[0]) == job
    }
    assert "sw:snakemake-9.27.1" in associated

    entry = next(e for r in logs for e in r["outputs"] if e.get("table") == "gene_universe")
    record = next(e for e in entities if str(e.identifier) == universe)
    attributes = {str(k): v for k, v in record.attributes}
    assert attributes["usher:sha256"] == entry["sha256"]
    assert int(attributes["usher:rows"]) == entry["rows"]
    activity = next(a for a in activities if str(a.identifier) == job)
    assert activity.get_startTime() < activity.get_endTime()


# -- Workflow Run RO-Crate -----------------------------------------------------------------


def test_rocrate_export_follows_the_provenance_run_crate_profile(in_run, tmp_path, capsys):
    from rocrate.rocrate import ROCrate

    target = tmp_path / "crate"
    code = main(["export-rocrate", str(target), "--snakefile", str(REPO / "Snakefile")])
    assert code == 0
    assert "10 actions" in capsys.readouterr().out
    crate = ROCrate(target)

    profiles = {p.id for p in crate.root_dataset["conformsTo"]}
    assert PROVENANCE_RUN_CRATE in profiles
    assert "https://w3id.org/ro/wfrun/workflow/0.5" in profiles
    workflow = crate.mainEntity
    assert workflow.id == "Snakefile"
    assert "ComputationalWorkflow" in workflow.type
    assert (target / "Snakefile").read_text() == (REPO / "Snakefile").read_text()

    logs = steplogs(in_run)
    actions = [e for e in crate.get_entities() if e.type == "CreateAction"]
    assert len(actions) == len(logs) + 1
    run = next(a for a in actions if a["instrument"] is workflow)
    jobs = [a for a in actions if a is not run]
    for action in jobs:
        assert action["instrument"].type == "SoftwareApplication"
        assert action["startTime"] <= action["endTime"]
        assert action["result"], action.id
    evidence = next(a for a in jobs if a.id == "#job-evidence-layer-hearing")
    inputs = {o.id for o in evidence["object"]}
    assert "results/tables/gene_universe.parquet" in inputs
    assert [r.id for r in evidence["result"]] == ["results/tables/evidence_hearing.parquet"]
    assert (target / "results/tables/evidence_hearing.parquet").is_file()

    config = next(o for o in run["object"] if o.id == "config/config.yaml")
    assert config["exampleOfWork"].type == "FormalParameter"
    assert config["exampleOfWork"] in workflow["input"]
    step_ids = {s.id for s in workflow["step"]}
    controls = [e for e in crate.get_entities() if e.type == "ControlAction"]
    assert len(controls) == len(jobs)
    assert all(c["instrument"].id in step_ids for c in controls)
    organize = next(e for e in crate.get_entities() if e.type == "OrganizeAction")
    assert organize["result"] is run
    assert organize["instrument"]["name"] == "Snakemake"


def test_runcrate_reads_every_action_of_the_crate(in_run, tmp_path):
    from runcrate.report import dump_crate_actions

    target = tmp_path / "crate"
    assert main(["export-rocrate", str(target), "--snakefile", str(REPO / "Snakefile")]) == 0
    text = io.StringIO()
    dump_crate_actions(str(target), f=text)
    report = text.getvalue()
    assert report.count("action: ") == 10
    assert report.startswith("action: #workflow-run")
    assert "step: #step-evidence" in report
    assert "config/config.yaml <- #param-config" in report


def test_rocrate_export_refuses_a_non_empty_directory(in_run, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("keep me")
    assert main(["export-rocrate", str(tmp_path / "taken")]) == 1
    assert "not an empty directory" in capsys.readouterr().err
    assert (tmp_path / "taken" / "file").read_text() == "keep me"


# -- exports to places that cannot take them -----------------------------------------------


@pytest.fixture
def read_only_folder(tmp_path: Path):
    """An empty folder that cannot be written to."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    with mounted_read_only(folder):
        yield folder


SNAKEFILE = {"export-prov": [], "export-rocrate": ["--snakefile", str(REPO / "Snakefile")]}


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("usher-pipeline: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("command", ["export-prov", "export-rocrate"])
def test_export_into_a_read_only_folder_is_one_line_and_writes_nothing(
    in_run, read_only_folder, capsys, command
):
    target = read_only_folder / ("run.prov.json" if command == "export-prov" else "crate")
    assert main([command, str(target), *SNAKEFILE[command]]) == 1
    err = one_line_error(capsys)
    assert str(target) in err and f"make {read_only_folder} writable" in err
    assert list(read_only_folder.iterdir()) == []


def test_prov_export_onto_a_directory_is_one_line_and_changes_nothing(in_run, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("keep me")
    assert main(["export-prov", str(tmp_path / "taken")]) == 1
    err = one_line_error(capsys)
    assert f"{tmp_path / 'taken'} is a directory" in err
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["file"]
    assert (tmp_path / "taken" / "file").read_text() == "keep me"


def test_rocrate_export_onto_a_file_is_one_line_and_keeps_the_file(in_run, tmp_path, capsys):
    (tmp_path / "taken").write_text("keep me")
    assert main(["export-rocrate", str(tmp_path / "taken"), *SNAKEFILE["export-rocrate"]]) == 1
    assert f"{tmp_path / 'taken'} is a file" in one_line_error(capsys)
    assert (tmp_path / "taken").read_text() == "keep me"


def test_rocrate_export_fills_an_existing_empty_directory(in_run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["export-rocrate", str(tmp_path / "empty"), *SNAKEFILE["export-rocrate"]]) == 0
    assert (tmp_path / "empty" / "ro-crate-metadata.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]  # no staging folder left


def test_rocrate_export_that_fills_the_disk_leaves_no_half_written_crate(in_run, tmp_path, capsys):
    with mounted_tmpfs(tmp_path / "disk", "64k") as disk:
        assert main(["export-rocrate", str(disk / "crate"), *SNAKEFILE["export-rocrate"]]) == 1
        err = one_line_error(capsys)
        assert "No space left on device" in err and str(disk / "crate") in err
        assert list(disk.iterdir()) == []


# -- the run's step logs -------------------------------------------------------------------


def test_run_records_list_jobs_upstream_first_with_the_graph_of_that_order(demo_run):
    run = load_run(demo_run / "results")
    assert sorted(map(str, run.steplogs)) == sorted(
        str(p) for p in (demo_run / "results" / "steplogs").glob("*.json")
    )
    for record, path in zip(run.records, run.steplogs, strict=True):
        assert json.loads(path.read_text()) == record
    graph = run.lineage
    assert graph.records == run.records
    assert graph.order == list(range(len(run.records)))
    rebuilt = Lineage(run.records)
    assert (graph.parents, graph.producer) == (rebuilt.parents, rebuilt.producer)
    assert all(parent < job for job, parents in enumerate(graph.parents) for parent in parents)
    universe = run.labels().index("gene_universe")
    tiers = run.labels().index("candidate_tiers")
    assert universe in graph.lineage(tiers)
    assert graph.lineage(tiers) == rebuilt.lineage(tiers)


# -- Snakemake report ----------------------------------------------------------------------


def test_provenance_summary_lists_versions_config_hash_and_every_job(demo_run):
    run = json.loads((demo_run / "results/provenance.json").read_text())
    html = render_summary(run)
    assert run["config_hash"] in html
    assert "snakemake</td><td>9.27.1" in html
    for label in load_run(demo_run / "results").labels():
        assert f"<td>{label}</td>" in html
    written = (demo_run / "results/final/provenance_summary.html").read_text()
    assert written == html


@pytest.mark.slow
def test_snakemake_report_holds_tiers_table_and_provenance_summary(demo_run, tmp_path):
    target = tmp_path / "report.zip"
    run_snakemake(demo_run, "--report", str(target))
    with zipfile.ZipFile(target) as archive:
        names = archive.namelist()
        tiers = next(n for n in names if n.endswith("/candidate_tiers.tsv"))
        summary = next(n for n in names if n.endswith("/provenance_summary.html"))
        assert archive.read(tiers) == (demo_run / "results/final/candidate_tiers.tsv").read_bytes()
        assert b"config hash" in archive.read(summary)
        page = archive.read("report/report.html").decode()
    assert "Provenance summary of this run" in page
    assert "HIGH at a score of\\nat least 0.5" in page  # caption rendered with the config
