"""Faults: kills at random instants and at named points of a save, and a disk that fills up.

The long run is the harness of tests/faults (also runnable alone); the rest are single
processes killed with SIGKILL at a fault-injection point, and saves onto a tiny tmpfs.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import mounted_tmpfs

from usher_pipeline.errors import UsherError
from usher_pipeline.persistence import PipelineStore
from usher_pipeline.persistence.errors import StoreDiskFull
from usher_pipeline.persistence.fingerprint import fingerprint_parquet
from usher_pipeline.workflow import Job, mock_snakemake
from usher_pipeline.workflow.faults import FAULT_VARIABLE, POINTS

EXTERNAL = ("external_sentinel_write", "external_database_commit")  # harness kills from outside

REPO = Path(__file__).resolve().parents[1]


# -- the harness -----------------------------------------------------------------------------


def fault_seed(config: pytest.Config) -> int:
    """The seed of the random kills: --fault-seed, else $USHER_FAULT_SEED, else a fresh one."""
    given = config.getoption("--fault-seed")
    if given is None:
        given = os.environ.get("USHER_FAULT_SEED")
    return int(given) if given is not None else random.SystemRandom().randrange(2**31)


@pytest.mark.slow
def test_demo_run_converges_after_twenty_random_kills_and_every_named_point(tmp_path, request):
    seed = fault_seed(request.config)
    replay = f"fault seed {seed}: replay with pytest tests/test_faults.py --fault-seed {seed}"
    print(replay)
    try:
        check_random_kills(tmp_path, seed)
    except Exception as error:  # every failure names the seed, whichever check it is
        error.add_note(replay)
        raise


def check_random_kills(tmp_path: Path, seed: int) -> None:
    """Run the harness with `seed` and check that every kill converged."""
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "tests.faults.harness", "--kills", "20", "--seed", str(seed)]
        + ["--report", str(report)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    print(done.stdout)
    assert done.returncode == 0, f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    data = json.loads(report.read_text())
    assert f"kill points tried: {data['tried']}, converged: {data['converged']}" in done.stdout
    assert data["converged"] == data["tried"] >= 20 + len(POINTS) + len(EXTERNAL)
    randoms = [o for o in data["outcomes"] if o["kind"] == "random"]
    assert len(randoms) == 20 and all(o["converged"] for o in randoms)
    # spread over the run: early kills (nothing committed) and late ones (most tables done)
    assert min(len(o["committed_at_kill"]) for o in randoms) <= 1
    assert max(len(o["committed_at_kill"]) for o in randoms) >= 5
    # some kills landed in a fetch, and the resume kept the batches committed before it
    assert sum(o["batches_kept"] for o in randoms) > 0
    assert {o["kind"] for o in data["outcomes"]} >= {*POINTS, *EXTERNAL}


# -- one job killed at a named point -----------------------------------------------------------


def job_snakemake(root: Path, table: str = "genes") -> object:
    """A real snakemake object for a job saving `table` into the store under `root`."""
    return mock_snakemake(
        "make_genes",
        output={
            "table": root / "results" / "tables" / f"{table}.parquet",
            "steplog": root / "results" / "steplogs" / f"{table}.json",
        },
        log=[root / "logs" / f"{table}.log"],
        config={
            "duckdb_path": str(root / "results" / "pipeline.duckdb"),
            "store": {"lock_timeout_seconds": 30},
        },
    )


def frame(version: int) -> pl.DataFrame:
    return pl.DataFrame(
        {"gene": [f"G{i}" for i in range(500)], "score": [version * i for i in range(500)]}
    )


SAVE_IN_CHILD = """
import sys
from pathlib import Path
import polars as pl
from usher_pipeline.workflow import Job, mock_snakemake
root = Path(sys.argv[1])
smk = mock_snakemake(
    "make_genes",
    output={"table": root / "results/tables/genes.parquet",
            "steplog": root / "results/steplogs/genes.json"},
    log=[root / "logs/genes.log"],
    config={"duckdb_path": str(root / "results/pipeline.duckdb"),
            "store": {"lock_timeout_seconds": 30}},
)
with Job(smk) as job:
    job.save(pl.DataFrame({"gene": [f"G{i}" for i in range(500)],
                           "score": [2 * i for i in range(500)]}))
"""


def save_in_child(root: Path, point: str) -> subprocess.CompletedProcess[str]:
    """Save version 2 of `genes` in a fresh process that SIGKILLs itself at `point`."""
    env = {**os.environ, FAULT_VARIABLE: f"{point}:genes"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SAVE_IN_CHILD), str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def committed_v1(root: Path) -> tuple[PipelineStore, str]:
    with Job(job_snakemake(root)) as job:
        entry = job.save(frame(1))
    return PipelineStore(root / "results" / "pipeline.duckdb", lock_timeout=30), entry[
        "fingerprint"
    ]


@pytest.mark.parametrize("point", ["after_sentinel_temp_write", "inside_transaction"])
def test_job_killed_before_its_commit_leaves_the_previous_table(tmp_path, point):
    store, v1 = committed_v1(tmp_path)
    done = save_in_child(tmp_path, point)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert store.fingerprint("genes") == v1
    assert store.get_checkpoint("genes")["fingerprint"] == v1
    assert store.load_dataframe("genes").sort("gene").equals(frame(1).sort("gene"))
    sentinel = tmp_path / "results" / "tables" / "genes.parquet"
    assert fingerprint_parquet(sentinel)[0] == v1  # the sentinel still agrees with the store


@pytest.mark.parametrize("point", ["after_commit_before_rename", "after_rename_before_steplog"])
def test_job_killed_after_its_commit_is_fixed_by_the_rerun(tmp_path, point):
    store, v1 = committed_v1(tmp_path)
    (tmp_path / "results" / "steplogs" / "genes.json").unlink()  # as Snakemake does on rerun
    done = save_in_child(tmp_path, point)
    assert done.returncode == -signal.SIGKILL, done.stderr
    v2 = store.get_checkpoint("genes")["fingerprint"]
    assert v2 != v1 and store.fingerprint("genes") == v2  # committed whole
    assert not (tmp_path / "results" / "steplogs" / "genes.json").exists()  # not done: rerun
    tables = tmp_path / "results" / "tables"
    on_disk = [fingerprint_parquet(p)[0] for p in tables.iterdir() if p.suffix != ".json"]
    assert v2 in on_disk  # the new sentinel, under its temporary name or already renamed
    rerun = save_in_child(tmp_path, "none")  # the rerun, with no fault armed
    assert rerun.returncode == 0, rerun.stderr
    assert (
        fingerprint_parquet(tables / "genes.parquet")[0]
        == store.get_checkpoint("genes")["fingerprint"]
        == v2
    )
    assert (tmp_path / "results" / "steplogs" / "genes.json").exists()
    assert not list(tables.glob(".*.tmp"))  # the rerun removed what the killed job left


# -- a disk that fills up --------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs mounted for the test, unmounted after it."""
    with mounted_tmpfs(tmp_path / "disk", "3m") as mount:
        yield mount


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary files the store or a job left behind."""
    return sorted(p.name for p in folder.rglob(".*") if p.is_file())


def test_disk_full_inside_the_database_keeps_the_previous_table(small_disk):
    store = PipelineStore(small_disk / "pipeline.duckdb", lock_timeout=10)
    v1 = store.save_dataframe(frame(1), "genes")["fingerprint"]
    big = pl.DataFrame({"n": np.arange(2_000_000)})  # small as Parquet, too big for the database
    with pytest.raises(StoreDiskFull) as error:
        store.save_dataframe(big, "genes")
    message = str(error.value)
    assert str(small_disk / "pipeline.duckdb") in message and "free space" in message
    assert isinstance(error.value, UsherError)
    assert store.fingerprint("genes") == v1 == store.get_checkpoint("genes")["fingerprint"]
    assert store.load_dataframe("genes").sort("gene").equals(frame(1).sort("gene"))
    assert leftovers(small_disk) == []
    store.save_dataframe(frame(3), "scores")  # once space is there again, saving works
    assert store.get_checkpoint("scores")["row_count"] == 500


def test_disk_full_while_writing_the_staging_parquet_keeps_the_previous_table(small_disk):
    store = PipelineStore(small_disk / "pipeline.duckdb", lock_timeout=10)
    v1 = store.save_dataframe(frame(1), "genes")["fingerprint"]
    noise = pl.DataFrame({"x": np.random.default_rng(0).random(600_000)})  # incompressible
    with pytest.raises(StoreDiskFull) as error:
        store.save_dataframe(noise, "genes")
    assert str(small_disk) in str(error.value) and "free space" in str(error.value)
    assert store.fingerprint("genes") == v1 == store.get_checkpoint("genes")["fingerprint"]
    assert leftovers(small_disk) == []


def test_disk_full_during_a_jobs_sentinel_write_fails_the_rule_with_the_reason(small_disk):
    store, v1 = committed_v1(small_disk)
    noise = pl.DataFrame({"x": np.random.default_rng(1).random(600_000)})
    with pytest.raises(SystemExit) as stop, Job(job_snakemake(small_disk)) as job:
        job.save(noise)
    message = str(stop.value)
    assert message.startswith("rule make_genes: no space left") and "genes.parquet" in message
    assert store.fingerprint("genes") == v1 == store.get_checkpoint("genes")["fingerprint"]
    sentinel = small_disk / "results" / "tables" / "genes.parquet"
    assert fingerprint_parquet(sentinel)[0] == v1
    assert leftovers(small_disk / "results") == []
