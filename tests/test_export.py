"""Exports of a real demo run, read back by their own libraries: PROV-JSON with `prov`, the
Workflow Run RO-Crate with `rocrate` and `runcrate`, and the Snakemake report."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest
from conftest import mounted_read_only, mounted_tmpfs
from test_cli import BIN, REPO, make_demo_run, run_snakemake

import usher_pipeline
from usher_pipeline.cli import main
from usher_pipeline.export.run import load_run
from usher_pipeline.export.summary import render_summary
from usher_pipeline.export.workflow import FALLBACK_NAME
from usher_pipeline.lineage import Lineage
from usher_pipeline.workflow.manifest import MANIFEST_PATH, load_manifest

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


def listed(value: Any) -> list[Any]:
    """A crate property as a list (RO-Crate writes one value without a list)."""
    return value if isinstance(value, list) else [value]


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
    manifest = load_manifest(in_run / MANIFEST_PATH)
    paths |= {os.path.normpath(f.path) for f in manifest.workflow.files}  # and the config
    entities = [r for r in records if isinstance(r, ProvEntity)]
    assert len(entities) == len(paths) + 1  # every file, and the workflow as a plan
    activities = [r for r in records if isinstance(r, ProvActivity)]
    assert len(activities) == len(logs) + 1 == 10  # every job, and the run
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
    inputs = {o.id for o in listed(evidence["object"])}
    assert "results/tables/gene_universe.parquet" in inputs
    assert [r.id for r in listed(evidence["result"])] == ["results/tables/evidence_hearing.parquet"]
    assert (target / "results/tables/evidence_hearing.parquet").is_file()

    config = next(o for o in listed(run["object"]) if o.id == "config/config.yaml")
    assert config["exampleOfWork"].type == "FormalParameter"
    assert config["exampleOfWork"] in listed(workflow["input"])
    step_ids = {s.id for s in listed(workflow["step"])}
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


# -- a workflow of its own, outside the repository ---------------------------------------

OWN_SNAKEFILE = f"""\
configfile: "config.yaml"


include: "{REPO / "rules" / "library.smk"}"


USHER.register("numbers")


rule all:
    default_target: True
    input:
        USHER.run_record,
        USHER.sidecars(),
        USHER.products(),
        USHER.steplogs(),


include: "rules/own.smk"
include: "{REPO / "rules" / "provenance.smk"}"
"""
OWN_RULES = """\
rule numbers:
    output:
        table=USHER.sentinel("numbers"),
        steplog=USHER.steplog("numbers"),
    log:
        USHER.log("numbers", "numbers"),
    params:
        how_many=config["count"],
    script:
        "../scripts/numbers.py"
"""
OWN_SCRIPT = """\
import polars as pl

from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    count = int(snakemake.params.how_many)
    job.save(pl.DataFrame({"n": list(range(count))}), description="the numbers 0 .. count-1")
"""
#: The workflow's own files, by their path in its folder, with their role.
OWN_FILES = {
    "Snakefile": "snakefile",
    "rules/own.smk": "rules",
    "scripts/numbers.py": "script",
    "config.yaml": "config",
}


def git(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.org", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def make_own_run(folder: Path, config: str, tag: str | None = None) -> Path:
    """A finished run of a one-rule workflow of its own in `folder` (a git repository with
    the tag `tag` when given), which includes the library's rules by absolute path."""
    (folder / "rules").mkdir(parents=True)
    (folder / "scripts").mkdir()
    (folder / "Snakefile").write_text(OWN_SNAKEFILE)
    (folder / "rules" / "own.smk").write_text(OWN_RULES)
    (folder / "scripts" / "numbers.py").write_text(OWN_SCRIPT)
    (folder / "config.yaml").write_text(config)
    if tag is not None:
        git(folder, "init", "-q")
        git(folder, "add", *OWN_FILES)
        git(folder, "commit", "-q", "-m", "a workflow of its own")
        git(folder, "tag", tag)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [str(BIN / "snakemake"), "--cores", "1"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return folder


def own_hashes(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in OWN_FILES}


@pytest.fixture(scope="module")
def tagged_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of a workflow in git, tagged v1.4.2, named after its folder."""
    folder = tmp_path_factory.mktemp("exports") / "squares-workflow"
    return make_own_run(folder, "count: 5\n", tag="v1.4.2")


@pytest.fixture(scope="module")
def named_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of a workflow outside git, named by the config key `workflow_name`."""
    folder = tmp_path_factory.mktemp("exports") / "folder-name"
    return make_own_run(folder, "count: 3\nworkflow_name: numbers study\n")


def test_own_workflow_runs_outside_the_repository(tagged_run, named_run):
    for folder in (tagged_run, named_run):
        assert not folder.resolve().is_relative_to(REPO)
        assert (folder / MANIFEST_PATH).is_file()


def test_rocrate_of_an_own_workflow_names_its_files_name_version_and_the_library(
    tagged_run, tmp_path, monkeypatch, capsys
):
    from rocrate.rocrate import ROCrate

    monkeypatch.chdir(tagged_run)
    version = git(tagged_run, "describe", "--always", "--dirty", "--tags")
    assert version.startswith("v1.4.2")
    target = tmp_path / "crate"
    assert main(["export-rocrate", str(target)]) == 0
    captured = capsys.readouterr()
    assert "run of squares-workflow" in captured.out
    assert "no run manifest" not in captured.err
    crate = ROCrate(target)

    workflow = crate.mainEntity
    assert workflow.id == "Snakefile"
    assert "ComputationalWorkflow" in listed(workflow.type)
    assert workflow["name"] == "squares-workflow"
    assert workflow["version"] == version
    hashes = own_hashes(tagged_run)
    for name, digest in hashes.items():
        entity = crate.get(name)
        assert entity is not None, name
        assert "File" in listed(entity.type)
        assert entity["sha256"] == digest, name
        assert (target / name).read_bytes() == (tagged_run / name).read_bytes()
    parts = {e.id for e in listed(workflow["hasPart"])}
    assert {"rules/own.smk", "scripts/numbers.py"} <= parts
    assert "SoftwareSourceCode" in listed(crate.get("scripts/numbers.py").type)
    run = next(a for a in listed(crate.root_dataset["mentions"]) if a.id == "#workflow-run")
    assert run["name"] == "Run of squares-workflow"
    assert "config.yaml" in {o.id for o in listed(run["object"])}

    library = next(e for e in listed(workflow["softwareRequirements"]))
    assert library.type == "SoftwareApplication"
    assert (library["name"], library["version"]) == ("usher_pipeline", usher_pipeline.__version__)
    rule = crate.get("#rule-numbers")
    assert rule["softwareRequirements"] is library
    assert rule["url"] == "rules/own.smk" and rule["version"] == version


def test_prov_of_an_own_workflow_names_its_files_config_and_the_library(
    tagged_run, tmp_path, monkeypatch
):
    from prov.model import (
        PROV_TYPE,
        ProvActivity,
        ProvAssociation,
        ProvDocument,
        ProvEntity,
        ProvMembership,
        ProvUsage,
    )

    monkeypatch.chdir(tagged_run)
    target = tmp_path / "run.prov.json"
    assert main(["export-prov", str(target)]) == 0
    doc = ProvDocument.deserialize(source=str(target), format="json")
    records = doc.get_records()
    entities = {str(r.identifier): r for r in records if isinstance(r, ProvEntity)}

    def attributes(record) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for key, value in record.attributes:
            found.setdefault(str(key), []).append(str(value))
        return found

    plan = attributes(entities["workflow:squares-workflow"])
    assert {"prov:Plan", "prov:Collection"} <= set(plan[str(PROV_TYPE)])
    assert plan["usher:version"] == [git(tagged_run, "describe", "--always", "--dirty", "--tags")]
    members = {
        str(r.args[1])
        for r in records
        if isinstance(r, ProvMembership) and str(r.args[0]) == "workflow:squares-workflow"
    }
    assert members == {"file:Snakefile", "file:rules/own.smk", "file:scripts/numbers.py"}
    for name, digest in own_hashes(tagged_run).items():
        found = attributes(entities[f"file:{name}"])
        assert found["usher:sha256"] == [digest], name
        assert found["usher:role"] == [OWN_FILES[name]], name
    assert attributes(entities["file:config.yaml"])[str(PROV_TYPE)] == ["usher:Config"]

    run = next(
        r for r in records if isinstance(r, ProvActivity) and str(r.identifier).startswith("run:")
    )
    assert str(run.identifier) == "run:squares-workflow"
    used = {
        str(r.args[1]) for r in records if isinstance(r, ProvUsage) and r.args[0] == run.identifier
    }
    assert {"file:config.yaml", "workflow:squares-workflow"} <= used
    job_used = {
        str(r.args[1])
        for r in records
        if isinstance(r, ProvUsage) and str(r.args[0]) == "job:numbers"
    }
    assert "file:config.yaml" in job_used
    associations = {
        (str(r.args[1]), str(r.args[2]))
        for r in records
        if isinstance(r, ProvAssociation) and r.args[0] == run.identifier
    }
    assert (f"sw:usher_pipeline-{usher_pipeline.__version__}", "workflow:squares-workflow") in (
        associations
    )


def test_exports_name_a_workflow_by_its_config_key_and_give_no_version_outside_git(
    named_run, tmp_path, monkeypatch
):
    from prov.model import ProvDocument
    from rocrate.rocrate import ROCrate

    monkeypatch.chdir(named_run)
    assert main(["export-rocrate", str(tmp_path / "crate")]) == 0
    workflow = ROCrate(tmp_path / "crate").mainEntity
    assert workflow["name"] == "numbers study"
    assert workflow.get("version") is None
    assert main(["export-prov", str(tmp_path / "run.prov.json")]) == 0
    doc = ProvDocument.deserialize(source=str(tmp_path / "run.prov.json"), format="json")
    plan = next(r for r in doc.get_records() if str(r.identifier) == "workflow:numbers_study")
    assert dict((str(k), str(v)) for k, v in plan.attributes)["prov:label"] == "numbers study"
    assert "usher:version" not in {str(k) for k, _ in plan.attributes}


def test_exports_of_a_file_changed_since_the_run_keep_the_hash_that_ran(tmp_path, monkeypatch):
    from prov.model import ProvDocument
    from rocrate.rocrate import ROCrate

    folder = make_own_run(tmp_path / "changed", "count: 4\n")
    ran = own_hashes(folder)["scripts/numbers.py"]
    (folder / "scripts" / "numbers.py").write_text(OWN_SCRIPT + "# edited after the run\n")
    monkeypatch.chdir(folder)
    assert main(["export-rocrate", str(tmp_path / "crate")]) == 0
    crate = ROCrate(tmp_path / "crate")
    script = next(e for e in crate.get_entities() if e.id.endswith("/scripts/numbers.py"))
    assert script.id == (folder / "scripts" / "numbers.py").as_uri()
    assert script["sha256"] == ran and "changed since the run" in script["description"]
    assert not (tmp_path / "crate" / "scripts" / "numbers.py").exists()
    assert main(["export-prov", str(tmp_path / "run.prov.json")]) == 0
    doc = ProvDocument.deserialize(source=str(tmp_path / "run.prov.json"), format="json")
    entity = next(r for r in doc.get_records() if str(r.identifier) == "file:scripts/numbers.py")
    found = {str(k): v for k, v in entity.attributes}
    assert found["usher:sha256"] == ran and found["usher:changed_since_run"] is True


def test_exports_of_a_run_without_manifest_describe_the_demo_and_say_so(
    tagged_run, tmp_path, monkeypatch, capsys
):
    from rocrate.rocrate import ROCrate

    old = tmp_path / "old-run"
    shutil.copytree(tagged_run, old, symlinks=True, ignore=shutil.ignore_patterns("*.lock"))
    (old / MANIFEST_PATH).unlink()
    monkeypatch.chdir(old)
    located = ["--db", "results/pipeline.duckdb", "--config", "config.yaml"]
    assert main([*located, "export-rocrate", str(tmp_path / "crate")]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no run manifest" in err, err
    workflow = ROCrate(tmp_path / "crate").mainEntity
    assert (workflow["name"], workflow["version"]) == (FALLBACK_NAME, usher_pipeline.__version__)
    assert main([*located, "export-prov", str(tmp_path / "run.prov.json")]) == 0
    assert "no run manifest" in capsys.readouterr().err


# -- the RO-Crate project's validator ------------------------------------------------------

#: Checks of roc-validator 0.13 that fetch the crate's JSON-LD context over the network, by
#: identifier at REQUIRED severity, with their names (found by running it offline on the
#: crate as written: these fail with "Unable to retrieve the JSON-LD context").
CONTEXT_FETCHING = {
    "ro-crate-1.3": {
        "ro-crate-1.3_4.2": "File Descriptor @context property validation",
        "ro-crate-1.2_4.1": "Validation of the compaction format of the file descriptor",
    },
    "workflow-run-crate-0.5": {
        "ro-crate-1.1_3.2": "File Descriptor @context property validation",
        "ro-crate-1.1_3.1": "Validation of the compaction format of the file descriptor",
    },
}
#: Checks of the validator's Workflow Run Crate 0.5 profile that hold only for an RO-Crate 1.1
#: crate (the profile is built on RO-Crate 1.1), while `rocrate` writes RO-Crate 1.3.
RO_CRATE_1_1_ONLY = {
    "workflow-run-crate-0.5": {
        "ro-crate-1.1_5.3": "Metadata File Descriptor entity: `conformsTo` property",
        "workflow-ro-crate-1.0_2.1": "Main Workflow type",
    }
}


def offline_copy(crate: Path, target: Path) -> Path:
    """A copy of the crate whose metadata carries the RO-Crate context inline: the context
    document that `rocrate` ships, whose @id is the URL the crate names."""
    from rocrate.vocabs import RO_CRATE

    shutil.copytree(crate, target)
    metadata = json.loads((target / "ro-crate-metadata.json").read_text())
    assert metadata["@context"] == RO_CRATE["@id"] == "https://w3id.org/ro/crate/1.3/context"
    metadata["@context"] = RO_CRATE["@context"]
    (target / "ro-crate-metadata.json").write_text(json.dumps(metadata))
    return target


def roc_validate(crate: Path, profile: str, skip: dict[str, str], workdir: Path) -> dict:
    """The JSON report of `rocrate-validator validate`, offline, at REQUIRED severity."""
    report = workdir / f"{profile}.json"
    done = subprocess.run(
        [str(BIN / "rocrate-validator"), "--no-interactive", "--disable-color", "validate"]
        + ["--profile-identifier", profile, "--requirement-severity", "REQUIRED"]
        + ["--offline", "--cache-path", str(workdir / "http-cache"), "--no-paging"]
        + ["--skip-checks", ",".join(skip), "--output-format", "json"]
        + ["--output-file", str(report), str(crate)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert report.is_file(), done.stdout + done.stderr
    return json.loads(report.read_text())


def skipped_by_us(report: dict) -> dict[str, str]:
    """The checks the settings skipped, by each identifier they answer to (the validator
    names a check by its own profile's number and by the number in the profile validated)."""
    found: dict[str, str] = {}
    for detail in report["skipped_check_details"]:
        if detail["message"] == "Check was skipped by validation settings":
            for key in ("identifier", "source_identifier"):
                if detail.get(key):
                    found[detail[key]] = detail["name"]
    return found


def export_crate(run: Path, target: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(run)
    assert main(["export-rocrate", str(target)]) == 0
    return target


@pytest.mark.parametrize("profile", ["ro-crate-1.3", "workflow-run-crate-0.5"])
def test_rocrate_passes_roc_validator_at_required_severity(
    tagged_run, tmp_path, monkeypatch, profile
):
    crate = export_crate(tagged_run, tmp_path / "crate", monkeypatch)
    skip = {**CONTEXT_FETCHING[profile], **RO_CRATE_1_1_ONLY.get(profile, {})}
    report = roc_validate(offline_copy(crate, tmp_path / "copy"), profile, skip, tmp_path)
    assert report["issues"] == [] and report["passed"] is True, report["issues"]
    skipped = skipped_by_us(report)
    assert {key: skipped.get(key) for key in skip} == skip  # the identifiers name those checks
    assert len(set(skipped.values())) == len(skip)  # and no other check answers to them
    others = [d for d in report["skipped_check_details"] if d["name"] not in skip.values()]
    assert all("availab" in d["message"] or "detached" in d["message"] for d in others), others
    stats = report["statistics"]
    assert stats["total_failed_checks"] == 0 and stats["total_passed_checks"] > 20


def test_roc_validator_refuses_a_crate_that_breaks_a_required_rule(
    tagged_run, tmp_path, monkeypatch
):
    crate = export_crate(tagged_run, tmp_path / "crate", monkeypatch)
    copy = offline_copy(crate, tmp_path / "copy")
    metadata = json.loads((copy / "ro-crate-metadata.json").read_text())
    graph = {e["@id"]: e for e in metadata["@graph"]}
    del graph["rules/own.smk"]["name"]
    del graph["#job-numbers"]["instrument"]
    (copy / "ro-crate-metadata.json").write_text(json.dumps(metadata))
    base = roc_validate(copy, "ro-crate-1.3", CONTEXT_FETCHING["ro-crate-1.3"], tmp_path)
    assert base["passed"] is False
    names = {i["check"]["name"] for i in base["issues"]}
    assert "Script or Workflow: REQUIRED `name` property" in names, base["issues"]
    profile = "workflow-run-crate-0.5"
    skip = {**CONTEXT_FETCHING[profile], **RO_CRATE_1_1_ONLY[profile]}
    run = roc_validate(copy, profile, skip, tmp_path)
    assert run["passed"] is False
    assert "Action instrument" in {i["check"]["name"] for i in run["issues"]}, run["issues"]
