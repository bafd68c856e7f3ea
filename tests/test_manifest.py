"""The run manifest that a workflow including `rules/library.smk` writes at the start of a run.

A small workflow of its own is written into tmp_path, outside the repository: a Snakefile that
includes the library by absolute path, a rule file, scripts (a source table, a wildcard rule
per part, an aggregate with a TSV) and a config file with the workflow's own keys beside the
library's (non-default results and database paths). Real Snakemake runs in subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from usher_pipeline.hashing import sha256_file
from usher_pipeline.workflow.manifest import (
    MANIFEST_PATH,
    ManifestError,
    find_manifest,
    load_manifest,
)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PARTS = ("a", "b", "c")
LIBRARY = REPO / "rules"

SNAKEFILE = """\
configfile: "config/config.yaml"


include: "{library}/library.smk"


for part in config["parts"]:
    USHER.register(f"part_{{part}}")
USHER.register("numbers")
USHER.register("summary", files=(USHER.final("summary.tsv"),))


include: "rules/own.smk"


{provenance}


rule all:
    default_target: True
    input:
        USHER.final("summary.tsv"),
        USHER.run_record,
        USHER.sidecars(),
        USHER.products(),
        USHER.steplogs(),
"""

INCLUDE_PROVENANCE = 'include: "{library}/provenance.smk"'
MODULE_PROVENANCE = """\
module usher:
    snakefile:
        "{library}/module.smk"
    config:
        config


use rule * from usher as usher_*"""

RULES = """\
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


rule part:
    input:
        numbers=USHER.sentinel("numbers"),
    output:
        table=USHER.sentinel("part_{part}"),
        steplog=USHER.steplog("part_{part}"),
    log:
        USHER.log("part", "part_{part}"),
    params:
        factor=lambda wildcards: config["factors"][wildcards.part],
    script:
        "../scripts/part.py"


rule summary:
    input:
        parts=expand(USHER.sentinel("part_{part}"), part=config["parts"]),
    output:
        table=USHER.sentinel("summary"),
        tsv=USHER.final("summary.tsv"),
        steplog=USHER.steplog("summary"),
    log:
        USHER.log("summary", "summary"),
    script:
        "../scripts/summary.py"
"""

SCRIPTS = {
    "numbers.py": """\
import polars as pl

from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    job.save(pl.DataFrame({"n": list(range(int(snakemake.params.how_many)))}), description="n")
""",
    "part.py": """\
import polars as pl

from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    numbers = job.read("numbers")
    factor = int(snakemake.params.factor)
    job.save(numbers.with_columns((pl.col("n") * factor).alias("value")), description="part")
""",
    "summary.py": """\
import polars as pl

from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    total = sum(pl.read_parquet(path)["value"].sum() for path in snakemake.input.parts)
    summary = pl.DataFrame({"parts": [len(snakemake.input.parts)], "total": [int(total)]})
    job.save(summary, description="how many parts and the sum of their values")
    job.write_tsv(summary, "tsv")
""",
}

CONFIG: dict[str, Any] = {
    "count": 6,
    "parts": list(PARTS),
    "factors": {"a": 1, "b": 2, "c": 3},
    "results_dir": "out",
    "logs_dir": "out/logs",
    "duckdb_path": "out/store.duckdb",
    "store": {"lock_timeout_seconds": 30},
}


def write_own_workflow(folder: Path, *, module: bool = False) -> Path:
    """The small workflow in `folder` (its working directory too); the folder."""
    (folder / "rules").mkdir(parents=True)
    (folder / "scripts").mkdir()
    (folder / "config").mkdir()
    provenance = (MODULE_PROVENANCE if module else INCLUDE_PROVENANCE).format(library=LIBRARY)
    (folder / "Snakefile").write_text(SNAKEFILE.format(library=LIBRARY, provenance=provenance))
    (folder / "rules" / "own.smk").write_text(RULES)
    for name, text in SCRIPTS.items():
        (folder / "scripts" / name).write_text(text)
    (folder / "config" / "config.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    return folder


def snakemake_env() -> dict[str, str]:
    """The environment of a shell that has the project's venv on its PATH."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def snakemake(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `snakemake ARGS` in `cwd`; fail the test with its output when it fails."""
    done = subprocess.run(
        [str(BIN / "snakemake"), *args],
        cwd=cwd,
        env={**snakemake_env(), "PWD": str(cwd)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and done.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def read_manifest(workdir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((workdir / MANIFEST_PATH).read_text())
    return data


# -- a real run ---------------------------------------------------------------------------


def test_a_run_records_where_its_store_results_and_files_are(tmp_path):
    folder = write_own_workflow(tmp_path / "mine")
    snakemake(folder, "--cores", "2")
    assert find_manifest(folder) == folder / MANIFEST_PATH
    manifest = load_manifest(folder / MANIFEST_PATH)
    assert manifest.manifest_version == 1
    assert Path(manifest.workdir) == folder.resolve()
    assert manifest.snakefile == str(folder / "Snakefile")
    assert manifest.configfiles == (str(folder / "config" / "config.yaml"),)
    assert (manifest.results_dir, manifest.logs_dir, manifest.duckdb_path) == (
        "out",
        "out/logs",
        "out/store.duckdb",
    )
    assert (manifest.database_mode, manifest.lock_timeout_seconds) == ("job", 30.0)
    assert manifest.library_rules == str(LIBRARY)
    assert manifest.snakemake_args == ()  # `snakemake` in the folder finds everything
    assert manifest.workflow.name == "mine"
    assert manifest.workflow.version is None  # tmp_path is not in git
    files = {(f.path, f.role): f.sha256 for f in manifest.workflow.files}
    expected = {
        ("Snakefile", "snakefile"),
        ("rules/own.smk", "rules"),
        ("scripts/numbers.py", "script"),
        ("scripts/part.py", "script"),
        ("scripts/summary.py", "script"),
        ("config/config.yaml", "config"),
    }
    assert set(files) == expected  # none of the library's rule files or scripts
    for (path, _), digest in files.items():
        assert digest == sha256_file(folder / path)
    assert (folder / "out" / "store.duckdb").is_file()


def test_the_manifest_is_rewritten_only_when_more_than_its_time_changed(tmp_path):
    folder = write_own_workflow(tmp_path / "mine")
    snakemake(folder, "--cores", "2")
    first = read_manifest(folder)
    snakemake(folder, "--cores", "2")  # nothing to do: the same manifest, the same time
    assert read_manifest(folder) == first
    with open(folder / "scripts" / "summary.py", "a") as handle:
        handle.write("# a comment\n")
    snakemake(folder, "--cores", "2")
    second = read_manifest(folder)
    assert second["written_at"] > first["written_at"]
    changed = [
        f["path"]
        for f, g in zip(first["workflow"]["files"], second["workflow"]["files"], strict=True)
        if f["sha256"] != g["sha256"]
    ]
    assert changed == ["scripts/summary.py"]
    leftovers = [p.name for p in (folder / MANIFEST_PATH).parent.iterdir()]
    assert leftovers == ["manifest.json"]  # written under a temporary name, renamed


def test_a_dry_run_writes_the_manifest_only_when_there_is_none(tmp_path):
    folder = write_own_workflow(tmp_path / "mine")
    (folder / "other.yaml").write_text("duckdb_path: elsewhere.duckdb\n")
    snakemake(folder, "-n")
    first = read_manifest(folder)
    assert first["duckdb_path"] == "out/store.duckdb"
    snakemake(folder, "-n", "--configfile", "other.yaml")
    assert read_manifest(folder) == first  # a dry run never redirects the command
    snakemake(folder, "--cores", "2", "--configfile", "other.yaml")
    real = read_manifest(folder)
    assert real["duckdb_path"] == "elsewhere.duckdb"
    assert real["snakemake_args"] == ["--configfile", "other.yaml"]
    assert (folder / "elsewhere.duckdb").is_file()


def test_commands_that_execute_nothing_write_no_manifest(tmp_path):
    folder = write_own_workflow(tmp_path / "mine")
    snakemake(folder, "--list-rules")
    snakemake(folder, "--lint", check=False)
    assert find_manifest(folder) is None


def test_snakemake_args_address_a_workflow_run_from_elsewhere(tmp_path):
    source = write_own_workflow(tmp_path / "source")
    (tmp_path / "extra.yaml").write_text("count: 4\n")
    profile = tmp_path / "profiles" / "quick"
    profile.mkdir(parents=True)
    (profile / "config.yaml").write_text("cores: 1\n")
    run = tmp_path / "run"
    snakemake(
        tmp_path,
        "-n",
        "--snakefile",
        "source/Snakefile",
        "--directory",
        "run",
        "--configfile",
        "source/config/config.yaml",
        "extra.yaml",
        "--config",
        "count=5",
        "--profile",
        "profiles/quick",
    )
    args = read_manifest(run)["snakemake_args"]
    assert args == [
        "--snakefile",
        str(source / "Snakefile"),
        "--configfile",
        str(source / "config" / "config.yaml"),
        str(tmp_path / "extra.yaml"),
        "--config",
        "count=5",
        "--profile",
        str(profile),
    ]
    # the arguments, pasted from the working directory, address the same workflow
    done = snakemake(run, "-n", *args)
    assert "part" in done.stdout and read_manifest(run)["snakemake_args"] == args


def test_the_module_form_records_the_workflow_files_not_the_library(tmp_path):
    folder = write_own_workflow(tmp_path / "mine", module=True)
    snakemake(folder, "-n")
    manifest = load_manifest(folder / MANIFEST_PATH)
    roles = sorted((f.path, f.role) for f in manifest.workflow.files)
    assert roles == sorted(
        [
            ("Snakefile", "snakefile"),
            ("rules/own.smk", "rules"),
            ("scripts/numbers.py", "script"),
            ("scripts/part.py", "script"),
            ("scripts/summary.py", "script"),
            ("config/config.yaml", "config"),
        ]
    )


def test_the_workflow_name_is_the_config_key_when_given(tmp_path):
    folder = write_own_workflow(tmp_path / "mine")
    with open(folder / "config" / "config.yaml", "a") as handle:
        handle.write("workflow_name: chromosome screen\n")
    snakemake(folder, "-n")
    assert read_manifest(folder)["workflow"]["name"] == "chromosome screen"


def test_a_workflow_in_git_records_git_describe(tmp_path):
    folder = write_own_workflow(tmp_path / "mine")
    git = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org"}
    git |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    for command in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "first"]):
        subprocess.run(["git", *command], cwd=folder, env=git, check=True)
    subprocess.run(["git", "tag", "v1.2"], cwd=folder, env=git, check=True)
    snakemake(folder, "-n")
    assert read_manifest(folder)["workflow"]["version"] in {"v1.2", "v1.2-dirty"}


# -- reading ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", "cannot be read (not valid JSON)"),
        ('{"manifest_version": 1}', "is not a usher_pipeline run manifest (written_at"),
        ('{"manifest_version": 99}', "has version 99, newer than this usher_pipeline"),
    ],
)
def test_a_damaged_manifest_is_one_sentence(tmp_path, text, expected):
    path = tmp_path / "manifest.json"
    path.write_text(text)
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    message = str(caught.value)
    assert expected in message and "\n" not in message, message
