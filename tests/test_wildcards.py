"""A workflow of its own with a wildcard rule, its tables registered by one pattern.

The workflow is written into tmp_path, outside the repository, and includes the library by
absolute path: a rule `chrom_stats` per chromosome and an aggregate that reads them all with
`job.read_many`. Real Snakemake runs, a real DuckDB file, the real `usher-pipeline verify`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from usher_pipeline.persistence.fingerprint import fingerprint_parquet
from usher_pipeline.persistence.provenance import sidecar_path
from usher_pipeline.workflow.fetch import AUDIT_VARIABLE

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMS = ["chr1", "chr2", "chr21"]
LENGTHS = {"chr1": 5, "chr2": 3, "chr21": 2}
TIMEOUT = 300

# {registration} is the one register() call of the chromosome tables; {include} and
# {provenance} load the library's rules (include, or a module after the workflow's rules).
SNAKEFILE = """\
config.setdefault("chroms", {chroms})
config.setdefault("lengths", {lengths})


include: "{repo}/rules/library.smk"


CHROMS = list(config["chroms"])
{registration}
USHER.register("chrom_summary", files=(USHER.final("chrom_summary.tsv"),))


rule chrom_stats:
    output:
        table=USHER.sentinel("chrom_stats_{{chrom}}"),
        steplog=USHER.steplog("chrom_stats_{{chrom}}"),
    log:
        USHER.log("chrom_stats", "chrom_stats_{{chrom}}"),
    priority: usher_fetch_priority("chrom_stats_{{chrom}}")
    params:
        length=lambda wildcards: config["lengths"][wildcards.chrom],
    script:
        "scripts/chrom_stats.py"


rule chrom_summary:
    input:
        stats=expand(USHER.sentinel("chrom_stats_{{chrom}}"), chrom=CHROMS),
    output:
        table=USHER.sentinel("chrom_summary"),
        tsv=USHER.final("chrom_summary.tsv"),
        steplog=USHER.steplog("chrom_summary"),
    log:
        USHER.log("chrom_summary", "chrom_summary"),
    script:
        "scripts/chrom_summary.py"


{provenance}


rule all:
    default_target: True
    input:
        USHER.run_record,
        USHER.products(),
        USHER.sidecars(),
        USHER.steplogs(),
"""

INCLUDED = 'include: "{repo}/rules/provenance.smk"'
MODULE = """\
module usher:
    snakefile:
        "{repo}/rules/module.smk"
    config:
        config


use rule * from usher as usher_*"""

CHROM_STATS = """\
import polars as pl

from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    chrom = job.wildcards["chrom"]
    length = int(snakemake.params.length)
    job.record_data_source("assembly", "toy-1")
    job.record_step("positions", {"chrom": chrom, "rows": length})
    frame = job.fetch(
        list(range(length)),
        lambda batch: pl.DataFrame({"chrom": [chrom] * len(batch), "position": batch}),
        batch_size=2,
    )
    job.save(frame, description=f"positions on {chrom}")
"""

CHROM_SUMMARY = """\
import polars as pl

from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    frames = job.read_many("stats")
    summary = pl.DataFrame(
        {"table": list(frames), "rows": [frame.height for frame in frames.values()]}
    ).sort("table")
    job.record_step("summarise", {"tables": len(frames)})
    job.save(summary, description="rows per chromosome table")
    job.write_tsv(summary, "tsv")
"""

BY_RULES = 'USHER.register("chrom_stats_{chrom}")'
AT_REGISTRATION = 'USHER.register("chrom_stats_{chrom}", chrom=CHROMS)'


def write_workflow(folder: Path, registration: str, *, module: bool = False) -> Path:
    """The workflow in `folder` (a Snakefile and its two scripts); returns `folder`."""
    (folder / "scripts").mkdir(parents=True)
    provenance = (MODULE if module else INCLUDED).format(repo=REPO)
    (folder / "Snakefile").write_text(
        SNAKEFILE.format(
            repo=REPO,
            chroms=json.dumps(CHROMS),
            lengths=json.dumps(LENGTHS),
            registration=registration,
            provenance=provenance,
        )
    )
    (folder / "scripts" / "chrom_stats.py").write_text(CHROM_STATS)
    (folder / "scripts" / "chrom_summary.py").write_text(CHROM_SUMMARY)
    return folder


def run(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A command of this interpreter's tools in `workdir`; fail the test if it fails."""
    env = dict(os.environ)
    env.pop(AUDIT_VARIABLE, None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def stored(workdir: Path, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(workdir / "results/pipeline.duckdb"), read_only=True) as conn:
        return conn.sql(sql).fetchall()


@pytest.mark.parametrize(
    ("registration", "module", "mode"),
    [
        pytest.param(BY_RULES, False, "job", id="values-from-rules"),
        pytest.param(AT_REGISTRATION, False, "head", id="values-at-registration-head-mode"),
        pytest.param(BY_RULES, True, "job", id="module"),
    ],
)
def test_one_pattern_registers_every_chromosome_table(tmp_path, registration, module, mode):
    workdir = write_workflow(tmp_path / "wf", registration, module=module)
    done = run(workdir, "snakemake", "--cores", "2", "--config", f"store={{database_mode: {mode}}}")
    assert ("rule ingest:" in done.stderr) == (mode == "head")
    tables = [f"chrom_stats_{c}" for c in CHROMS]

    rows = stored(workdir, "SELECT table_name, rule, sentinel, fingerprint FROM _checkpoints")
    assert {r[0]: r[1] for r in rows} == {
        **dict.fromkeys(tables, "chrom_stats"),
        "chrom_summary": "chrom_summary",
    }
    for table, _rule, sentinel, fingerprint in rows:
        path = workdir / sentinel
        assert path == workdir / f"results/tables/{table}.parquet"
        assert fingerprint_parquet(path)[0] == fingerprint
        sidecar = json.loads(sidecar_path(path).read_text())
        assert sidecar["output"]["path"] == sentinel
        assert sidecar["output"]["fingerprint"] == fingerprint
    for chrom in CHROMS:
        steplog = json.loads((workdir / f"results/steplogs/chrom_stats_{chrom}.json").read_text())
        assert steplog["rule"] == "chrom_stats"
        assert steplog["wildcards"] == {"chrom": chrom}
        assert steplog["data_sources"] == {"assembly": "toy-1"}
        fetched = [s for s in steplog["steps"] if s["step_name"] == "batched_fetch"]
        assert len(fetched) == 1
        positions = stored(workdir, f"SELECT chrom, position FROM chrom_stats_{chrom}")
        assert sorted(positions) == [(chrom, i) for i in range(LENGTHS[chrom])]

    report = pl.read_csv(workdir / "results/final/chrom_summary.tsv", separator="\t")
    assert dict(report.iter_rows()) == {f"chrom_stats_{c}": LENGTHS[c] for c in CHROMS}
    lineage = json.loads(sidecar_path(workdir / "results/final/chrom_summary.tsv").read_text())
    steps = [s["step_name"] for s in lineage["processing_steps"]]
    assert sorted(steps[:-1]) == sorted(f"chrom_stats[chrom={c}]" for c in CHROMS)
    assert steps[-1] == "chrom_summary"
    provenance = {r[0] for r in stored(workdir, "SELECT output_path FROM _provenance")}
    assert provenance >= {
        *(f"results/tables/{t}.parquet" for t in tables),
        "results/final/chrom_summary.tsv",
    }

    verify = run(
        workdir,
        "usher-pipeline",
        "verify",
        "--db",
        "results/pipeline.duckdb",
        "--results",
        "results",
    )
    assert "4 tables, 4 sentinels, 4 step logs" in verify.stdout
    assert "database, sentinels and step logs agree" in verify.stdout
    again = run(
        workdir, "snakemake", "--cores", "2", "--config", f"store={{database_mode: {mode}}}"
    )
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.parametrize(
    ("registration", "source"),
    [(BY_RULES, "rule chrom_summary"), (AT_REGISTRATION, "register()")],
)
def test_a_capital_letter_value_is_refused_before_any_job(tmp_path, registration, source):
    workdir = write_workflow(tmp_path / "wf", registration)
    done = run(workdir, "snakemake", "--cores", "2", "--config", "chroms=[chr1,chrX]", check=False)
    assert done.returncode != 0
    lines = [line for line in (done.stdout + done.stderr).splitlines() if "chrX" in line]
    assert lines == [
        "usher_pipeline: table pattern 'chrom_stats_{chrom}' with chrom='chrX' "
        f"(from {source}) makes 'chrom_stats_chrX', which is not a table name (lowercase "
        "letters, digits and underscores, starting with a letter, at most 63): use valid "
        "values, e.g. chrom=[v.lower() for v in ...], and keep the display name in a column"
    ]
    assert not (workdir / "results").exists()


def test_values_that_only_an_input_function_knows_are_asked_for_at_registration(tmp_path):
    workdir = write_workflow(tmp_path / "wf", BY_RULES)
    snakefile = workdir / "Snakefile"
    text = snakefile.read_text()
    concrete = 'stats=expand(USHER.sentinel("chrom_stats_{chrom}"), chrom=CHROMS),'
    assert concrete in text
    snakefile.write_text(
        text.replace(
            concrete,
            'stats=lambda wc: expand(USHER.sentinel("chrom_stats_{chrom}"), chrom=CHROMS),',
        )
    )
    done = run(workdir, "snakemake", "--cores", "2", "-n", check=False)
    assert done.returncode != 0
    assert (
        "usher_pipeline: table pattern 'chrom_stats_{chrom}' has no values: no rule before "
        "rules/provenance.smk names one of its paths"
    ) in done.stderr
    assert "pass them, USHER.register('chrom_stats_{chrom}', chrom=[...])" in done.stderr
    assert not (workdir / "results").exists()
