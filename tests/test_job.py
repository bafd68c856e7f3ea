"""Job, the script-side helper: errors, the step log, and demo scripts run under pytest."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from usher_pipeline import __version__
from usher_pipeline.demo import hpo_data_dir
from usher_pipeline.hashing import sha256_json
from usher_pipeline.persistence import PipelineStore
from usher_pipeline.persistence.fingerprint import fingerprint_parquet
from usher_pipeline.workflow import Job, StoreSettings, load_steplog, mock_snakemake, run_script
from usher_pipeline.workflow.job import job_logger

REPO = Path(__file__).resolve().parents[1]
SCHEDULER_VARIABLES = ("SLURM_JOB_ID", "SLURM_JOB_PARTITION", "PBS_JOBID", "LSB_JOBID", "JOB_ID")


def job_config(tmp_path: Path, mode: str = "job") -> dict[str, Any]:
    """The part of Snakemake's config a job reads: where the store is, and the run identity."""
    return {
        "duckdb_path": str(tmp_path / "results/pipeline.duckdb"),
        "store": {"lock_timeout_seconds": 30, "database_mode": mode},
        "_usher": {"config_hash": "c0ffee", "pipeline_version": __version__},
    }


def outputs(tmp_path: Path, table: str = "genes") -> dict[str, Path]:
    return {
        "table": tmp_path / f"results/tables/{table}.parquet",
        "steplog": tmp_path / f"results/steplogs/{table}.json",
    }


@pytest.fixture
def no_scheduler(monkeypatch):
    for variable in SCHEDULER_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


# -- errors --------------------------------------------------------------------------------------


SETUP_ERROR_SCRIPT = """
import sys
from usher_pipeline.workflow import Job, mock_snakemake

base, case = sys.argv[1], sys.argv[2]
output = {"table": f"{base}/genes.parquet", "steplog": f"{base}/genes.json"}
config = {"duckdb_path": f"{base}/pipeline.duckdb"}
if case == "no_steplog":
    del output["steplog"]
else:
    config["store"] = {"database_mode": "cluster"}
smk = mock_snakemake("genes", output=output, log=[f"{base}/logs/genes.log"], config=config)
with Job(smk) as job:
    raise AssertionError("the job body ran")
"""


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "no_steplog",
            "rule genes has no output named 'steplog': declare steplog=... next to its "
            "sentinel (see docs/architecture.md)",
        ),
        (
            "bad_mode",
            "store.database_mode is 'cluster': use 'job' (jobs write the database) or 'head' "
            "(a local rule ingests sentinels, for shared filesystems)",
        ),
    ],
)
def test_job_that_cannot_start_exits_with_one_line_in_its_log(tmp_path, case, message):
    """An UsherError in the Job's setup, in a real script process as under Snakemake: exit
    status 1, one line on stderr, no traceback, and the error in the job's log."""
    script = tmp_path / "genes.py"
    script.write_text(SETUP_ERROR_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path), case],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"rule genes: {message}"
    log = (tmp_path / "logs/genes.log").read_text().splitlines()
    assert [line.split(" ERROR ", 1)[1] for line in log if " ERROR " in line] == [message]
    assert not (tmp_path / "genes.json").exists()


def test_usher_error_in_a_job_exits_with_one_line_and_no_step_log(tmp_path):
    """In a real process, as under Snakemake: exit status 1, one line on stderr, no traceback."""
    code = textwrap.dedent(
        """
        import sys
        from usher_pipeline.errors import UsherError
        from usher_pipeline.workflow import Job, mock_snakemake

        base = sys.argv[1]
        smk = mock_snakemake(
            "genes",
            output={"table": f"{base}/genes.parquet", "steplog": f"{base}/genes.json"},
            log=[f"{base}/genes.log"],
            config={"duckdb_path": f"{base}/pipeline.duckdb"},
        )
        with Job(smk) as job:
            raise UsherError("gene list data/genes.txt is empty: point demo.genes at a file")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "rule genes: gene list data/genes.txt is empty: point demo.genes at a file"
    )
    assert not (tmp_path / "genes.json").exists()
    assert "ERROR gene list data/genes.txt is empty" in (tmp_path / "genes.log").read_text()


def test_unexpected_error_keeps_its_traceback_and_writes_no_step_log(tmp_path):
    paths = outputs(tmp_path)
    smk = mock_snakemake("genes", output=paths, config=job_config(tmp_path))
    with pytest.raises(ZeroDivisionError):
        with Job(smk):
            _ = 1 / 0
    assert not paths["steplog"].exists()


def test_job_that_skips_an_output_names_it(tmp_path):
    paths = outputs(tmp_path)
    paths["report"] = tmp_path / "results/final/genes.tsv"
    smk = mock_snakemake("genes", output=paths, config=job_config(tmp_path))
    with pytest.raises(SystemExit) as caught:
        with Job(smk) as job:
            job.save(pl.DataFrame({"gene": ["MYO7A"]}))
    assert "finished without writing its outputs ['report']" in str(caught.value.code)
    assert not paths["steplog"].exists()


# -- the step log ------------------------------------------------------------------------------


def run_genes_job(tmp_path: Path) -> dict[str, Any]:
    """A job that reads one input sentinel, records a step and saves a table."""
    source = tmp_path / "results/tables/raw_genes.parquet"
    source.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"gene": ["MYO7A", "USH2A", "CDH23", "TP53"]}).write_parquet(source)
    paths = outputs(tmp_path)
    smk = mock_snakemake(
        "genes",
        input={"raw": source},
        output=paths,
        params={"keep": {"prefixes": ["MYO", "USH", "CDH"]}},
        wildcards={"panel": "usher"},
        log=[tmp_path / "logs/genes/genes.log"],
        config=job_config(tmp_path),
    )
    with Job(smk) as job:
        raw = job.read("raw")
        kept = raw.filter(pl.col("gene").str.contains("^(MYO|USH|CDH)"))
        job.record_step("filter", {"kept": kept.height})
        job.record_data_source("hpo", "2025-01-16")
        job.save(kept, description="Usher panel genes")
    return load_steplog(paths["steplog"])


def test_step_log_records_the_job(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_PARTITION", "short")
    started = time.perf_counter()
    record = run_genes_job(tmp_path)
    wall_seconds = time.perf_counter() - started  # around the job, so at least its duration
    assert record["format"] == "usher_pipeline.steplog/1"
    assert record["rule"] == "genes"
    assert record["wildcards"] == {"panel": "usher"}
    assert record["started_at"] <= record["ended_at"]
    assert 0 < record["duration_seconds"] <= wall_seconds
    source = tmp_path / "results/tables/raw_genes.parquet"
    assert record["inputs"] == [
        {
            "name": "raw",
            "path": str(source),
            "sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
            "size": source.stat().st_size,
            "rows": 4,
        }
    ]
    (output,) = record["outputs"]
    sentinel = tmp_path / "results/tables/genes.parquet"
    assert output["name"] == "table"
    assert output["path"] == str(sentinel)
    assert output["sha256"] == hashlib.sha256(sentinel.read_bytes()).hexdigest()
    assert output["size"] == sentinel.stat().st_size
    assert output["rows"] == 3
    assert output["table"] == "genes"
    assert output["fingerprint"] == fingerprint_parquet(sentinel)[0]
    assert output["committed_at"] is not None
    assert record["params"] == {"keep": {"prefixes": ["MYO", "USH", "CDH"]}}
    assert record["config_slice_hash"] == sha256_json(record["params"])
    assert "config_hash" not in record  # only the hash of the job's own slice, its params
    assert record["data_sources"] == {"hpo": "2025-01-16"}
    assert set(record["software"]) == {"python", "usher_pipeline", "snakemake", "duckdb", "polars"}
    assert record["software"]["usher_pipeline"] == __version__
    assert record["host"] == socket.gethostname()
    assert record["scheduler"] == {"name": "slurm", "job_id": "4242", "partition": "short"}
    assert record["database"]["mode"] == "job"
    assert [s["step_name"] for s in record["steps"]] == ["filter"]
    assert record["steps"][0]["details"] == {"kept": 3}
    store = PipelineStore(tmp_path / "results/pipeline.duckdb", lock_timeout=30)
    checkpoint = store.get_checkpoint("genes")
    assert checkpoint["row_count"] == 3
    assert checkpoint["rule"] == "genes"
    assert checkpoint["fingerprint"] == output["fingerprint"]
    assert checkpoint["description"] == "Usher panel genes"


def test_software_versions_of_packages_not_imported_come_from_their_metadata():
    # a head-mode job never imports duckdb: its version is read from the installed metadata
    code = textwrap.dedent(
        """
        import json, sys
        from importlib import metadata
        from usher_pipeline.steplog import software_versions
        found = software_versions()
        assert "duckdb" not in sys.modules
        print(json.dumps([found["duckdb"], metadata.version("duckdb")]))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    reported, installed = json.loads(done.stdout)
    assert reported == installed


def test_step_log_has_no_scheduler_on_a_workstation(tmp_path, no_scheduler):
    assert run_genes_job(tmp_path)["scheduler"] is None


def test_saving_again_converges_to_the_same_table(tmp_path, no_scheduler):
    first = run_genes_job(tmp_path)
    (tmp_path / "results/tables/raw_genes.parquet").unlink()
    second = run_genes_job(tmp_path)
    assert first["outputs"][0]["fingerprint"] == second["outputs"][0]["fingerprint"]
    store = PipelineStore(tmp_path / "results/pipeline.duckdb", lock_timeout=30)
    assert [row["table_name"] for row in store.list_checkpoints()] == ["genes"]


def test_head_mode_job_never_opens_the_database(tmp_path, no_scheduler):
    paths = outputs(tmp_path)
    smk = mock_snakemake("genes", output=paths, config=job_config(tmp_path, mode="head"))
    with Job(smk) as job:
        job.save(pl.DataFrame({"gene": ["MYO7A"]}))
    record = load_steplog(paths["steplog"])
    assert record["database"]["mode"] == "head"
    assert record["outputs"][0]["committed_at"] is None
    assert not (tmp_path / "results/pipeline.duckdb").exists()


# -- demo scripts under pytest ------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_scripts(tmp_path_factory) -> dict[str, Any]:
    """known_usher_genes, gene_universe (50 genes), hpo_terms and evidence, run in order."""
    base = tmp_path_factory.mktemp("scripts")
    hpo = hpo_data_dir(None)
    config = job_config(base)
    config["demo"] = {"fetch": {"batch_size": 20, "batch_latency_seconds": 0.0}}

    def table(name: str) -> Path:
        return base / f"results/tables/{name}.parquet"

    def run(rule: str, name: str, **kwargs: Any) -> dict[str, Any]:
        smk = mock_snakemake(
            rule,
            output={"table": table(name), "steplog": base / f"results/steplogs/{name}.json"},
            log=[base / f"logs/{rule}/{name}.log"],
            config=config,
            **kwargs,
        )
        run_script(REPO / "scripts" / f"{rule}.py", smk)
        return load_steplog(base / f"results/steplogs/{name}.json")

    logs = {
        "known_usher_genes": run(
            "known_usher_genes",
            "known_usher_genes",
            input={
                "diseases": hpo / "phenotype.hpoa",
                "annotations": hpo / "genes_to_phenotype.txt",
            },
            params={"pattern": "^Usher syndrome"},
        ),
        "gene_universe": run(
            "gene_universe",
            "gene_universe",
            input={
                "annotations": hpo / "genes_to_phenotype.txt",
                "usher": table("known_usher_genes"),
            },
            params={"min_valid_id_fraction": 0.99, "gene_limit": 50},
        ),
        "hpo_terms": run("hpo_terms", "hpo_terms", input={"ontology": hpo / "hp.obo"}),
        "evidence": run(
            "evidence",
            "evidence_hearing",
            input={
                "universe": table("gene_universe"),
                "terms": table("hpo_terms"),
                "annotations": hpo / "genes_to_phenotype.txt",
            },
            params={"layer": {"terms": ["HP:0000365"]}},
            wildcards={"layer": "hearing"},
        ),
    }
    return {"base": base, "logs": logs, "table": table}


def test_gene_universe_script_runs_under_pytest(demo_scripts):
    universe = pl.read_parquet(demo_scripts["table"]("gene_universe"))
    usher = pl.read_parquet(demo_scripts["table"]("known_usher_genes"))
    assert {"MYO7A", "USH2A", "CDH23", "PCDH15"} <= set(usher["gene_symbol"].to_list())
    beyond = set(usher["ncbi_gene_id"].to_list()) - set(universe["ncbi_gene_id"].head(50))
    assert universe.height == 50 + len(beyond)
    assert set(usher["ncbi_gene_id"].to_list()) <= set(universe["ncbi_gene_id"].to_list())
    record = demo_scripts["logs"]["gene_universe"]
    steps = {s["step_name"]: s["details"] for s in record["steps"]}
    assert steps["validate_identifiers"]["valid_fraction"] >= 0.99
    assert steps["limit_genes"] == {"limit": 50, "kept": universe.height}
    assert record["data_sources"]["hpo"].startswith("20")


def test_evidence_script_runs_under_pytest(demo_scripts):
    universe = pl.read_parquet(demo_scripts["table"]("gene_universe"))
    evidence = pl.read_parquet(demo_scripts["table"]("evidence_hearing"))
    assert evidence.height == universe.height
    assert set(evidence["ncbi_gene_id"].to_list()) == set(universe["ncbi_gene_id"].to_list())
    hearing = dict(zip(evidence["ncbi_gene_id"], evidence["n_layer_terms"], strict=True))
    usher = pl.read_parquet(demo_scripts["table"]("known_usher_genes"))
    assert all(hearing[gene] > 0 for gene in usher["ncbi_gene_id"].to_list())
    record = demo_scripts["logs"]["evidence"]
    fetch = next(s["details"] for s in record["steps"] if s["step_name"] == "batched_fetch")
    assert fetch["batches_total"] == -(-universe.height // 20)
    assert fetch["batches_resumed"] == 0
    assert record["wildcards"] == {"layer": "hearing"}
    store = PipelineStore(demo_scripts["base"] / "results/pipeline.duckdb", lock_timeout=30)
    assert store.get_checkpoint("evidence_hearing")["row_count"] == universe.height
    log = (demo_scripts["base"] / "logs/evidence/evidence_hearing.log").read_text()
    assert f"evidence_hearing: {fetch['batches_total']}/{fetch['batches_total']} batches" in log
    assert json.loads(json.dumps(record)) == record


def test_store_settings_carry_the_load_memory_limit_from_the_config(tmp_path):
    config = job_config(tmp_path)
    assert StoreSettings.from_config(config).store().load_memory_mb == 128
    config["store"]["load_memory_mb"] = 512
    assert StoreSettings.from_config(config).store().load_memory_mb == 512


# -- temporary files of killed writers -----------------------------------------------------------


def test_stale_temps_are_removed_even_when_the_writers_pid_was_reused(tmp_path):
    import os
    import time

    from usher_pipeline._io import remove_stale_temps

    target = tmp_path / "genes.parquet"
    # a process alive now, started after the first file's last write: its PID was reused
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        reused = tmp_path / f".genes.parquet.{other.pid}.0badc0de.tmp"
        reused.write_bytes(b"half a sentinel")
        os.utime(reused, (time.time() - 30, time.time() - 30))
        live = tmp_path / f".genes.parquet.{os.getpid()}.feedface.tmp"  # this process
        live.write_bytes(b"being written")
        time.sleep(0.3)
        writing = tmp_path / f".genes.parquet.{other.pid}.5ca1ab1e.tmp"  # written after it began
        writing.write_bytes(b"being written by the other process")
        dead = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        )
        gone = tmp_path / f".genes.parquet.{int(dead.stdout)}.deadbeef.tmp"
        gone.write_bytes(b"left by a killed job")

        removed = remove_stale_temps(target)
        assert sorted(p.name for p in removed) == sorted([reused.name, gone.name])
        assert live.exists() and writing.exists()
    finally:
        other.kill()
        other.wait()


def test_stale_temps_of_a_killed_writer_not_yet_reaped_are_removed(tmp_path):
    import os
    import time

    from usher_pipeline._io import remove_stale_temps

    # a job killed together with its parent stays a zombie until init reaps it: its PID
    # still answers, with a start time before its file's last write
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        left = tmp_path / f".genes.parquet.{writer.pid}.0ddba11.tmp"
        left.write_bytes(b"half a sentinel")
        writer.kill()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{writer.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the killed writer never became a zombie"
            time.sleep(0.01)
        os.kill(writer.pid, 0)  # its PID still answers
        assert remove_stale_temps(tmp_path / "genes.parquet") == [left]
        assert not left.exists()
    finally:
        writer.kill()
        writer.wait()


def test_every_library_logger_writes_to_the_job_log(tmp_path):
    """The job's log takes the lines of any module logger of the package, a new one included,
    once, and a second job in the same process starts a log of its own."""
    import logging

    first = tmp_path / "logs/first.log"
    job_logger("first", first).info("first job")
    logging.getLogger("usher_pipeline.some.new_module").info("a library line")
    second = tmp_path / "logs/second.log"
    job_logger("second", second).info("second job")
    lines = [line.split(" INFO ", 1)[1] for line in first.read_text().splitlines()]
    assert lines == ["first job", "a library line"]
    assert second.read_text().splitlines()[0].endswith(" INFO second job")


def test_stale_temps_of_any_suffix_follow_one_naming(tmp_path):
    """Every temporary name is `temp_path_for`'s, whatever its suffix, so one parser finds the
    staging files of a killed writer; files of other shapes are left alone."""
    from usher_pipeline._io import remove_stale_temps, temp_path_for

    db = tmp_path / "pipeline.duckdb"
    mine = temp_path_for(db, ".ingest.parquet")
    assert mine.parent == tmp_path
    assert mine.name.startswith(f".pipeline.duckdb.{os.getpid()}.")
    assert mine.name.endswith(".ingest.parquet")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    left = [
        tmp_path / f".pipeline.duckdb.{pid}.0badc0de.ingest.parquet",
        tmp_path / f".pipeline.duckdb.{pid}.{'ab' * 12}.batch.parquet",  # an older version's
        tmp_path / f".pipeline.duckdb.{pid}.feedface.tmp",
    ]
    others = [
        mine,
        tmp_path / f".pipeline.duckdb.{pid}.not-hex.tmp",
        tmp_path / f".pipeline.duckdb.x{pid}.0badc0de.tmp",
        tmp_path / f".other.duckdb.{pid}.0badc0de.tmp",
        tmp_path / "pipeline.duckdb.wal",
    ]
    for path in left + others:
        path.write_bytes(b"")
    assert sorted(remove_stale_temps(db)) == sorted(left)
    assert all(p.exists() for p in others)
