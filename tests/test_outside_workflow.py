"""A user's own workflow, made by `usher-pipeline init` in a temporary folder outside this
checkout, with a wildcard rule per chromosome and an aggregate with a TSV added the way the
reuse guide (docs/reuse.md) shows. Loaded in both documented forms: `include:` of the
library's rule files, and the library's rules as a Snakemake `module`.

Everything runs for real: the `usher-pipeline` and `snakemake` commands in subprocesses, in
the workflow's folder, with no flags and no profile; kills are SIGKILLs of the whole process
group, timed by polling the files the run writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import psutil
import pytest
import yaml

from usher_pipeline import library_path
from usher_pipeline.persistence import PipelineStore
from usher_pipeline.persistence.provenance import sidecar_path
from usher_pipeline.scaffold import LibraryNotFound
from usher_pipeline.workflow.fetch import AUDIT_VARIABLE

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FORMS = ("include", "module")
CHROMS = ("chr1", "chr2", "chrx")
TABLES = {"records", "record_summary", *(f"chrom_stats_{c}" for c in CHROMS), "chrom_report"}
RUN_TIMEOUT = 300
FLAKY_VARIABLE = "OUTSIDE_FLAKY_MARKER"

# -- the user's additions to the scaffold ---------------------------------------------------

CHROM_RULES = """\
# One table per chromosome, fetched in batches, and an aggregate of them with a TSV report.


wildcard_constraints:
    chrom="|".join(config["chroms"]),


rule chrom_stats:
    input:
        records=USHER.sentinel("records"),
    output:
        table=USHER.sentinel("chrom_stats_{chrom}"),
        steplog=USHER.steplog("chrom_stats_{chrom}"),
    log:
        USHER.log("chrom_stats", "chrom_stats_{chrom}"),
    priority: usher_fetch_priority("chrom_stats_{chrom}")
    conda:
        "../envs/workflow.yaml"
    params:
        chroms=config["chroms"],
    script:
        "../scripts/chrom_stats.py"


rule chrom_report:
    input:
        stats=expand(USHER.sentinel("chrom_stats_{chrom}"), chrom=config["chroms"]),
    output:
        table=USHER.sentinel("chrom_report"),
        tsv=USHER.final("chrom_report.tsv"),
        steplog=USHER.steplog("chrom_report"),
    log:
        USHER.log("chrom_report", "chrom_report"),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/chrom_report.py"
"""

CHROM_STATS_SCRIPT = f'''\
"""The records of one chromosome (every len(chroms)-th), fetched again in batches. When the
file named by ${FLAKY_VARIABLE} exists, the first job to reach its second batch removes it
and fails, as a flaky service would."""

import os
import time
from pathlib import Path

import polars as pl

from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    chrom = snakemake.wildcards.chrom
    chroms = list(snakemake.params.chroms)
    records = job.read("records")
    mine = records.filter(pl.int_range(pl.len()) % len(chroms) == chroms.index(chrom))
    values = dict(zip(mine["key"], mine["value"]))
    how = snakemake.config["fetch"]
    marker = os.environ.get("{FLAKY_VARIABLE}")
    calls = []

    def fetch(keys):
        time.sleep(float(how["latency_seconds"]))
        calls.append(keys)
        if marker and len(calls) == 2:
            try:
                Path(marker).unlink()
            except FileNotFoundError:
                pass
            else:
                raise ConnectionError(f"the service did not answer for {{keys[0]}}")
        return pl.DataFrame(
            {{"key": keys, "chrom": [chrom] * len(keys), "doubled": [2 * values[k] for k in keys]}},
            schema={{"key": pl.String, "chrom": pl.String, "doubled": pl.Int64}},
        )

    rows = job.fetch(mine["key"].to_list(), fetch, batch_size=int(how["batch_size"]))
    job.save(rows, description=f"the records of {{chrom}}, values doubled")
'''

CHROM_REPORT_SCRIPT = '''\
"""Per chromosome: how many records and the sum of their doubled values."""

import polars as pl

from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    stats = job.read_many("stats")
    report = pl.concat(
        [
            frame.group_by("chrom").agg(
                pl.len().cast(pl.Int64).alias("records"), pl.col("doubled").sum()
            )
            for frame in stats.values()
        ]
    ).sort("chrom")
    job.record_step("aggregate", {"tables": sorted(stats)})
    job.save(report, description="records and doubled sums per chromosome")
    job.write_tsv(report, "tsv")
'''

REGISTER_CHROMS = """\
USHER.register("chrom_stats_{chrom}")
USHER.register("chrom_report", files=[USHER.final("chrom_report.tsv")])
"""

MODULE_FORM = """\
module usher:
    snakefile:
        library_path("module.smk")
    config:
        config


use rule * from usher as usher_*
"""


# -- helpers ------------------------------------------------------------------------------------


def run_env(**extra: str) -> dict[str, str]:
    """The environment of a command: this interpreter's tools first on PATH, no test hooks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("USHER_")}
    env.pop(FLAKY_VARIABLE, None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run(
    workdir: Path, *command: str, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run `command` (a tool of this environment) in `workdir`; fail the test if it fails."""
    done = subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        cwd=workdir,
        env=run_env(**env),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    if check and done.returncode != 0:
        pytest.fail(f"{shlex.join(command)} failed ({done.returncode}):\n{output(done)}")
    return done


def output(done: subprocess.CompletedProcess[str]) -> str:
    return f"{done.stdout}\n{done.stderr}"


def init(folder: Path, form: str = "include", **config: Any) -> Path:
    """`usher-pipeline init folder`, then the chromosome rules added in `form`, and `config`
    merged into config/config.yaml (one level deep)."""
    done = run(folder.parent, "usher-pipeline", "init", folder.name)
    assert f"into {folder.name}" in done.stdout
    add_chromosomes(folder, form)
    edit_config(folder, **config)
    return folder


def add_chromosomes(workdir: Path, form: str) -> None:
    """Add the wildcard rule and the aggregate, in the `include:` or the `module` form."""
    (workdir / "rules" / "chroms.smk").write_text(CHROM_RULES)
    (workdir / "scripts" / "chrom_stats.py").write_text(CHROM_STATS_SCRIPT)
    (workdir / "scripts" / "chrom_report.py").write_text(CHROM_REPORT_SCRIPT)
    snakefile = workdir / "Snakefile"
    text = snakefile.read_text()
    summary = 'USHER.register("record_summary", files=[USHER.final("record_summary.tsv")])\n'
    provenance = 'include: library_path("provenance.smk")\n'
    assert summary in text and provenance in text, text
    text = text.replace(summary, summary + REGISTER_CHROMS)
    last = 'include: "rules/chroms.smk"\n' + (provenance if form == "include" else MODULE_FORM)
    text = text.replace(provenance, last)
    snakefile.write_text(text)
    edit_config(workdir, chroms=list(CHROMS))


def edit_config(workdir: Path, **changes: Any) -> None:
    """Merge `changes` into config/config.yaml (mappings one level deep)."""
    path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def fingerprints(workdir: Path) -> dict[str, str]:
    """The fingerprint of every table in `_checkpoints`."""
    store = PipelineStore(workdir / "results" / "pipeline.duckdb", lock_timeout=30)
    return {row["table_name"]: row["fingerprint"] for row in store.list_checkpoints()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def own_files(workdir: Path) -> list[Path]:
    """The workflow's own Snakefile, rule files, scripts and config, as the user wrote them."""
    return [
        workdir / "Snakefile",
        *sorted((workdir / "rules").glob("*.smk")),
        *sorted((workdir / "scripts").glob("*.py")),
        workdir / "config" / "config.yaml",
    ]


def live_group_members(pgid: int) -> list[int]:
    """The processes of group `pgid` still running (zombies excluded)."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def kill_when(workdir: Path, ready: Callable[[], bool], log: Path, **env: str) -> None:
    """Start `snakemake --cores 2` in its own process group and SIGKILL the whole group as
    soon as `ready()` holds; returns when no process of the group is left."""
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(BIN / "snakemake"), "--cores", "2"],
            cwd=workdir,
            env=run_env(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + RUN_TIMEOUT
        while not ready():
            assert process.poll() is None, f"the run ended before the kill:\n{log.read_text()}"
            assert time.monotonic() < deadline, "the instant of the kill never came"
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    while live_group_members(process.pid):
        assert time.monotonic() < deadline, "killed processes are still running"
        time.sleep(0.05)


def committed_batches(workdir: Path, table: str) -> list[Path]:
    return list((workdir / "results" / "tables" / ".partial" / table).glob("*.parquet"))


def audit(path: Path) -> list[tuple[str, str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split()) for line in path.read_text().splitlines()]


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=FORMS)
def clean(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One complete run of the workflow in the form given, in a folder of its own."""
    workdir = init(tmp_path_factory.mktemp(f"outside-{request.param}") / "my_flow", request.param)
    assert not workdir.resolve().is_relative_to(REPO)
    run(workdir, "snakemake", "--cores", "2")
    return workdir


@pytest.fixture
def unread_key(clean: Path) -> Iterator[Path]:
    """The clean run with a key added to its config that no rule reads, removed afterwards."""
    config = clean / "config" / "config.yaml"
    before = config.read_text()
    config.write_text(before + "\nnotebook_comment: a setting no rule reads\n")
    yield clean
    config.write_text(before)


# -- the scaffold alone -------------------------------------------------------------------------


@pytest.mark.slow
def test_init_writes_a_workflow_that_runs_lints_and_tests_clean(tmp_path):
    workdir = tmp_path / "fresh_flow"
    done = run(tmp_path, "usher-pipeline", "init", "fresh_flow")
    assert done.stdout.splitlines()[-1] == "  cd fresh_flow && snakemake --cores 2"
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    assert config["workflow_name"] == "fresh_flow"

    first = run(workdir, "snakemake", "--cores", "2")
    assert "rule provenance:" in output(first)
    assert set(fingerprints(workdir)) == {"records", "record_summary"}
    report = pl.read_csv(workdir / "results/final/record_summary.tsv", separator="\t")
    records = pl.read_parquet(workdir / "results/tables/records.parquet")
    assert records.height == config["records"]["how_many"]
    threshold = config["summary"]["threshold"]
    assert report.row(0, named=True) == {
        "records": records.height,
        "at_or_above_threshold": int((records["value"] >= threshold).sum()),
        "min_value": records["value"].min(),
        "max_value": records["value"].max(),
    }
    assert "Nothing to be done" in output(run(workdir, "snakemake", "--cores", "2"))
    lint = run(workdir, "snakemake", "--lint")
    assert "Congratulations, your workflow is in a good condition!" in output(lint)
    run(workdir, "snakefmt", "--check", "Snakefile", "rules")
    tests = run(workdir, "python", "-m", "pytest", "-q", "-p", "no:cacheprovider")
    assert re.search(r"\b2 passed\b", tests.stdout), tests.stdout


def test_init_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine\n")
    done = run(tmp_path, "usher-pipeline", "init", "busy", check=False)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "usher-pipeline: error: busy is not empty (notes.txt): give a new or empty folder to "
        "init, so that no file of yours is overwritten"
    ]
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]


def test_init_takes_a_folder_holding_only_git_and_a_name_with_spaces(tmp_path):
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    done = run(tmp_path, "usher-pipeline", "init", "repo", "--name", "Hearing screen: 'v2'")
    assert done.stdout.splitlines()[0] == "wrote 10 files into repo; run it with:"
    config = yaml.safe_load((tmp_path / "repo" / "config" / "config.yaml").read_text())
    assert config["workflow_name"] == "Hearing screen: 'v2'"
    readme = (tmp_path / "repo" / "README.md").read_text()
    assert readme.splitlines()[0] == "# Hearing screen: 'v2'"
    assert (tmp_path / "repo" / ".gitignore").read_text().splitlines()[0] == "results/"


def test_library_path_names_the_fix_when_the_rules_are_missing(tmp_path):
    # the package alone, as a plain (not editable) install leaves it: no rules/ beside it
    site = tmp_path / "site"
    code = "from usher_pipeline import library_path; print(library_path('library.smk'))"
    site.mkdir()
    subprocess.run(["cp", "-r", str(REPO / "src" / "usher_pipeline"), str(site)], check=True)
    env = run_env(PYTHONPATH=str(site))
    alone = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert alone.returncode == 1
    assert alone.stderr.strip().splitlines()[-1] == (
        "usher_pipeline.scaffold.LibraryNotFound: the usher_pipeline package in "
        f"{site / 'usher_pipeline'} was installed without the rules/ folder of its checkout: "
        "install it with `pip install -e CHECKOUT`, or set USHER_PIPELINE_ROOT to the checkout"
    )
    pointed = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "USHER_PIPELINE_ROOT": str(REPO)},
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert pointed.stdout.strip() == str(REPO / "rules" / "library.smk"), pointed.stderr


def test_library_path_names_the_rule_files_it_has():
    assert library_path() == REPO / "rules"
    assert library_path("module.smk") == REPO / "rules" / "module.smk"
    with pytest.raises(LibraryNotFound) as info:
        library_path("provenance.snk")
    known = ", ".join(sorted(p.name for p in (REPO / "rules").glob("*.smk")))
    assert str(info.value) == (
        f"the usher_pipeline library has no rule file 'provenance.snk' in {REPO / 'rules'}: "
        f"use one of {known}"
    )


# -- the user's workflow, in both forms ---------------------------------------------------------


@pytest.mark.slow
def test_the_workflow_runs_with_its_wildcard_rule_and_aggregate(clean):
    assert set(fingerprints(clean)) == TABLES
    records = pl.read_parquet(clean / "results/tables/records.parquet")
    expected = (
        records.with_columns(
            chrom=pl.Series([CHROMS[i % len(CHROMS)] for i in range(records.height)]),
            doubled=2 * pl.col("value"),
        )
        .group_by("chrom")
        .agg(pl.len().cast(pl.Int64).alias("records"), pl.col("doubled").sum())
        .sort("chrom")
    )
    report = pl.read_csv(clean / "results/final/chrom_report.tsv", separator="\t")
    assert report.rows() == expected.rows()
    for table in TABLES:
        sentinel = clean / "results" / "tables" / f"{table}.parquet"
        assert sentinel.with_suffix(".provenance.json").is_file(), table
    sidecar = json.loads(sidecar_path(clean / "results/final/chrom_report.tsv").read_text())
    steps = {step["step_name"] for step in sidecar["processing_steps"]}
    per_chrom = {f"chrom_stats[chrom={c}]" for c in CHROMS}
    assert {"records", *per_chrom, "chrom_report"} <= steps, steps
    assert (clean / ".snakemake/usher_pipeline/manifest.json").is_file()
    assert "Nothing to be done" in output(run(clean, "snakemake", "--cores", "2", "-n"))


@pytest.mark.slow
def test_every_command_works_with_no_flags_in_the_workflows_folder(clean, tmp_path):
    checkpoints = run(clean, "usher-pipeline", "checkpoints")
    for table in TABLES:
        assert re.search(rf"^{table}\s", checkpoints.stdout, re.MULTILINE), checkpoints.stdout
    verify = run(clean, "usher-pipeline", "verify")
    assert "problem" not in verify.stdout.replace("0 problems", ""), verify.stdout
    run(clean, "usher-pipeline", "repair")
    lineage = run(clean, "usher-pipeline", "lineage", "results/final/chrom_report.tsv")
    for rule in ("records", "chrom_stats", "chrom_report"):
        assert rule in lineage.stdout, lineage.stdout
    query = run(
        clean, "usher-pipeline", "query", "--format", "csv", "SELECT count(*) AS n FROM records"
    )
    assert query.stdout.splitlines() == [
        "n",
        str(pl.read_parquet(clean / "results/tables/records.parquet").height),
    ]
    run(clean, "usher-pipeline", "export-prov", str(tmp_path / "run.prov.json"))
    run(clean, "usher-pipeline", "export-rocrate", str(tmp_path / "crate"))
    # from elsewhere, as Snakemake is pointed at a folder
    elsewhere = run(tmp_path, "usher-pipeline", "-C", str(clean), "checkpoints")
    assert elsewhere.stdout == checkpoints.stdout


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_every_hint_the_cli_prints_works_when_pasted(tmp_path, form):
    workdir = init(tmp_path / "hinted", form)
    run(workdir, "snakemake", "--cores", "2")
    before = fingerprints(workdir)
    untouched = [workdir / f"results/steplogs/chrom_stats_{c}.json" for c in ("chr1", "chrx")]
    steplogs = [p.read_bytes() for p in untouched]
    with duckdb.connect(str(workdir / "results/pipeline.duckdb")) as conn:
        conn.execute('DROP TABLE "chrom_report"')
    changed = workdir / "results/tables/chrom_stats_chr2.parquet"
    pl.read_parquet(changed).head(2).write_parquet(changed)  # one chromosome's sentinel edited
    verify = run(workdir, "usher-pipeline", "verify", check=False)
    assert verify.returncode == 1, output(verify)
    hints = re.findall(r"`([^`]+)`", verify.stdout)
    assert hints, verify.stdout
    for hint in dict.fromkeys(hints):
        run(workdir, *shlex.split(hint))
    after = run(workdir, "usher-pipeline", "verify")
    assert "problem" not in after.stdout.replace("0 problems", ""), after.stdout
    assert fingerprints(workdir) == before
    # the hints redo the one chromosome whose sentinel changed, not its siblings
    assert [p.read_bytes() for p in untouched] == steplogs


@pytest.mark.slow
def test_verify_names_a_sentinel_that_is_no_longer_parquet_and_the_fix(tmp_path):
    workdir = init(tmp_path / "cut")
    run(workdir, "snakemake", "--cores", "2")
    before = fingerprints(workdir)
    cut = workdir / "results/tables/chrom_stats_chrx.parquet"
    cut.write_bytes(cut.read_bytes()[:-64])  # a copy cut short: no Parquet footer
    verify = run(workdir, "usher-pipeline", "verify", check=False)
    assert verify.returncode == 1, output(verify)
    assert "Traceback" not in output(verify), output(verify)
    lines = [line for line in verify.stdout.splitlines() if "chrom_stats_chrx.parquet" in line]
    assert len(lines) == 1, verify.stdout
    for hint in dict.fromkeys(re.findall(r"`([^`]+)`", verify.stdout)):
        run(workdir, *shlex.split(hint))
    after = run(workdir, "usher-pipeline", "verify")
    assert "problem" not in after.stdout.replace("0 problems", ""), after.stdout
    assert fingerprints(workdir) == before


def kill_points(workdir: Path) -> dict[str, Callable[[], bool]]:
    """When to kill: inside a fetch (two of its five batches committed), right after a
    job's outputs appear (its step log, the last of them) and in the provenance merge (its
    first sidecar written)."""
    tables = workdir / "results" / "tables"
    return {
        "in_a_fetch": lambda: len(committed_batches(workdir, "records")) >= 2,
        "after_outputs": lambda: (workdir / "results/steplogs/record_summary.json").exists(),
        "in_the_merge": lambda: any(tables.glob("*.provenance.json")),
    }


@pytest.mark.slow
@pytest.mark.parametrize("point", ["in_a_fetch", "after_outputs", "in_the_merge"])
def test_a_kill_at_any_point_resumes_with_the_same_command(clean, tmp_path, point):
    form = "module" if "module usher:" in (clean / "Snakefile").read_text() else "include"
    workdir = init(tmp_path / "killed", form, fetch={"latency_seconds": 0.25})
    first, second = tmp_path / "audit-1.txt", tmp_path / "audit-2.txt"
    kill_when(
        workdir,
        kill_points(workdir)[point],
        tmp_path / "killed.out",
        **{AUDIT_VARIABLE: str(first)},
    )
    committed = {batch for event, _, batch in audit(first) if event == "committed"}
    if point == "in_a_fetch":
        assert committed

    resumed = run(workdir, "snakemake", "--cores", "2", **{AUDIT_VARIABLE: str(second)})
    refetched = {batch for event, _, batch in audit(second) if event == "fetched"}
    assert committed.isdisjoint(refetched), "a committed batch was fetched again"
    assert fingerprints(workdir) == fingerprints(clean), output(resumed)
    assert "Nothing to be done" in output(run(workdir, "snakemake", "--cores", "2"))
    verify = run(workdir, "usher-pipeline", "verify")
    assert "problem" not in verify.stdout.replace("0 problems", ""), verify.stdout


@pytest.mark.slow
def test_a_fetch_that_raises_fails_its_job_and_the_rerun_fetches_only_the_rest(tmp_path):
    # one attempt per batch, so that the error the service gives once fails the job
    workdir = init(tmp_path / "flaky", fetch={"batch_size": 2}, api={"max_retries": 1})
    marker = tmp_path / "flaky.marker"
    marker.write_text("fail once\n")
    first, second = tmp_path / "audit-1.txt", tmp_path / "audit-2.txt"
    env = {FLAKY_VARIABLE: str(marker), AUDIT_VARIABLE: str(first)}
    failed = run(workdir, "snakemake", "--cores", "1", check=False, **env)
    assert failed.returncode != 0
    text = output(failed)
    assert text.count("ConnectionError: the service did not answer for") == 1, text
    assert text.count("failed after 1 attempt: ConnectionError") == 1, text  # one line, once
    assert "Traceback" not in text, text
    logs = [p.read_text() for p in (workdir / "logs" / "chrom_stats").glob("*.log")]
    assert sum("ConnectionError: the service did not answer" in log for log in logs) == 1
    assert not marker.exists()
    committed = {batch for event, _, batch in audit(first) if event == "committed"}
    run(workdir, "snakemake", "--cores", "1", **{AUDIT_VARIABLE: str(second)})
    refetched = [batch for event, _, batch in audit(second) if event == "fetched"]
    assert committed.isdisjoint(refetched)
    assert set(fingerprints(workdir)) == TABLES


@pytest.mark.slow
def test_moving_a_rule_keeps_its_results_with_the_documented_commands(tmp_path):
    workdir = init(tmp_path / "moved")
    run(workdir, "snakemake", "--cores", "2")
    before = fingerprints(workdir)
    # the rule moves from rules/summary.smk into the Snakefile: its script path changes
    rule = (workdir / "rules/summary.smk").read_text().replace('"../', '"')
    (workdir / "rules/summary.smk").unlink()
    snakefile = workdir / "Snakefile"
    snakefile.write_text(
        snakefile.read_text().replace('include: "rules/summary.smk"\n', rule.split("\n", 2)[2])
    )
    plan = run(workdir, "snakemake", "--cores", "2", "-n")
    assert "Code has changed since last execution" in output(plan)
    changed = run(workdir, "snakemake", "--list-changes", "code").stdout.split()
    assert "results/tables/record_summary.parquet" in changed
    # --touch records the moved rule's code (not --cleanup-metadata, which forgets its params)
    run(workdir, "snakemake", "--cores", "2", "--touch")
    assert "Nothing to be done" in output(run(workdir, "snakemake", "--cores", "2"))
    assert fingerprints(workdir) == before
    # and the moved rule's params are still recorded: a changed threshold reruns it
    edit_config(workdir, summary={"threshold": 100})
    plan = output(run(workdir, "snakemake", "--cores", "2", "-n"))
    assert "rule record_summary:" in plan and "Params have changed" in plan, plan


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_a_misspelt_library_key_stops_the_run_before_any_job(tmp_path, form):
    workdir = init(tmp_path / "misspelt", form)
    edit_config(workdir, store=None)
    edit_config(workdir, store={"database_mod": "head"})
    done = run(workdir, "snakemake", "--cores", "2", check=False)
    assert done.returncode != 0
    text = output(done)
    lines = [line for line in text.splitlines() if re.search(r"database_mod\b", line)]
    assert len(lines) == 1 and "store.database_mode" in lines[0], text
    assert "Traceback" not in text
    assert not (workdir / "results").exists()


@pytest.mark.slow
def test_a_key_no_rule_reads_reruns_nothing(unread_key):
    done = run(unread_key, "snakemake", "--cores", "2", "-n")
    assert "Nothing to be done" in output(done), output(done)


@pytest.mark.slow
def test_exports_name_the_workflows_own_files(clean, tmp_path):
    files = own_files(clean)
    assert {p.name for p in files} >= {"chrom_stats.py", "fetch_records.py", "chroms.smk"}
    run(clean, "usher-pipeline", "export-prov", str(tmp_path / "run.prov.json"))
    prov_text = (tmp_path / "run.prov.json").read_text()
    from prov.model import ProvDocument

    document = ProvDocument.deserialize(content=prov_text, format="json")
    assert document.get_records()
    for path in files:
        relative = path.relative_to(clean).as_posix()
        assert relative in prov_text, f"PROV does not name {relative}"
        assert sha256(path) in prov_text, f"PROV does not carry the hash of {relative}"

    run(clean, "usher-pipeline", "export-rocrate", str(tmp_path / "crate"))
    metadata = json.loads((tmp_path / "crate" / "ro-crate-metadata.json").read_text())
    graph = {entity["@id"]: entity for entity in metadata["@graph"]}
    crate_text = json.dumps(metadata)
    for path in files:
        relative = path.relative_to(clean).as_posix()
        assert any(key.endswith(relative) for key in graph), f"the crate lacks {relative}"
        assert sha256(path) in crate_text, f"the crate lacks the hash of {relative}"
    root = graph["./"]
    workflow = graph[root["mainEntity"]["@id"]]
    assert workflow["@id"].endswith("Snakefile")
    assert workflow["name"] == "my_flow"
    assert "usher_pipeline demo workflow" not in crate_text


@pytest.mark.slow
def test_the_snakemake_report_builds(clean, tmp_path):
    report = tmp_path / "report.html"
    done = run(clean, "snakemake", "--report", str(report), check=False)
    assert done.returncode == 0, output(done)
    assert report.stat().st_size > 10_000
    assert "Nothing to be done" in output(run(clean, "snakemake", "--cores", "2", "-n"))


def test_the_added_rule_files_are_formatted(tmp_path):
    (tmp_path / "chroms.smk").write_text(CHROM_RULES)
    run(tmp_path, "snakefmt", "--check", "chroms.smk")
