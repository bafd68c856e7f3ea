"""The run history of a user's own workflow, made by `usher-pipeline init` outside this
checkout, in both documented forms (`include:` of the library's rules and the library as a
Snakemake `module`), used as docs/history.md tells a user to.

The user adds two tables to the scaffold: `record_bands`, registered with a key, a noun and
a label, puts each record in a band by the scaffold's own `summary.threshold` (a param of
its rule), and `band_hundreds`, registered with nothing, holds the band beside each value's
hundreds, rows that repeat (no column is unique: a whole-row diff). The scaffold's
one-row `record_summary` is registered with no key either, so its diff uses a unique column.
The workflow runs, the threshold changes, it runs again; then every history command runs
for real, in a subprocess, in the workflow's folder with no flags (and with -C from
elsewhere), and what it says is checked against polars reading the two versions.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from test_outside_workflow import FORMS, MODULE_FORM, REPO, edit_config, output, run

TABLES = {"records", "record_summary", "record_bands", "band_hundreds"}

# -- the user's additions to the scaffold ---------------------------------------------------

BAND_RULES = """\
# Each record high or low by the summary's threshold, and the bands beside the hundreds.


rule record_bands:
    input:
        records=USHER.sentinel("records"),
    output:
        table=USHER.sentinel("record_bands"),
        steplog=USHER.steplog("record_bands"),
    log:
        USHER.log("record_bands", "record_bands"),
    conda:
        "../envs/workflow.yaml"
    params:
        threshold=config["summary"]["threshold"],
    script:
        "../scripts/record_bands.py"


rule band_hundreds:
    input:
        bands=USHER.sentinel("record_bands"),
    output:
        table=USHER.sentinel("band_hundreds"),
        steplog=USHER.steplog("band_hundreds"),
    log:
        USHER.log("band_hundreds", "band_hundreds"),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/band_hundreds.py"
"""

RECORD_BANDS_SCRIPT = '''\
"""Each record's band: high at or above the threshold, else low; named "Item 0007"."""

import polars as pl

from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    records = job.read("records")
    threshold = int(snakemake.params.threshold)
    high = pl.col("value") >= threshold
    bands = records.select(
        "key",
        pl.concat_str(pl.lit("Item "), pl.col("key").str.slice(-4)).alias("name"),
        "value",
        pl.when(high).then(pl.lit("high")).otherwise(pl.lit("low")).alias("band"),
    )
    job.save(bands, description=f"each record high or low at {threshold}")
'''

BAND_HUNDREDS_SCRIPT = '''\
"""The band of each record beside the hundreds of its value: rows that repeat, no key."""

import polars as pl

from usher_pipeline.workflow import Job

with Job(snakemake) as job:
    bands = job.read("bands")
    hundreds = bands.select("band", (pl.col("value") // 100).alias("hundreds"))
    job.save(hundreds, description="band and hundreds of each record")
'''

REGISTER_BANDS = """\
USHER.register("record_bands", key=["key"], noun="records", label="name")
USHER.register("band_hundreds")
"""


def make_workflow(folder: Path, form: str) -> Path:
    """`usher-pipeline init folder`, with the band rules added in `form`."""
    done = run(folder.parent, "usher-pipeline", "init", folder.name)
    assert f"into {folder.name}" in done.stdout
    (folder / "rules" / "bands.smk").write_text(BAND_RULES)
    (folder / "scripts" / "record_bands.py").write_text(RECORD_BANDS_SCRIPT)
    (folder / "scripts" / "band_hundreds.py").write_text(BAND_HUNDREDS_SCRIPT)
    snakefile = folder / "Snakefile"
    text = snakefile.read_text()
    summary = 'USHER.register("record_summary", files=[USHER.final("record_summary.tsv")])\n'
    provenance = 'include: library_path("provenance.smk")\n'
    assert summary in text and provenance in text, text
    text = text.replace(summary, summary + REGISTER_BANDS)
    last = 'include: "rules/bands.smk"\n' + (provenance if form == "include" else MODULE_FORM)
    snakefile.write_text(text.replace(provenance, last))
    return folder


def cli(workdir: Path, *args: str, check: bool = True) -> Any:
    """`usher-pipeline ARGS` in `workdir`, no flags added."""
    return run(workdir, "usher-pipeline", *args, check=check)


def cli_json(workdir: Path, *args: str) -> Any:
    return json.loads(cli(workdir, *args, "--format", "json").stdout)


def cli_csv(workdir: Path, *args: str, schema: dict[str, Any] | None = None) -> pl.DataFrame:
    text = cli(workdir, *args, "--format", "csv").stdout
    return pl.read_csv(io.StringIO(text), schema_overrides=schema)


def snakemake(workdir: Path) -> str:
    return output(run(workdir, "snakemake", "--cores", "2"))


def size_text(count: int) -> str:
    """A size as the docs print it: `4635 bytes` below 1 KB, else `4.5 KB`."""
    return f"{count} bytes" if count < 1024 else f"{count / 1024:.1f} KB"


def run_record(workdir: Path, run_id: str) -> dict[str, Any]:
    path = workdir / "results" / "history" / "runs" / f"{run_id}.json"
    record: dict[str, Any] = json.loads(path.read_text())
    assert record["format"] == "usher_pipeline.run/1"
    return record


def history_files(workdir: Path) -> dict[str, bytes]:
    """Every run record and table version of the history, and its bytes."""
    root = workdir / "results" / "history"
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for folder in ("runs", "objects")
        for p in sorted((root / folder).iterdir())
    }


# -- what polars says changed ---------------------------------------------------------------


def changed_bands(old: pl.DataFrame, new: pl.DataFrame) -> pl.DataFrame:
    """The records whose band differs, by key: key, name, band_old, band_new."""
    joined = old.join(new, on="key", how="inner", suffix="_new")
    assert joined.height == old.height == new.height  # the same keys in both
    return (
        joined.filter(pl.col("band") != pl.col("band_new"))
        .select("key", name="name_new", band_old="band", band_new="band_new")
        .sort("key")
    )


def multiset_minus(a: pl.DataFrame, b: pl.DataFrame) -> list[tuple[Any, ...]]:
    """The rows of `a` not matched by a row of `b`, each as often as it is in excess."""
    counts_a = a.group_by(a.columns).len("n_a")
    counts_b = b.group_by(b.columns).len("n_b")
    extra = counts_a.join(counts_b, on=a.columns, how="left").with_columns(
        excess=pl.col("n_a") - pl.col("n_b").fill_null(0)
    )
    rows = []
    for row in extra.filter(pl.col("excess") > 0).iter_rows(named=True):
        rows += [tuple(row[c] for c in a.columns)] * row["excess"]
    return sorted(rows)


# -- the workflow, run twice ----------------------------------------------------------------


@dataclass
class TwoRuns:
    workdir: Path
    first: dict[str, pl.DataFrame]  # each table as the first run left it
    second: dict[str, pl.DataFrame]  # and as the second did


def sentinels(workdir: Path) -> dict[str, pl.DataFrame]:
    return {t: pl.read_parquet(workdir / "results" / "tables" / f"{t}.parquet") for t in TABLES}


@pytest.fixture(scope="module", params=FORMS)
def two_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TwoRuns:
    """The workflow run, `summary.threshold` changed from 500 to 300, and run again."""
    workdir = make_workflow(
        tmp_path_factory.mktemp(f"reuse-{request.param}") / "banded", request.param
    )
    assert not workdir.resolve().is_relative_to(REPO)
    assert "rule record_bands:" in snakemake(workdir)
    first = sentinels(workdir)
    edit_config(workdir, summary={"threshold": 300})
    again = snakemake(workdir)
    assert "rule record_bands:" in again and "rule records:" not in again, again
    return TwoRuns(workdir, first, sentinels(workdir))


# -- runs and diff --------------------------------------------------------------------------


@pytest.mark.slow
def test_runs_and_diff_name_the_config_key_and_the_rows_that_changed(two_runs, tmp_path):
    workdir, old, new = two_runs.workdir, two_runs.first, two_runs.second
    runs = cli_json(workdir, "runs")
    assert [sorted(r) for r in runs] == [["by", "changes", "ended", "run", "took"]] * 2
    assert runs[0]["run"] > runs[1]["run"]  # newest first
    assert runs[1]["changes"] == f"first run: {len(TABLES)} tables"
    assert runs[0]["changes"].startswith("config summary.threshold; 3 tables changed ")
    # from elsewhere, pointed at the folder
    elsewhere = run(tmp_path, "usher-pipeline", "-C", str(workdir), "runs", "--format", "json")
    assert json.loads(elsewhere.stdout) == runs

    bands = changed_bands(old["record_bands"], new["record_bands"])
    moved = old["record_bands"].filter(pl.col("value").is_between(300, 499))
    assert bands.height == moved.height > 0
    assert set(bands["band_old"]) == {"low"} and set(bands["band_new"]) == {"high"}

    text = cli(workdir, "diff").stdout.splitlines()
    assert text[0] == f"diff {runs[1]['run']} -> {runs[0]['run']}"
    assert "  summary.threshold: 500 -> 300" in text
    n = bands.height
    noun = "record" if n == 1 else "records"
    assert f"  record_bands: {n} {noun} changed band ({n} low -> high)" in text, text
    names = ", ".join(bands["name"].to_list()[:10])
    assert any(line.strip().startswith(f"band low -> high ({n}): {names}") for line in text)
    assert "  unchanged: records" in text

    diff = cli_json(workdir, "diff")
    assert diff["old"]["run_id"] == runs[1]["run"] and diff["new"]["run_id"] == runs[0]["run"]
    assert diff["config"] == [
        {"key": "summary.threshold", "old": 500, "new": 300, "change": "changed"}
    ]
    assert diff["unchanged_tables"] == ["records"]
    tables = {entry["table"]: entry for entry in diff["tables"]}
    assert set(tables) == {"record_bands", "band_hundreds", "record_summary"}

    keyed = tables["record_bands"]
    assert keyed["key"] == ["key"] and keyed["key_source"] == "declared"
    assert (keyed["noun"], keyed["label"]) == ("records", "name")
    assert (keyed["rows_old"], keyed["rows_new"]) == (old["record_bands"].height,) * 2
    assert (keyed["added"], keyed["removed"], keyed["changed"]) == (0, 0, n)
    assert keyed["changed_columns"] == [["band", n]]
    [transition] = keyed["transitions"]
    assert (transition["column"], transition["old"], transition["new"]) == ("band", "low", "high")
    assert transition["rows"] == n
    assert transition["labels"] == bands["name"].to_list()
    assert transition["keys"] == [[k] for k in bands["key"]]

    whole = tables["band_hundreds"]
    assert whole["key"] == [] and whole["key_source"] == "whole row"
    removed = multiset_minus(old["band_hundreds"], new["band_hundreds"])
    added = multiset_minus(new["band_hundreds"], old["band_hundreds"])
    assert (whole["added"], whole["removed"], whole["changed"]) == (len(added), len(removed), 0)
    assert len(added) == len(removed) == n

    unique = tables["record_summary"]  # one row: its first column is unique in both versions
    assert unique["key_source"] == "unique column" and unique["key"] == ["records"]
    assert (unique["added"], unique["removed"], unique["changed"]) == (0, 0, 1)
    assert unique["changed_columns"] == [["at_or_above_threshold", 1]]

    pointed = run(tmp_path, "usher-pipeline", "-C", str(workdir), "diff", "--format", "json")
    assert json.loads(pointed.stdout) == diff
    # one run named: that run against the latest; a run by its id, or by the day it ended
    assert cli_json(workdir, "diff", runs[1]["run"]) == diff
    assert cli_json(workdir, "diff", runs[1]["run"], runs[0]["ended"][:10]) == diff


# -- history, show and the rows of one table ------------------------------------------------


@pytest.mark.slow
def test_history_show_and_the_rows_of_one_table(two_runs):
    workdir, old, new = two_runs.workdir, two_runs.first, two_runs.second
    versions = cli_json(workdir, "history", "record_bands")
    assert [v["version"] for v in versions] == ["v2", "v1"]
    assert [v["changed"] for v in versions] == ["yes", "yes"]
    assert [v["rows"] for v in versions] == [new["record_bands"].height, old["record_bands"].height]
    for version, frame in zip(versions, (new, old), strict=True):
        assert version["file"].startswith("results/history/objects/fp2-"), version
        assert_frame_equal(pl.read_parquet(workdir / version["file"]), frame["record_bands"])
    text = cli(workdir, "history", "record_bands").stdout.splitlines()
    assert text[-1] == (
        "2 versions in 2 runs; read one with `usher-pipeline show record_bands --run RUN`"
    )
    unchanged = cli_json(workdir, "history", "records")
    assert [v["version"] for v in unchanged] == ["v1", "v1"]
    assert [v["changed"] for v in unchanged] == ["", "yes"]
    assert unchanged[0]["file"] == unchanged[1]["file"]  # one object for both runs

    schema = dict(old["record_bands"].schema)
    shown = cli_csv(
        workdir, "show", "record_bands", "--run", "latest~1", "--limit", "0", schema=schema
    )
    assert_frame_equal(shown, old["record_bands"])
    latest = cli_csv(workdir, "show", "record_bands", "--limit", "0", schema=schema)
    assert_frame_equal(latest, new["record_bands"])

    rows = cli_csv(workdir, "diff", "--table", "record_bands")
    expected = changed_bands(old["record_bands"], new["record_bands"])
    assert rows.columns == ["change", "key", "name", "band_old", "band_new"]
    assert rows["change"].to_list() == ["changed"] * expected.height
    assert_frame_equal(rows.drop("change"), expected)

    whole = cli_csv(workdir, "diff", "--table", "band_hundreds")
    assert whole.columns == ["change", "band", "hundreds"], whole
    for change, a, b in (("added", new, old), ("removed", old, new)):
        mine = whole.filter(pl.col("change") == change).drop("change")
        assert sorted(mine.rows()) == multiset_minus(a["band_hundreds"], b["band_hundreds"])

    # SQL on a version: `query` reads the history's objects
    sql = f"SELECT count(*) AS n FROM '{versions[1]['file']}' WHERE band = 'high'"
    counted = cli(workdir, "query", "--format", "csv", sql).stdout.splitlines()
    assert counted == ["n", str(old["record_bands"].filter(pl.col("band") == "high").height)]


# -- gc, then the config's retention and switches (changes the workflow: last) ---------------


@pytest.mark.slow
def test_gc_then_the_configs_retention_and_switches(two_runs):
    workdir = two_runs.workdir
    objects = workdir / "results" / "history" / "objects"
    newer, older = (r["run"] for r in cli_json(workdir, "runs"))
    named = {
        run_id: {entry["object"] for entry in run_record(workdir, run_id)["tables"].values()}
        for run_id in (newer, older)
    }
    only_old = sorted(named[older] - named[newer])
    assert len(only_old) == 3  # record_bands, band_hundreds and record_summary changed
    files = [workdir / "results" / "history" / name for name in only_old]
    assert all(f.stat().st_nlink == 1 for f in files)  # their sentinels were replaced since
    freed = sum(f.stat().st_size for f in files)
    assert freed > 0

    gc = cli(workdir, "gc", "--keep-runs", "1").stdout.splitlines()
    assert gc[0] == (
        f"gc: removed 1 runs and 3 table versions, freed {size_text(freed)}; "
        "kept 1 runs (the last 1 runs)"
    ), gc
    assert gc[1].strip() == older
    assert not any(f.exists() for f in files)
    assert [r["run"] for r in cli_json(workdir, "runs")] == [newer]
    alone = cli(workdir, "diff", check=False)
    assert alone.returncode == 1 and alone.stdout == ""
    assert len(alone.stderr.splitlines()) == 1, alone.stderr
    assert alone.stderr.startswith("usher-pipeline: error: diff needs two runs and 1 is kept")

    # history.keep_runs in the workflow's config: the provenance rule keeps the last run only
    edit_config(workdir, history={"keep_runs": 1}, summary={"threshold": 400})
    assert "rule record_bands:" in snakemake(workdir)
    [third] = [r["run"] for r in cli_json(workdir, "runs")]
    assert third > newer
    assert run_record(workdir, third)["previous_run"] == newer
    assert sorted(p.name for p in (workdir / "results/history/runs").glob("*.json")) == [
        f"{third}.json"
    ]
    kept = {entry["object"] for entry in run_record(workdir, third)["tables"].values()}
    assert {f"objects/{p.name}" for p in objects.iterdir()} == kept

    # history.enabled: false: the run records nothing
    before = history_files(workdir)
    edit_config(workdir, history={"enabled": False}, summary={"threshold": 450})
    assert "rule record_bands:" in snakemake(workdir)
    assert history_files(workdir) == before
    assert [r["run"] for r in cli_json(workdir, "runs")] == [third]

    # a misspelt history key stops the run in one line naming the key it meant
    edit_config(workdir, history=None)
    edit_config(workdir, history={"keep_run": 1}, summary={"threshold": 350})
    sentinel = (workdir / "results/tables/record_bands.parquet").read_bytes()
    done = run(workdir, "snakemake", "--cores", "2", check=False)
    assert done.returncode != 0
    text = output(done)
    lines = [line for line in text.splitlines() if "keep_run" in line]
    assert len(lines) == 1 and "history.keep_runs" in lines[0], text
    assert "Traceback" not in text
    assert (workdir / "results/tables/record_bands.parquet").read_bytes() == sentinel
    assert history_files(workdir) == before


def test_the_added_rule_file_is_formatted(tmp_path):
    (tmp_path / "bands.smk").write_text(BAND_RULES)
    run(tmp_path, "snakefmt", "--check", "bands.smk")
